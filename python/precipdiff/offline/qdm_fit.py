"""Fitting QDM tables and correcting whole series offline (Cannon et al. 2015).

:func:`fit_qdm` builds :class:`~precipdiff.qdm.QDMTables` from a reference and an
ESM-historical series; :func:`apply_qdm` corrects a series offline (the runtime
uses :class:`~precipdiff.qdm.OnlineQDM`). See :mod:`precipdiff.qdm` for the method.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from precipdiff.calendars import TimeFields, time_fields
from precipdiff.errors import ConfigError, InputError
from precipdiff.qdm.tables import (
    QDMConfig,
    QDMTables,
    VariableTable,
    check_calendar,
    check_not_negative,
    group_index,
    group_label,
    interp_nodes,
    tau_from_quantiles,
)

__all__ = ["apply_qdm", "fit_qdm"]


def _fit_masks(tf: TimeFields, config: QDMConfig) -> list[NDArray[np.bool_]]:
    """Boolean sample mask per group for fitting (moving windows overlap)."""
    if config.group != "window":
        g = group_index(tf, config)
        return [g == k for k in range(config.n_groups)]
    n = int(config.n_windows)
    half = 0.5 * int(config.window_days) / 365.0
    masks = []
    for k in range(n):
        d = np.abs(tf.year_fraction - k / n)
        d = np.minimum(d, 1.0 - d)
        masks.append(d <= half + 1e-12)
    return masks


def _as_series(name: str, label: str, x: ArrayLike) -> NDArray[np.float64]:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 2:
        a = a[:, None, :]
    if a.ndim == 1:
        a = a[:, None, None]
    if a.ndim != 3:
        raise InputError(
            f"{label} series of {name!r} must be (time, lat, lon), got shape {a.shape}"
        )
    if np.isinf(a).any():
        raise InputError(f"{label} series of {name!r} contains {int(np.isinf(a).sum())} inf values")
    return a


def _jitter(a: NDArray[np.float64], trace: float, rng: np.random.Generator) -> NDArray[np.float64]:
    """Replace values below ``trace`` by uniform values in (0, trace) (Cannon 2015)."""
    if trace <= 0:
        return a
    low = np.isfinite(a) & (a < trace)
    out = a.copy()
    out[low] = rng.uniform(trace * 1e-3, trace, size=int(low.sum()))
    return out


def _group_quantiles(
    a: NDArray[np.float64], mask: NDArray[np.bool_], nodes: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    sub = a[mask]
    count = np.sum(np.isfinite(sub), axis=0)
    if sub.shape[0] == 0:
        return np.full((nodes.size, *a.shape[1:]), np.nan), count
    if np.isnan(sub).any():
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            q = np.nanquantile(sub, nodes, axis=0)
    else:
        q = np.quantile(sub, nodes, axis=0)
    return np.asarray(q), count


def fit_qdm(
    ref: Mapping[str, ArrayLike],
    hist: Mapping[str, ArrayLike],
    ref_times: Any,
    hist_times: Any,
    config: QDMConfig | None = None,
    *,
    ref_calendar: str | None = None,
    hist_calendar: str | None = None,
    units: Mapping[str, str] | None = None,
) -> QDMTables:
    """Fit QDM tables per grid cell and season group.

    Parameters
    ----------
    ref
        ``{variable: (time, lat, lon)}`` reference (reanalysis) series on the
        bundle's coarse grid.
    hist
        ``{variable: (time, lat, lon)}`` ESM historical series on the same grid
        and in the same units (lengths and calendars may differ from ``ref``).
    ref_times, hist_times
        Time coordinates (see :func:`precipdiff.calendars.time_fields`).
    config
        Settings; defaults to :class:`QDMConfig()`.
    ref_calendar, hist_calendar
        Calendars when the times do not carry one.
    units
        ``{variable: units}`` recorded in the tables.

    Returns
    -------
    QDMTables
        The tables.

    Raises
    ------
    InputError
        On missing variables, mismatched grids or time lengths, too few valid
        samples, negative values of multiplicative variables without a trace, or
        a likely unit mismatch between ``ref`` and ``hist``.
    """
    cfg = config or QDMConfig()
    missing = sorted(set(ref) ^ set(hist))
    if missing:
        raise InputError(f"variables {missing} are in only one of the reference and ESM sets")
    if not ref:
        raise InputError("no variables given to fit QDM")
    tf_r = time_fields(ref_times, ref_calendar)
    tf_h = time_fields(hist_times, hist_calendar)
    masks_r = _fit_masks(tf_r, cfg)
    masks_h = _fit_masks(tf_h, cfg)
    nodes = cfg.nodes
    rng = np.random.default_rng(cfg.seed)
    tables: dict[str, VariableTable] = {}
    for name in ref:
        r = _as_series(name, "reference", ref[name])
        h = _as_series(name, "ESM historical", hist[name])
        if r.shape[1:] != h.shape[1:]:
            raise InputError(
                f"{name!r}: reference grid {r.shape[1:]} differs from ESM grid {h.shape[1:]}; "
                "regrid both onto the bundle's coarse grid before fitting QDM"
            )
        for label, a, tf in (("reference", r, tf_r), ("ESM historical", h, tf_h)):
            if a.shape[0] != tf.month.size:
                raise InputError(
                    f"{label} series of {name!r} has {a.shape[0]} time steps but "
                    f"{tf.month.size} times were given"
                )
        for label, a in (("reference", r), ("ESM historical", h)):
            if not np.isfinite(a).any():
                raise InputError(
                    f"{label} series of {name!r} has no finite value (all NaN): nothing to fit"
                )
        mr, mh = float(np.nanmedian(np.abs(r))), float(np.nanmedian(np.abs(h)))
        if mr > 0 and mh > 0 and not 0.1 < mr / mh < 10.0:
            want = (units or {}).get(name, "the reference's units")
            raise InputError(
                f"{name!r}: the reference median |value| {mr:.3g} and the ESM's {mh:.3g} differ "
                f"by more than a factor 10 -- likely a unit mismatch (convert the ESM field to "
                f"{want} first)"
            )
        kind = cfg.kind_of(name)
        trace = float(cfg.trace.get(name, 0.0))
        if kind == "multiplicative":
            for label, a in (("reference", r), ("ESM historical", h)):
                # Negative values would be jittered into (0, trace) silently.
                check_not_negative(name, f"{label} series of", a)
            r = _jitter(r, trace, rng)
            h = _jitter(h, trace, rng)
        ref_q = np.full((cfg.n_groups, nodes.size, *r.shape[1:]), np.nan)
        hist_q = np.full_like(ref_q, np.nan)
        for g in range(cfg.n_groups):
            qr, nr = _group_quantiles(r, masks_r[g], nodes)
            qh, nh = _group_quantiles(h, masks_h[g], nodes)
            if nr.max(initial=0) == 0 and nh.max(initial=0) == 0:
                continue  # a season group absent from both (e.g. DJF-only data): no table
            masked = (nr == 0) & (nh == 0)  # e.g. a sea cell of a land-only product
            few = ~masked & ((nr < cfg.min_samples) | (nh < cfg.min_samples))
            if few.any():
                i, j = np.argwhere(few)[0]
                raise InputError(
                    f"QDM fit of {name!r}, {group_label(cfg, g)}: cell (lat {i}, lon {j}) has "
                    f"{int(nr[i, j])} reference and {int(nh[i, j])} ESM values, fewer than "
                    f"min_samples={cfg.min_samples}"
                )
            ref_q[g], hist_q[g] = qr, qh
        tables[name] = VariableTable(
            kind,
            trace,
            ref_q.astype(np.float32),
            hist_q.astype(np.float32),
            (units or {}).get(name, ""),
        )
    prov = {
        "ref_period": [_date_str(tf_r, 0), _date_str(tf_r, -1)],
        "hist_period": [_date_str(tf_h, 0), _date_str(tf_h, -1)],
        "ref_calendar": tf_r.calendar,
        "hist_calendar": tf_h.calendar,
    }
    return QDMTables(cfg, tables, prov)


def _date_str(tf: TimeFields, i: int) -> str:
    return f"{int(tf.year[i]):04d}-{int(tf.month[i]):02d} (day {int(tf.dayofyear[i])})"


def _ranks_pct(x: NDArray[np.float64]) -> NDArray[np.float64]:
    """Empirical non-exceedance probability per column, exactly xsdba's ``rank(pct=True)``.

    Average ranks of ties divided by the count (xarray's percentage rank ``p``), then
    rescaled to span ``[0, max p]``: ``tau = max(p) * (p - min(p)) / (max(p) - min(p))``.
    Without ties this is ``(rank - 1) / (n - 1)``; tied values at the bottom (e.g. exact
    zeros) all get 0. A column whose values are all equal gets 0.5 (xsdba: NaN).
    NaN stays NaN.
    """
    from scipy.stats import rankdata

    r = rankdata(x, axis=0, method="average", nan_policy="omit")
    n = np.sum(np.isfinite(x), axis=0, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(np.isfinite(x), r / n, np.nan)
        lo = np.nanmin(np.where(np.isfinite(p), p, np.inf), axis=0, keepdims=True)
        hi = np.nanmax(np.where(np.isfinite(p), p, -np.inf), axis=0, keepdims=True)
        tau = np.where(hi > lo, hi * (p - lo) / (hi - lo), 0.5)
    return np.where(np.isfinite(x), tau, np.nan)


def apply_qdm(
    tables: QDMTables,
    name: str,
    x: ArrayLike,
    times: Any,
    *,
    calendar: str | None = None,
    projection: Literal["self", "static"] = "self",
) -> NDArray[np.float32]:
    """Correct one variable's series with fitted tables.

    Parameters
    ----------
    tables
        Fitted tables.
    name
        Variable name (a key of ``tables.variables``).
    x
        ``(time, lat, lon)`` ESM series on the tables' grid, in their units.
    times
        Time coordinate of ``x``.
    calendar
        Calendar when ``times`` carries none.
    projection
        ``"self"``: ``tau`` from the empirical CDF of ``x`` itself per cell and
        group (QDM proper; pass one projection period, e.g. a 20-30-year
        slice); ``"static"``: ``tau = F_hist(x)`` (quantile mapping).

    Returns
    -------
    numpy.ndarray
        Corrected series, float32, same shape as ``x``; NaN stays NaN.
    """
    if name not in tables.variables:
        raise InputError(
            f"no QDM table for variable {name!r}; tables have {list(tables.variables)}"
        )
    if projection not in ("self", "static"):
        raise ConfigError(f"projection must be 'self' or 'static', got {projection!r}")
    t = tables.variables[name]
    cfg = tables.config
    a = _as_series(name, "ESM", x)
    if a.shape[1:] != tables.grid_shape:
        raise InputError(
            f"{name!r} is on a {a.shape[1:]} grid but the QDM tables are {tables.grid_shape}; "
            "regrid it onto the bundle's coarse grid first"
        )
    tf = time_fields(times, calendar)
    if tf.month.size != a.shape[0]:
        raise InputError(f"{name!r} has {a.shape[0]} time steps but {tf.month.size} times")
    check_calendar(tables, tf.calendar)
    if t.kind == "multiplicative":
        # Negative values would be zeroed (trace) or flip the factor's sign: refuse them.
        check_not_negative(name, "ESM series", a)
    rng = np.random.default_rng(cfg.seed + 1)
    if t.kind == "multiplicative":
        a = _jitter(a, t.trace, rng)
    groups = group_index(tf, cfg)
    factors = t.factors()
    nodes = cfg.nodes
    ny, nx = tables.grid_shape
    flat = a.reshape(a.shape[0], ny * nx)
    out = np.full_like(flat, np.nan)
    for g in np.unique(groups):
        sel = groups == g
        fg = factors[g].reshape(nodes.size, ny * nx)
        if np.isnan(fg).all() and np.isfinite(flat[sel]).any():
            raise InputError(
                f"{name!r}: the QDM tables have no data for {group_label(cfg, int(g))}; "
                "the fit period did not cover this part of the year"
            )
        xs = flat[sel]
        if projection == "self":
            n_valid = np.sum(np.isfinite(xs), axis=0)
            short = (n_valid > 0) & (n_valid < cfg.min_samples)
            if short.any():
                j = int(np.flatnonzero(short)[0])
                raise InputError(
                    f"{name!r}, {group_label(cfg, int(g))}: projection='self' ranks each value "
                    f"in its own series, but cell (lat {j // nx}, lon {j % nx}) has "
                    f"{int(n_valid[j])} value(s) (fewer than min_samples = {cfg.min_samples}): "
                    "too short for a distribution; correct a longer period or use "
                    "projection='static' (quantile mapping against the historical CDF)"
                )
            tau = _ranks_pct(xs)
        else:
            tau = tau_from_quantiles(xs, t.hist_q[g].reshape(nodes.size, -1), nodes)
        af = interp_nodes(tau, nodes, fg)
        out[sel] = xs * af if t.kind == "multiplicative" else xs + af
    if t.kind == "multiplicative" and t.trace > 0:
        out = np.where(out < t.trace, 0.0, out)
    return out.reshape(a.shape).astype(np.float32)
