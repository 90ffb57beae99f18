"""Fit a bundle's output calibration on its training period and store it in the bundle.

The runtime side (what the tables mean, how they are applied) is
:mod:`precipdiff.qdm.calibration`. The fit, for one bundle:

1. the bundle generates ``members`` members for every training day from the
   training predictors (the reanalysis) -- the product the runtime returns;
2. per fine cell (and season group), the quantiles of those members and of the
   target observations of the same days are tabulated (multiplicative QDM
   tables with a trace threshold, :func:`precipdiff.offline.qdm_fit.fit_qdm`);
3. the tables go into the bundle (``output_calibration.safetensors``) and its
   manifest records them with their sha256 and whether the runtime applies them
   by default.

Only training days are read (the config's split), so a validation score of the
calibrated product stays out of sample.

``precipdiff train calibrate CONFIG`` runs :func:`calibrate_bundle`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from precipdiff.errors import BundleError, ConfigError, InputError
from precipdiff.qdm import QDMConfig, QDMTables
from precipdiff.qdm.calibration import OUTPUT_CALIBRATION_FILE, VARIABLE

__all__ = ["attach_output_calibration", "calibrate_bundle", "fit_output_calibration"]


def fit_output_calibration(
    generator: Any,
    predictors: dict[str, NDArray[Any]],
    observations: NDArray[Any],
    times: Any,
    *,
    members: int = 4,
    n_quantiles: int = 100,
    group: str = "none",
    trace: float = 0.05,
    seed: int = 12345,
    calendar: str | None = None,
    batch_days: int = 64,
) -> QDMTables:
    """Fit the quantile mapping of a generator's output onto observations.

    Parameters
    ----------
    generator
        A :class:`~precipdiff.generator.PrecipGenerator` (its own output
        calibration, if any, is not applied to the fitted output).
    predictors
        ``{name: (time, lat, lon)}`` predictors of the fit period on the
        bundle's coarse grid (the reanalysis of the training period).
    observations
        ``(time, nlat_f, nlon_f)`` observed precipitation on the bundle's fine
        grid in mm/day, the same days (NaN where there are no data).
    times
        Dates of the days.
    members
        Members generated per day.
    n_quantiles, group, trace
        Table settings (:class:`precipdiff.qdm.QDMConfig`).
    seed
        Seed of the generated members.
    calendar
        Calendar of ``times`` when they carry none.
    batch_days
        Days generated per call (bounds the memory of one call).

    Returns
    -------
    QDMTables
        Tables of the variable ``"pr"`` on the fine grid (``ref``: observations,
        ``hist``: generated).

    Raises
    ------
    InputError
        When the observations are not on the fine grid or their length differs
        from the predictors'.
    """
    obs = np.asarray(observations, np.float32)
    nt = obs.shape[0]
    shape = tuple(generator.fine_grid.shape)
    if obs.ndim != 3 or obs.shape[1:] != shape:
        raise InputError(
            f"output calibration: observations of shape {obs.shape}, expected (time, {shape[0]}, "
            f"{shape[1]}) on the bundle's fine grid"
        )
    for name, arr in predictors.items():
        if np.shape(arr)[0] != nt:
            raise InputError(
                f"output calibration: predictor {name!r} has {np.shape(arr)[0]} days, the "
                f"observations {nt}"
            )
    t = np.asarray(times)
    if t.shape[0] != nt:
        raise InputError(f"output calibration: {t.shape[0]} times for {nt} days")
    gen = np.empty((nt, members, *shape), np.float32)
    for s in range(0, nt, batch_days):
        part = {k: np.asarray(v[s : s + batch_days]) for k, v in predictors.items()}
        res = generator.generate(
            part, members=members, seed=seed, time_offset=s, output_calibration=False
        )
        gen[s : s + batch_days] = res.fine
    # Cells the observations never cover (sea cells of a land-only product) get no table:
    # the runtime leaves them unchanged.
    gen[:, :, ~np.isfinite(obs).any(axis=0)] = np.nan
    cfg = QDMConfig(
        n_quantiles=n_quantiles,
        group=group,
        kinds={VARIABLE: "multiplicative"},
        trace={VARIABLE: trace},
        seed=seed,
    )
    from precipdiff.offline.qdm_fit import fit_qdm

    tables = fit_qdm(
        {VARIABLE: obs},
        {VARIABLE: gen.reshape(nt * members, *shape)},
        t,
        np.repeat(t, members),
        cfg,
        ref_calendar=calendar,
        hist_calendar=calendar,
        units={VARIABLE: "mm/day"},
    )
    tables.provenance.update(
        {
            "what": "output calibration: generated (reanalysis-driven) -> observed precipitation",
            "days": int(nt),
            "members": int(members),
            "first_day": str(t[0]),
            "last_day": str(t[-1]),
            "bundle_hash": str(getattr(generator, "bundle_hash", "")),
        }
    )
    return tables


def attach_output_calibration(
    tables: QDMTables, bundle_dir: str | os.PathLike[str], default: bool = True
) -> dict[str, Any]:
    """Store the tables in a bundle and record them in its manifest.

    Parameters
    ----------
    tables
        Tables from :func:`fit_output_calibration`.
    bundle_dir
        An existing bundle directory.
    default
        Whether the runtime applies the calibration by default.

    Returns
    -------
    dict
        The manifest's new ``output_calibration`` entry.

    Raises
    ------
    BundleError
        When the tables are not on the bundle's fine grid.
    """
    from precipdiff.bundle import read_manifest, write_manifest

    manifest = read_manifest(bundle_dir)
    fine = manifest.fine_grid_obj().shape
    if tuple(tables.grid_shape) != tuple(fine):
        raise BundleError(
            f"output calibration tables are on a {tables.grid_shape} grid but the bundle's fine "
            f"grid is {fine}"
        )
    path = Path(bundle_dir) / OUTPUT_CALIBRATION_FILE
    entry = tables.save(path)
    entry["file"] = OUTPUT_CALIBRATION_FILE
    entry["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    entry["default"] = bool(default)
    manifest.output_calibration = entry
    manifest.validate()
    write_manifest(bundle_dir, manifest)
    return entry


def calibrate_bundle(cfg: Any, bundle_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Fit a trained bundle's output calibration on its config's training split.

    Parameters
    ----------
    cfg
        The :class:`~precipdiff.offline.train.config.TrainConfig` the bundle was
        trained with (its ``bundle.output_calibration`` settings and its
        regression stage's data and split).
    bundle_dir
        The bundle (default: ``cfg.bundle.out``).

    Returns
    -------
    dict
        The manifest entry written.

    Raises
    ------
    ConfigError
        When the config has no ``bundle.output_calibration`` section.
    """
    from precipdiff.generator import PrecipGenerator
    from precipdiff.offline.train.data import StageData
    from precipdiff.transforms import PrecipTransform

    oc = cfg.bundle.output_calibration if cfg.bundle is not None else None
    if oc is None:
        raise ConfigError(
            "the config has no bundle.output_calibration section: nothing to fit "
            "(add `output_calibration: {}` under bundle for the defaults)"
        )
    dest = Path(bundle_dir or cfg.bundle.out)
    if not dest.is_absolute() and cfg.source_dir is not None and not dest.exists():
        dest = Path(cfg.source_dir) / dest
    gen = PrecipGenerator.from_bundle(dest, device="cpu", use_compiled=False)
    data = StageData(cfg.regression.data, PrecipTransform.from_dict(cfg.transform), cfg.source_dir)
    train = data.split.train
    raw = data.read(train)
    names = gen.manifest.variable_names()
    tables = fit_output_calibration(
        gen,
        {n: raw[n] for n in names},
        raw["fine"],
        data.split.times[train],
        members=oc.members,
        n_quantiles=oc.n_quantiles,
        group=oc.group,
        trace=oc.trace,
        seed=oc.seed,
    )
    tables.provenance["config_split"] = {
        "validation_start": cfg.regression.data.split.validation_start,
        "validation_end": cfg.regression.data.split.validation_end,
    }
    return attach_output_calibration(tables, dest, default=oc.default)
