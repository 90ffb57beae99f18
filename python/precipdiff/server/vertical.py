"""Log-pressure interpolation of model-level fields to the bundle's pressure levels.

An ESM that does not diagnose pressure-level fields itself hands the plugin a 3-D
field on its own model levels together with the pressure of every layer (Pa, same
shape). :func:`interp_log_pressure` interpolates each column linearly in
``ln p`` to the requested pressure levels, the usual way pressure-level output is
diagnosed from hybrid sigma-pressure levels.

Levels outside a column's pressure range
----------------------------------------
*Below ground* (a target pressure greater than the column's largest pressure,
e.g. 850 hPa over the Tibetan Plateau or 1000 hPa under a deep low) is handled by
the ``below_ground`` policy:

``"constant"`` (default)
    the value of the lowest model level (largest pressure) is used. This is what
    ERA5 and CMIP6 pressure-level products do for humidity and wind in practice
    (to within their own extrapolation rules), and it keeps humidity positive.
``"extrapolate"``
    linear extrapolation in ``ln p`` from the two lowest model levels.
``"error"``
    raise :class:`~precipdiff.errors.InputError` naming the field, the level
    and the number of columns concerned.

*Above the model top* (target pressure smaller than the column's smallest
pressure) always uses the value of the top level; the bundles' levels (850 hPa,
500 hPa, ...) are far below any model top, so this only guards odd grids.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from precipdiff.errors import InputError

BelowGround = Literal["constant", "extrapolate", "error"]
BELOW_GROUND_POLICIES: tuple[str, ...] = ("constant", "extrapolate", "error")


def interp_log_pressure(
    name: str,
    values: np.ndarray,
    pressure: np.ndarray,
    targets_pa: np.ndarray,
    below_ground: BelowGround = "constant",
) -> np.ndarray:
    """Interpolate a model-level field linearly in log-pressure to pressure levels.

    Parameters
    ----------
    name : str
        Field name, used in error messages.
    values : numpy.ndarray
        Field on model levels, shape ``(nlev, ...)``; the level order may be
        top-down or bottom-up but must be the same in every column.
    pressure : numpy.ndarray
        Pressure of each value in Pa, same shape as ``values``; positive and
        strictly monotonic along the level axis (checked around each target
        level, where it is used).
    targets_pa : numpy.ndarray
        Target pressure levels in Pa, shape ``(ntarget,)``.
    below_ground : {"constant", "extrapolate", "error"}
        What to do where a target pressure exceeds the column's largest
        pressure (see the module documentation).

    Returns
    -------
    numpy.ndarray
        float64 array of shape ``(ntarget, ...)``.

    Raises
    ------
    InputError
        When shapes disagree, pressures around a target level are not positive,
        finite and monotonic, or a target lies below ground under
        ``below_ground="error"``.
    """
    if below_ground not in BELOW_GROUND_POLICIES:
        raise InputError(
            f"below_ground policy {below_ground!r} for field {name!r} is not one of "
            f"{', '.join(BELOW_GROUND_POLICIES)}"
        )
    if values.shape != pressure.shape:
        raise InputError(
            f"field {name!r}: pressure shape {pressure.shape} does not match values "
            f"shape {values.shape}"
        )
    if values.ndim < 2 or values.shape[0] < 2:
        raise InputError(
            f"field {name!r}: a 3-D field needs at least 2 levels on its first axis, "
            f"got shape {values.shape}"
        )
    # No copies of the 3-D arrays: work on views and take logs of the two
    # bracketing levels only (this runs every timestep).
    v = np.asarray(values)
    p = np.asarray(pressure)
    # Order the levels by increasing pressure (top-down), deciding once from the
    # first column: ESMs store every column in the same order.
    if p[0].ravel()[0] > p[-1].ravel()[0]:
        v = v[::-1]
        p = p[::-1]
    nlev = v.shape[0]
    targets = np.asarray(targets_pa, dtype=np.float64).ravel()
    out = np.empty((targets.size, *v.shape[1:]), dtype=np.float64)
    for i, pt in enumerate(targets):
        lt = np.log(pt)
        # Index of the first level whose pressure is >= target, per column
        # (a uint8 sum of the comparison is the fastest count along levels).
        less = p < pt
        k = (
            less.view(np.uint8).sum(axis=0, dtype=np.uint8)
            if nlev < 256
            else np.count_nonzero(less, axis=0)
        )
        below = k >= nlev  # target pressure beyond the lowest level
        above = k == 0  # target above the model top
        kk = np.clip(k, 1, nlev - 1).astype(np.intp)[None]
        plo = np.take_along_axis(p, kk - 1, axis=0)[0].astype(np.float64)
        phi = np.take_along_axis(p, kk, axis=0)[0].astype(np.float64)
        # Instead of checking every level of every column each step, check the
        # bracket actually used: it fails for non-positive, NaN or non-monotonic
        # pressures around the target.
        inside = ~(below | above)
        bad = ~(plo > 0.0) | ~(phi > plo) | (inside & ~((plo < pt) & (pt <= phi)))
        if bad.any():
            raise InputError(
                f"field {name!r}: layer pressures must be positive and strictly monotonic "
                f"along the level axis (Pa); they are not around {pt / 100.0:g} hPa in "
                f"{int(np.count_nonzero(bad))} columns"
            )
        lo = np.log(plo)
        hi = np.log(phi)
        vlo = np.take_along_axis(v, kk - 1, axis=0)[0].astype(np.float64)
        vhi = np.take_along_axis(v, kk, axis=0)[0].astype(np.float64)
        w = (lt - lo) / (hi - lo)
        res = vlo + w * (vhi - vlo)
        res = np.where(above, v[0], res)
        if np.any(below):
            if below_ground == "error":
                raise InputError(
                    f"field {name!r}: target level {pt / 100.0:g} hPa lies below the "
                    f"lowest model level in {int(np.count_nonzero(below))} columns "
                    f"(below_ground = 'error')"
                )
            if below_ground == "constant":
                res = np.where(below, v[-1], res)
            # "extrapolate": the formula above with kk = nlev - 1 already
            # extrapolates linearly in ln p from the two lowest levels.
        out[i] = res
    return out
