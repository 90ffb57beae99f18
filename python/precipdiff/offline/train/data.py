"""Training data: lazy netCDF time series, time split, normalisation, datasets.

Real training sets (ERA5 1980-2018 daily at 0.25 deg) are ~100 GB per variable,
spread over many yearly files. Nothing here loads a whole variable: a
:class:`TimeSeriesSource` opens its files lazily and reads only the time
indices a batch needs; normalisation statistics are accumulated chunk by chunk
over the training split only. Small data sets can opt into an in-memory cache.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from precipdiff.errors import ConfigError, InputError
from precipdiff.features import (
    FeatureSpec,
    compute_features,
    identity_features,
    parse_features,
)
from precipdiff.grids import LatLonGrid, Regridder, coarsen_block_mean, coarsen_grid
from precipdiff.offline.train.config import DataConfig, SplitConfig, VariableSource
from precipdiff.variables import get_variable


class TimeSeriesSource:
    """One variable spread over one or many netCDF files, read lazily by time index.

    Opens the files with :func:`precipdiff.io.readers.open_predictors`, so the
    variable comes with its canonical name and units, latitude ascending, one
    pressure level, accumulations turned into mm/day rates and (optionally)
    daily means; only the time steps a batch asks for are read.

    Parameters
    ----------
    source
        The configured variable (canonical name, path or glob, optional name in
        the file, extra scale factor).
    root
        Directory the path is relative to.
    daily
        ``"auto"``, ``"yes"`` or ``"no"``: average sub-daily data to daily means.
    accumulation_hours
        Accumulation period of amounts stored in m or mm (e.g. ERA5 hourly ``tp``:
        1); inferred by the reader when ``None``.
    """

    def __init__(
        self,
        source: VariableSource,
        root: Path,
        daily: str = "auto",
        accumulation_hours: float | None = None,
    ) -> None:
        from precipdiff.io.readers import open_predictors

        self.source = source
        spec = get_variable(source.name)
        if source.variable is not None and source.variable not in spec.aliases:
            spec = dataclasses.replace(spec, aliases=(source.variable, *spec.aliases))
        pattern = str(root / source.path)
        if not glob.glob(pattern):
            raise InputError(f"variable {source.name!r}: no file matches {pattern}")
        self._ds = open_predictors(
            pattern, [spec], daily=daily, accumulation_hours=accumulation_hours
        )
        self._da = self._ds[spec.name]
        times = np.asarray(self._ds["time"].values)
        if not np.issubdtype(times.dtype, np.datetime64):
            raise InputError(
                f"variable {source.name!r} in {pattern}: training needs a standard calendar "
                f"(got {type(times.flat[0]).__name__} times)"
            )
        self.times = times.astype("datetime64[s]")
        self.lat = np.asarray(self._ds["lat"].values, np.float64)
        self.lon = np.asarray(self._ds["lon"].values, np.float64)

    def read(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Read the given global time indices.

        Parameters
        ----------
        indices
            Indices into :attr:`times`.

        Returns
        -------
        numpy.ndarray
            ``(len(indices), nlat, nlon)`` float32 in canonical units, times
            ``source.scale``.
        """
        idx = np.asarray(indices, dtype=np.int64)
        order = np.argsort(idx, kind="stable")
        values = np.asarray(self._da.isel(time=idx[order]).values, np.float32)
        out = np.empty_like(values)
        out[order] = values
        if self.source.scale != 1.0:
            out *= np.float32(self.source.scale)
        return out

    def close(self) -> None:
        """Close the open files."""
        self._ds.close()


def _crop(crop: list[int] | None, n: int, axis: str) -> slice:
    if crop is None:
        return slice(0, n)
    if crop[1] > n:
        raise ConfigError(f"data.crop_{axis} {crop} exceeds the target's {n} {axis} points")
    return slice(crop[0], crop[1])


@dataclass
class Split:
    """Aligned sample indices of the train and validation periods.

    Parameters
    ----------
    times
        Timestamps of all aligned samples.
    target_index
        Index into the target source of each aligned sample.
    predictor_index
        Index into each predictor source (one row per predictor).
    train, validation
        Positions (into ``times``) of the training and validation samples.
    """

    times: np.ndarray
    target_index: np.ndarray
    predictor_index: np.ndarray
    train: np.ndarray
    validation: np.ndarray


def align_and_split(
    cfg: DataConfig, target: TimeSeriesSource, predictors: Sequence[TimeSeriesSource]
) -> Split:
    """Pair predictor and target samples in time and split them by period.

    Parameters
    ----------
    cfg
        Data configuration (``time_match`` and ``split``).
    target
        The target source.
    predictors
        Predictor sources.

    Returns
    -------
    Split
        The aligned indices.
    """
    unit = "D" if cfg.time_match == "day" else "s"

    def keys(t: np.ndarray, name: str) -> np.ndarray:
        k = t.astype(f"datetime64[{unit}]")
        if np.unique(k).size != k.size:
            raise InputError(f"{name}: several samples share one {cfg.time_match} key")
        return k

    common = keys(target.times, target.source.name)
    for p in predictors:
        common = np.intersect1d(common, keys(p.times, p.source.name))
    if common.size == 0:
        raise InputError("predictors and target share no sample times")
    t_idx = np.searchsorted(keys(target.times, target.source.name), common)
    p_idx = (
        np.stack([np.searchsorted(keys(p.times, p.source.name), common) for p in predictors])
        if predictors
        else np.zeros((0, common.size), np.int64)
    )
    times = target.times[t_idx]
    train, val = split_positions(times, cfg.split)
    return Split(times, t_idx, p_idx, train, val)


def split_positions(times: np.ndarray, s: SplitConfig) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the training and validation samples of a time axis.

    Parameters
    ----------
    times
        Sample times (``datetime64``).
    s
        The split (dates are whole days; a date-time such as ``2022-08-31T18:00``
        is an inclusive instant).

    Returns
    -------
    tuple of numpy.ndarray
        ``(train, validation)`` positions; raises :class:`ConfigError` when
        either is empty.
    """
    times = np.asarray(times).astype("datetime64[s]")

    def end_of(value: str) -> np.datetime64:
        # A date means the whole day; a date-time is an inclusive instant.
        step = np.timedelta64(1, "s") if "T" in value else np.timedelta64(1, "D")
        return np.datetime64(value, "s") + step

    v0 = np.datetime64(s.validation_start, "s")
    in_val = (times >= v0) & (times < end_of(s.validation_end))
    in_train = ~in_val
    if s.train_start is not None:
        in_train &= times >= np.datetime64(s.train_start, "s")
    if s.train_end is not None:
        in_train &= times < end_of(s.train_end)
    train = np.nonzero(in_train)[0]
    val = np.nonzero(in_val)[0]
    if train.size == 0:
        raise ConfigError("the training split is empty: check split dates against the data")
    if val.size == 0:
        raise ConfigError(
            f"the validation split {s.validation_start}..{s.validation_end} holds no samples"
        )
    return train, val


@dataclass
class Stats:
    """Normalisation statistics, from the training split only.

    Parameters
    ----------
    predictor_mean, predictor_std
        Per predictor, in physical units.
    target_mean, target_std
        Of the transformed coarse target (valid cells only).
    n_train
        Number of training samples they were computed from.
    """

    predictor_mean: dict[str, float]
    predictor_std: dict[str, float]
    target_mean: float
    target_std: float
    n_train: int

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict.

        Returns
        -------
        dict
            The statistics.
        """
        return {
            "predictor_mean": self.predictor_mean,
            "predictor_std": self.predictor_std,
            "target_mean": self.target_mean,
            "target_std": self.target_std,
            "n_train": self.n_train,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Stats:
        """Build from :meth:`to_dict` output.

        Parameters
        ----------
        d
            The mapping.

        Returns
        -------
        Stats
            The statistics.
        """
        return cls(**d)


class _Moments:
    """Streaming sum / sum of squares in float64 (Chan et al. merge is overkill here)."""

    def __init__(self) -> None:
        self.n = 0
        self.s = 0.0
        self.ss = 0.0

    def add(self, x: np.ndarray) -> None:
        v = x[np.isfinite(x)].astype(np.float64)
        self.n += v.size
        self.s += float(v.sum())
        self.ss += float((v * v).sum())

    def result(self, name: str) -> tuple[float, float]:
        if self.n == 0:
            raise InputError(f"{name}: no finite values in the training split")
        mean = self.s / self.n
        var = max(self.ss / self.n - mean * mean, 0.0)
        std = float(np.sqrt(var))
        if not std > 0:
            raise InputError(f"{name}: zero variance in the training split")
        return mean, std


class StageData:
    """Everything a stage needs from its data section: sources, grids, split, stats.

    Parameters
    ----------
    cfg
        The data configuration.
    transform
        The precipitation transform (mm/day -> network space).
    base
        Directory relative ``data_root`` values resolve against.
    stats
        Known statistics (e.g. the regression's, reused by the diffusion stage);
        computed from the training split when ``None``.
    chunk
        Samples per read while computing statistics.
    """

    def __init__(
        self,
        cfg: DataConfig,
        transform: Any,
        base: Path | None = None,
        stats: Stats | None = None,
        chunk: int = 256,
    ) -> None:
        self.cfg = cfg
        self.transform = transform
        root = cfg.root(base)
        acc = cfg.accumulation_hours
        self.target = TimeSeriesSource(cfg.target, root, cfg.daily, acc)
        self.predictors = [TimeSeriesSource(p, root, cfg.daily, acc) for p in cfg.predictors]
        self.split = align_and_split(cfg, self.target, self.predictors)
        self.lat_slice = _crop(cfg.crop_lat, self.target.lat.size, "lat")
        self.lon_slice = _crop(cfg.crop_lon, self.target.lon.size, "lon")
        fine_lat = self.target.lat[self.lat_slice]
        fine_lon = self.target.lon[self.lon_slice]
        f = cfg.coarsen_factor
        if fine_lat.size % f or fine_lon.size % f:
            raise ConfigError(
                f"cropped target grid {fine_lat.size}x{fine_lon.size} is not divisible by "
                f"coarsen_factor {f}: adjust data.crop_lat / data.crop_lon"
            )
        self.fine_grid = LatLonGrid(fine_lat, fine_lon)
        self.coarse_grid = coarsen_grid(self.fine_grid, f)
        # The runtime's coarse -> fine upsampling (PrecipGenerator uses the same).
        self.upsampler = Regridder(self.coarse_grid, self.fine_grid, "bilinear")
        self.regridders = [
            Regridder(LatLonGrid(p.lat, p.lon), self.coarse_grid, method=cfg.predictor_regrid)
            for p in self.predictors
        ]
        self._cache: dict[str, np.ndarray] | None = None
        if cfg.cache_in_memory:
            self._cache = self._read_positions(np.arange(self.split.times.size))
        self.stats = stats if stats is not None else self._compute_stats(chunk)

    # -- reading ---------------------------------------------------------------------

    def _read_positions(self, pos: np.ndarray) -> dict[str, np.ndarray]:
        fine = self.target.read(self.split.target_index[pos])[:, self.lat_slice, self.lon_slice]
        out = {"fine": fine}
        for k, (src, rg) in enumerate(zip(self.predictors, self.regridders, strict=True)):
            raw = src.read(self.split.predictor_index[k, pos])
            out[src.source.name] = np.asarray(rg(raw), np.float32)
        return out

    def read(self, pos: np.ndarray) -> dict[str, np.ndarray]:
        """Read samples at aligned positions.

        Parameters
        ----------
        pos
            Positions into ``split.times``.

        Returns
        -------
        dict
            ``fine`` (target mm/day, NaN = missing, ``(n, Hf, Wf)``), ``coarse``
            (its masked block mean) and one ``(n, Hc, Wc)`` array per predictor.
        """
        pos = np.asarray(pos, np.int64)
        if self._cache is not None:
            out = {k: v[pos] for k, v in self._cache.items()}
        else:
            out = self._read_positions(pos)
        # Plain (not area-weighted) block mean, as the runtime's coarse target is defined.
        out["coarse"] = coarsen_block_mean(
            out["fine"], self.cfg.coarsen_factor, min_valid_fraction=self.cfg.min_valid_fraction
        )
        return out

    @functools.cached_property
    def features(self) -> list[FeatureSpec]:
        """The network's input channels (``data.features``, or the predictors as they are)."""
        if self.cfg.features is None:
            return identity_features([p.source.name for p in self.predictors])
        return parse_features(self.cfg.features)

    def feature_fields(
        self, batch: Mapping[str, np.ndarray], features: Sequence[FeatureSpec] | None = None
    ) -> np.ndarray:
        """Compute the feature channels of a batch (physical units, not normalised).

        Parameters
        ----------
        batch
            Output of :meth:`read`.
        features
            Which channels (default: :attr:`features`, the regression's); others
            read the same predictors (e.g. the denoiser's own features).

        Returns
        -------
        numpy.ndarray
            ``(n, C, Hc, Wc)`` float32.
        """
        names = [p.source.name for p in self.predictors]
        for n in names:
            if not np.all(np.isfinite(batch[n])):
                raise InputError(f"predictor {n!r} has non-finite values after regridding")
        specs = self.features if features is None else list(features)
        return compute_features(specs, {n: batch[n] for n in names})

    def _compute_stats(self, chunk: int) -> Stats:
        (pm, ps), (tm, ts) = self._moments(self.features, chunk, target=True)
        return Stats(pm, ps, tm, ts, int(self.split.train.size))

    def _moments(
        self, features: Sequence[FeatureSpec], chunk: int, *, target: bool
    ) -> tuple[tuple[dict[str, float], dict[str, float]], tuple[float, float]]:
        """Return feature (and transformed coarse target) moments over the training split."""
        feats = [f.name for f in features]
        moments = {n: _Moments() for n in feats}
        tmom = _Moments()
        train = self.split.train
        for start in range(0, train.size, chunk):
            batch = self.read(train[start : start + chunk])
            if feats:
                x = self.feature_fields(batch, features)
                for i, n in enumerate(feats):
                    moments[n].add(x[:, i])
            if target:
                tmom.add(self.transform.forward(batch["coarse"]))
        pm: dict[str, float] = {}
        ps: dict[str, float] = {}
        for n in feats:
            pm[n], ps[n] = moments[n].result(n)
        tm, ts = tmom.result(self.cfg.target.name) if target else (0.0, 1.0)
        return (pm, ps), (tm, ts)

    def ensure_feature_stats(self, features: Sequence[FeatureSpec], chunk: int = 256) -> None:
        """Add statistics for features that have none yet, from the training split.

        The denoiser's own feature channels (``diffusion.condition.features``) are
        normalised like the regression's: mean and std over the training split only.

        Parameters
        ----------
        features
            The channels that need statistics.
        chunk
            Days per read.
        """
        missing = [f for f in features if f.name not in self.stats.predictor_mean]
        if not missing:
            return
        (pm, ps), _ = self._moments(missing, chunk, target=False)
        self.stats = dataclasses.replace(
            self.stats,
            predictor_mean={**self.stats.predictor_mean, **pm},
            predictor_std={**self.stats.predictor_std, **ps},
        )

    # -- normalisation -----------------------------------------------------------------

    def normalise_predictors(
        self, batch: Mapping[str, np.ndarray], features: Sequence[FeatureSpec] | None = None
    ) -> np.ndarray:
        """Compute, stack and normalise the feature channels of a batch.

        Parameters
        ----------
        batch
            Output of :meth:`read`.
        features
            Which channels (default: :attr:`features`, the regression's); each needs
            statistics (:meth:`ensure_feature_stats`).

        Returns
        -------
        numpy.ndarray
            ``(n, C, Hc, Wc)`` float32, one channel per feature.
        """
        specs = self.features if features is None else list(features)
        missing = [f.name for f in specs if f.name not in self.stats.predictor_mean]
        if missing:
            raise ConfigError(
                f"no normalisation statistics for feature(s) {missing} "
                "(StageData.ensure_feature_stats)"
            )
        x = self.feature_fields(batch, specs)
        mean = np.array([self.stats.predictor_mean[f.name] for f in specs], np.float32)
        std = np.array([self.stats.predictor_std[f.name] for f in specs], np.float32)
        return ((x - mean[None, :, None, None]) / std[None, :, None, None]).astype(np.float32)

    def normalise_target(self, mm_per_day: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Transform + normalise a precipitation field and return its validity mask.

        Parameters
        ----------
        mm_per_day
            Field in mm/day, NaN = missing.

        Returns
        -------
        tuple of numpy.ndarray
            Normalised field (NaN replaced by 0) and mask (1 valid, 0 missing).
        """
        mask = np.isfinite(mm_per_day)
        z = self.transform.forward(np.where(mask, mm_per_day, 0.0).astype(np.float32))
        z = (z - self.stats.target_mean) / self.stats.target_std
        return np.where(mask, z, 0.0).astype(np.float32), mask.astype(np.float32)

    def denormalise_target(self, z: np.ndarray) -> np.ndarray:
        """Invert :meth:`normalise_target` (to mm/day, never negative).

        Parameters
        ----------
        z
            Normalised field.

        Returns
        -------
        numpy.ndarray
            Precipitation in mm/day.
        """
        return np.asarray(
            self.transform.inverse(
                (z * self.stats.target_std + self.stats.target_mean).astype(np.float32)
            )
        )


class RegressionDataset(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    """Samples ``x`` (predictors), ``y`` (coarse target), ``mask`` for the regression.

    Parameters
    ----------
    data
        The stage data.
    positions
        Aligned positions of this split.
    """

    def __init__(self, data: StageData, positions: np.ndarray) -> None:
        self.data = data
        self.positions = np.asarray(positions, np.int64)

    def __len__(self) -> int:
        return int(self.positions.size)

    def batch(self, items: np.ndarray) -> dict[str, torch.Tensor]:
        """Read a batch of items at once (one read per file).

        Parameters
        ----------
        items
            Indices into this dataset.

        Returns
        -------
        dict
            ``x`` ``(n, C, Hc, Wc)``, ``y`` and ``mask`` ``(n, 1, Hc, Wc)``.
        """
        raw = self.data.read(self.positions[np.asarray(items, np.int64)])
        x = self.data.normalise_predictors(raw)
        y, m = self.data.normalise_target(raw["coarse"])
        return {
            "x": torch.from_numpy(x),
            "y": torch.from_numpy(y[:, None]),
            "mask": torch.from_numpy(m[:, None]),
        }

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.batch(np.array([i])).items()}


@dataclass
class ConditionInputs:
    """What a diffusion sample is conditioned on besides the noisy field.

    Parameters
    ----------
    coarse
        ``(n_positions, Hc, Wc)`` normalised coarse fields, indexed by aligned
        position (the regression's out-of-fold predictions), or ``None`` for the
        target's own block mean (the paper's training pairs).
    predictors
        Also return the normalised feature channels upsampled to the fine grid.
    statics
        ``(S, Hf, Wf)`` static channels (already normalised).
    features
        The denoiser's own feature channels (``diffusion.condition.features``);
        ``None``: the data's features (the regression's).
    """

    coarse: np.ndarray | None = None
    predictors: bool = False
    statics: np.ndarray | None = None
    features: list[FeatureSpec] | None = None

    def n_extra(self, n_features: int) -> int:
        """Return the number of condition channels besides the noised coarse field."""
        if self.predictors and self.features is not None:
            n_features = len(self.features)
        return (n_features if self.predictors else 0) + (
            0 if self.statics is None else int(self.statics.shape[0])
        )


class DiffusionDataset(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    """Samples ``y`` (fine target), ``mask`` and the condition for diffusion.

    The condition noise and random patches are added by the diffusion stage from
    per-sample seeds, so that a sample is independent of the batch split across
    processes.

    Parameters
    ----------
    data
        The stage data.
    positions
        Aligned positions of this split.
    condition
        What to condition on (default: the target's block mean only).
    """

    def __init__(
        self, data: StageData, positions: np.ndarray, condition: ConditionInputs | None = None
    ) -> None:
        self.data = data
        self.positions = np.asarray(positions, np.int64)
        self.condition = condition if condition is not None else ConditionInputs()

    def __len__(self) -> int:
        return int(self.positions.size)

    def coarse_condition(self, pos: np.ndarray, raw: Mapping[str, np.ndarray]) -> np.ndarray:
        """Return the normalised coarse field the noised condition channel is built from.

        Parameters
        ----------
        pos
            Aligned positions of the batch.
        raw
            The batch as :meth:`StageData.read` returns it.

        Returns
        -------
        numpy.ndarray
            ``(n, Hc, Wc)`` float32; missing coarse cells (sea) are 0, the
            training mean, so the condition stays finite.
        """
        if self.condition.coarse is not None:
            return np.asarray(self.condition.coarse[pos], np.float32)
        c, cm = self.data.normalise_target(raw["coarse"])
        return np.where(cm > 0, c, 0.0).astype(np.float32)

    def extra_channels(self, raw: Mapping[str, np.ndarray], n: int) -> np.ndarray:
        """Return the condition channels that are not noised: upsampled features, statics.

        Parameters
        ----------
        raw
            The batch as :meth:`StageData.read` returns it.
        n
            Batch size.

        Returns
        -------
        numpy.ndarray
            ``(n, E, Hf, Wf)`` float32 (``E`` may be 0).
        """
        hf, wf = self.data.fine_grid.shape
        parts = []
        if self.condition.predictors:
            x = self.data.normalise_predictors(raw, self.condition.features)  # (n, C, Hc, Wc)
            parts.append(np.asarray(self.data.upsampler(x), np.float32))
        if self.condition.statics is not None and self.condition.statics.shape[0]:
            st = self.condition.statics
            parts.append(np.broadcast_to(st, (n, *st.shape)).astype(np.float32))
        if not parts:
            return np.zeros((n, 0, hf, wf), np.float32)
        return np.concatenate(parts, axis=1)

    def batch(self, items: np.ndarray) -> dict[str, torch.Tensor]:
        """Read a batch of items at once.

        Parameters
        ----------
        items
            Indices into this dataset.

        Returns
        -------
        dict
            ``y``, ``mask`` and ``cond`` ``(n, 1, Hf, Wf)`` and ``extra``
            ``(n, E, Hf, Wf)``: ``cond`` is the normalised coarse condition
            (:meth:`coarse_condition`) upsampled bilinearly to the fine grid exactly
            as :class:`precipdiff.generator.PrecipGenerator` upsamples the regression
            output; ``extra`` the channels of :meth:`extra_channels`.
        """
        pos = self.positions[np.asarray(items, np.int64)]
        raw = self.data.read(pos)
        y, m = self.data.normalise_target(raw["fine"])
        up = np.asarray(self.data.upsampler(self.coarse_condition(pos, raw)), np.float32)
        return {
            "y": torch.from_numpy(y[:, None]),
            "mask": torch.from_numpy(m[:, None]),
            "cond": torch.from_numpy(up[:, None]),
            "extra": torch.from_numpy(self.extra_channels(raw, pos.size)),
        }

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.batch(np.array([i])).items()}
