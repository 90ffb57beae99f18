"""The diffusion stage's condition: what the denoiser sees besides the noisy field.

Built from ``diffusion.condition`` (:class:`~precipdiff.offline.train.config.ConditionConfig`):

* the noised coarse channel -- the target's block mean (``source: truth``, the
  paper's pairs) or the regression's out-of-fold predictions (``source:
  regression``, from ``run_dir/regression/condition.npz``, written by
  :func:`precipdiff.offline.train.regression.cross_fit`);
* optionally normalised input features, upsampled: the regression's, or the
  denoiser's own (``condition.features``, statistics over the training split);
* static channels: computed from the grid (:mod:`precipdiff.statics`), or
  statistics of the training split only (target climatology, valid fraction,
  time means of static files), so no validation day leaks into them.

The runtime rebuilds exactly these channels from the bundle
(:class:`precipdiff.generator.PrecipGenerator`).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from precipdiff.errors import ConfigError, InputError
from precipdiff.features import parse_features
from precipdiff.offline.train.config import ConditionConfig, StaticFile, TrainConfig
from precipdiff.offline.train.data import ConditionInputs, StageData
from precipdiff.statics import computed_static


def _standardise(field: np.ndarray) -> np.ndarray:
    """Zero mean, unit std over finite cells; NaN cells become 0."""
    ok = np.isfinite(field)
    if not ok.any():
        raise InputError("a static field has no finite value")
    mu = float(field[ok].mean())
    sd = float(field[ok].std())
    z = (field - mu) / (sd if sd > 0 else 1.0)
    return np.where(ok, z, 0.0).astype(np.float32)


def training_static(name: str, data: StageData, chunk: int = 256) -> np.ndarray:
    """Compute a static channel from the training split of the target.

    Parameters
    ----------
    name
        ``target_climatology`` (time mean of the normalised transformed target;
        cells never valid get 0, the training mean) or ``valid_fraction``.
    data
        The stage data (with statistics).
    chunk
        Days per read.

    Returns
    -------
    numpy.ndarray
        ``(Hf, Wf)`` float32.
    """
    hf, wf = data.fine_grid.shape
    total = np.zeros((hf, wf))
    count = np.zeros((hf, wf))
    train = data.split.train
    for start in range(0, train.size, chunk):
        raw = data.read(train[start : start + chunk])
        z, m = data.normalise_target(raw["fine"])
        total += (z * m).sum(axis=0)
        count += m.sum(axis=0)
    if name == "valid_fraction":
        return (count / max(train.size, 1)).astype(np.float32)
    if name == "target_climatology":
        with np.errstate(invalid="ignore", divide="ignore"):
            clim = np.where(count > 0, total / np.maximum(count, 1), 0.0)
        return clim.astype(np.float32)
    raise ConfigError(f"unknown training static {name!r}")


def file_static(spec: StaticFile, data: StageData, root: Path) -> np.ndarray:
    """Time mean over the training period of a field from a file, standardised.

    The file must be on the target's (uncropped) grid; the target's crop is
    applied. Only time steps inside the training period are averaged.

    Parameters
    ----------
    spec
        The configured file.
    data
        The stage data (netCDF-backed: its crop and training period).
    root
        Data root the path is relative to.

    Returns
    -------
    numpy.ndarray
        ``(Hf, Wf)`` float32, zero mean and unit std over finite cells.
    """
    from precipdiff.io import import_xarray

    xr = import_xarray()
    path = root / spec.path
    if not path.is_file():
        raise InputError(f"static file {spec.name!r}: {path} does not exist")
    with xr.open_dataset(path) as ds:
        if spec.variable not in ds:
            raise InputError(
                f"static file {spec.name!r}: no variable {spec.variable!r} in {path} "
                f"(has {sorted(ds.data_vars)})"
            )
        da = ds[spec.variable]
        lat_name = next((d for d in da.dims if "lat" in str(d).lower()), None)
        lon_name = next((d for d in da.dims if "lon" in str(d).lower()), None)
        if lat_name is None or lon_name is None:
            raise InputError(f"static file {spec.name!r}: cannot find lat/lon dims in {da.dims}")
        lat = np.asarray(ds[lat_name].values, np.float64)
        if "time" in da.dims:
            times = np.asarray(ds["time"].values).astype("datetime64[s]")
            tr = data.split.times[data.split.train]
            sel = (times >= tr.min()) & (times <= tr.max())
            if not sel.any():
                raise InputError(
                    f"static file {spec.name!r}: no time step inside the training period "
                    f"{tr.min()}..{tr.max()}"
                )
            da = da.isel(time=np.nonzero(sel)[0])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                field = np.asarray(da.mean("time", skipna=True).values, np.float64)
        else:
            field = np.asarray(da.values, np.float64)
    if da.dims.index(lat_name) > da.dims.index(lon_name):
        field = field.T
    if lat.size > 1 and lat[0] > lat[-1]:
        field = field[::-1]
    lat_sl = getattr(data, "lat_slice", slice(None))
    lon_sl = getattr(data, "lon_slice", slice(None))
    field = field[lat_sl, lon_sl]
    if field.shape != data.fine_grid.shape:
        raise InputError(
            f"static file {spec.name!r}: after the target's crop the field is {field.shape}, "
            f"the fine grid is {data.fine_grid.shape}: it must be on the target's grid"
        )
    return _standardise(field)


def static_channels(
    cond: ConditionConfig, data: StageData, root: Path | None
) -> dict[str, np.ndarray]:
    """All static channels of a condition config, by name, in channel order.

    Parameters
    ----------
    cond
        The condition settings.
    data
        The diffusion stage's data.
    root
        Data root for ``static_files`` (``None`` when there are none).

    Returns
    -------
    dict
        ``{name: (Hf, Wf) float32}``.
    """
    out: dict[str, np.ndarray] = {}
    for name in cond.statics:
        field = computed_static(name, data.fine_grid)
        out[name] = field if field is not None else training_static(name, data)
    for spec in cond.static_files:
        if root is None:
            raise ConfigError("diffusion.condition.static_files need a data root")
        out[spec.name] = file_static(spec, data, root)
    return out


def load_regression_condition(path: Path, data: StageData) -> np.ndarray:
    """Read ``condition.npz`` and align it with the stage's positions.

    Parameters
    ----------
    path
        The file written by :func:`precipdiff.offline.train.regression.cross_fit`.
    data
        The diffusion stage's data (the same samples as the regression's).

    Returns
    -------
    numpy.ndarray
        ``(n_positions, Hc, Wc)`` float32.

    Raises
    ------
    ConfigError
        When the file is missing, not out-of-fold on every training day, or does
        not cover the stage's samples.
    """
    if not path.is_file():
        raise ConfigError(
            f"{path} not found: condition.source 'regression' needs the regression stage "
            "trained with regression.cross_fit_folds >= 2 (precipdiff train regression CONFIG)"
        )
    with np.load(path) as z:
        times = z["times"].astype("datetime64[s]")
        cond = np.asarray(z["condition"], np.float32)
        oof = np.asarray(z["out_of_fold"], bool)
    want = data.split.times.astype("datetime64[s]")
    idx = np.searchsorted(times, want)
    idx = np.clip(idx, 0, times.size - 1)
    if not np.array_equal(times[idx], want):
        missing = int(np.sum(times[idx] != want))
        raise ConfigError(
            f"{path} does not cover {missing} of the diffusion stage's samples: retrain "
            "the regression stage with the same data section"
        )
    if cond.shape[1:] != data.coarse_grid.shape:
        raise ConfigError(
            f"{path} holds {cond.shape[1:]} coarse fields, the coarse grid is "
            f"{data.coarse_grid.shape}"
        )
    if not oof[idx[data.split.train]].all():
        raise ConfigError(f"{path}: some training days are not out-of-fold predictions")
    return cond[idx]


def condition_inputs(
    cfg: TrainConfig, data: StageData, statics: dict[str, np.ndarray]
) -> ConditionInputs:
    """Assemble the diffusion stage's :class:`ConditionInputs`.

    Parameters
    ----------
    cfg
        The experiment configuration.
    data
        The diffusion stage's data.
    statics
        Output of :func:`static_channels`.

    Returns
    -------
    ConditionInputs
        The condition.
    """
    from precipdiff.offline.train.regression import CONDITION_FILE, stage_dir

    assert cfg.diffusion is not None
    cond = cfg.diffusion.condition
    coarse = None
    if cond.source == "regression":
        coarse = load_regression_condition(stage_dir(cfg, "regression") / CONDITION_FILE, data)
    arr = np.stack(list(statics.values())).astype(np.float32) if statics else None
    features = None
    if cond.predictors and cond.features is not None:
        features = parse_features(cond.features)
        # normalised like the regression's features: over the training split only
        data.ensure_feature_stats(features)
    return ConditionInputs(
        coarse=coarse, predictors=cond.predictors, statics=arr, features=features
    )
