"""Typed training configuration, loaded strictly from YAML or JSON.

One experiment file holds both stages (``regression`` and ``diffusion``) and
the bundle they are assembled into; ``precipdiff train regression CONFIG``,
``precipdiff train diffusion CONFIG`` and ``precipdiff train bundle CONFIG``
each read the section they need. Unknown keys anywhere raise
:class:`~precipdiff.errors.ConfigError` naming the key and the section, so a
typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import numpy as np

from precipdiff.errors import ConfigError

T = TypeVar("T")


@dataclass
class VariableSource:
    """One variable read from netCDF files or a Zarr store.

    Parameters
    ----------
    name
        Canonical name known to :func:`precipdiff.variables.get_variable` (e.g.
        ``hus850``, ``psl``, ``uas``, ``pr``); the level is part of the name. The
        reader (:func:`precipdiff.io.readers.open_predictors`) converts the file's
        units to the canonical ones (precipitation: mm/day).
    path
        File path or glob (many yearly or monthly files), or a Zarr store (a
        directory or a URL such as an ARCO-ERA5 ``gs://`` store), relative to
        ``data_root`` unless absolute or a URL. Empty (omitted) only in a stage's
        data section that reads a prepared training store (``DataConfig.store``):
        the variable is then taken from the store.
    variable
        Name of the variable inside the files when it is not one of the known
        aliases of ``name``.
    scale
        Extra factor applied after the reader's unit conversion (default 1).
    """

    name: str
    path: str = ""
    variable: str | None = None
    scale: float = 1.0

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("variable source: 'name' must be a non-empty string")
        if not np.isfinite(self.scale) or self.scale == 0:
            raise ConfigError(f"variable {self.name!r}: scale must be finite and non-zero")
        from precipdiff.variables import get_variable

        spec = get_variable(self.name)  # raises ConfigError naming an unknown variable
        if spec.name != self.name:
            raise ConfigError(f"use the canonical name {spec.name!r} instead of {self.name!r}")


@dataclass
class SplitConfig:
    """Train/validation split by time (ISO dates, inclusive).

    Parameters
    ----------
    validation_start, validation_end
        The validation period. Samples in it are never used for training nor
        for normalisation statistics.
    train_start, train_end
        Optional bounds of the training period (default: all remaining samples).
    """

    validation_start: str
    validation_end: str
    train_start: str | None = None
    train_end: str | None = None

    def __post_init__(self) -> None:
        for key in ("validation_start", "validation_end", "train_start", "train_end"):
            value = getattr(self, key)
            if value is None:
                continue
            try:
                np.datetime64(value, "s")
            except ValueError as exc:
                raise ConfigError(f"split.{key}: {value!r} is not an ISO date") from exc
        if np.datetime64(self.validation_start) > np.datetime64(self.validation_end):
            raise ConfigError(
                f"split: validation_start {self.validation_start} is after "
                f"validation_end {self.validation_end}"
            )


def _need_paths(sources: list[VariableSource], where: str) -> None:
    for src in sources:
        if not src.path:
            raise ConfigError(f"{where}: variable {src.name!r} needs a 'path'")


def resolve_data_root(data_root: str | None, base: Path | None, where: str) -> Path:
    """Resolve a configured data root directory.

    Parameters
    ----------
    data_root
        The configured value; ``None`` uses the shared data directory
        (``$PRECIPDIFF_SHARED_DATA`` or ``../shared/data``).
    base
        Directory relative roots are resolved against (the config file's).
    where
        Config section named in error messages (e.g. ``data``).

    Returns
    -------
    pathlib.Path
        The directory; raises :class:`ConfigError` when it cannot be found.
    """
    from precipdiff.testing import shared_data_dir

    if data_root is None:
        found = shared_data_dir()
        if found is None:
            raise ConfigError(
                f"{where}.data_root is not set and the shared data directory was not "
                f"found (set PRECIPDIFF_SHARED_DATA or {where}.data_root)"
            )
        return found
    root = Path(os.path.expandvars(data_root)).expanduser()
    if not root.is_absolute() and base is not None:
        root = base / root
    if not root.is_dir():
        raise ConfigError(f"{where}.data_root {root} is not a directory")
    return root


@dataclass
class DataConfig:
    """Where the samples come from and how the grids are built.

    Parameters
    ----------
    target
        Fine-grid precipitation (converted to mm/day with ``scale``). Missing
        values (NaN, e.g. E-OBS over sea) are masked out of the loss.
    split
        Train/validation split by time.
    predictors
        Large-scale predictors (regression stage only; empty for diffusion): the
        variables read from files, each regridded to the coarse grid.
    features
        The network's input channels computed from the predictors on the coarse
        grid (:func:`precipdiff.features.parse_features`): a predictor name, or
        ``"rh<level>"`` for relative humidity from ``hus<level>`` and
        ``ta<level>``, or a full feature mapping. ``None``: the predictors
        themselves, in order.
    store
        A training store written by ``precipdiff prepare`` (path relative to
        the current directory, like ``run_dir``). The stage then reads only the
        store: ``target`` and ``predictors`` name the store's variables (no
        ``path``), the grids, crops, daily means and unit conversions are the
        store's, and the normalisation statistics of ``split`` come from the
        store's per-day moments. ``crop_*``, ``data_root``, ``daily``,
        ``accumulation_hours`` and ``cache_in_memory`` must be left unset;
        ``coarsen_factor`` and ``min_valid_fraction`` must match the store.
    data_root
        Directory the paths are relative to; ``None`` uses the shared data
        directory (``precipdiff.testing.shared_data_dir()``).
    crop_lat, crop_lon
        ``[start, stop)`` index ranges cropping the fine target grid so that its
        size divides by ``coarsen_factor``; ``None`` keeps the full axis.
    coarsen_factor
        Block size of the block mean that builds the coarse grid from the fine one
        (1: the target already is on the coarse grid).
    min_valid_fraction
        A coarse cell is valid when at least this fraction of its fine cells is.
    predictor_regrid
        Method remapping predictors onto the coarse grid (``bilinear`` or
        ``conservative``).
    time_match
        ``day`` pairs predictor and target samples by calendar day, ``exact`` by
        timestamp.
    daily
        ``auto`` (average sub-daily data to daily means), ``yes`` or ``no``
        (keep every time step as a sample, e.g. hourly fields).
    accumulation_hours
        Accumulation period of amounts stored in m or mm (ERA5 hourly ``tp``: 1);
        inferred by the reader when ``None``.
    cache_in_memory
        Read every selected sample once into memory (only for small data sets;
        large ones are read lazily sample by sample).
    """

    target: VariableSource
    split: SplitConfig
    predictors: list[VariableSource] = field(default_factory=list)
    features: list[Any] | None = None
    store: str | None = None
    data_root: str | None = None
    crop_lat: list[int] | None = None
    crop_lon: list[int] | None = None
    coarsen_factor: int = 4
    min_valid_fraction: float = 0.5
    predictor_regrid: Literal["bilinear", "conservative"] = "bilinear"
    time_match: Literal["day", "exact"] = "day"
    daily: Literal["auto", "yes", "no"] = "auto"
    accumulation_hours: float | None = None
    cache_in_memory: bool = False

    def __post_init__(self) -> None:
        for key in ("crop_lat", "crop_lon"):
            crop = getattr(self, key)
            if crop is not None and (len(crop) != 2 or crop[0] < 0 or crop[1] <= crop[0]):
                raise ConfigError(f"data.{key} must be [start, stop) with 0 <= start < stop")
        if self.coarsen_factor < 1:
            raise ConfigError(f"data.coarsen_factor must be >= 1, got {self.coarsen_factor}")
        if not 0.0 < self.min_valid_fraction <= 1.0:
            raise ConfigError("data.min_valid_fraction must be in (0, 1]")
        if self.predictor_regrid not in ("bilinear", "conservative"):
            raise ConfigError(
                f"data.predictor_regrid must be 'bilinear' or 'conservative', "
                f"got {self.predictor_regrid!r}"
            )
        if self.daily not in ("auto", "yes", "no"):
            raise ConfigError(f"data.daily must be auto, yes or no, got {self.daily!r}")
        if self.accumulation_hours is not None and not self.accumulation_hours > 0:
            raise ConfigError("data.accumulation_hours must be > 0")
        if self.time_match not in ("day", "exact"):
            raise ConfigError(f"data.time_match must be 'day' or 'exact', got {self.time_match!r}")
        names = [p.name for p in self.predictors]
        if len(set(names)) != len(names):
            raise ConfigError(f"data.predictors: duplicate names in {names}")
        if self.features is not None:
            from precipdiff.features import parse_features, required_variables

            if not self.features:
                raise ConfigError("data.features must name at least one feature (or be null)")
            needed = required_variables(parse_features(self.features))
            missing = [v for v in needed if v not in names]
            if missing:
                raise ConfigError(
                    f"data.features read predictor(s) {missing} that data.predictors "
                    f"does not list ({names})"
                )
        if self.store is None:
            _need_paths([self.target, *self.predictors], "data")
            return
        if not self.store:
            raise ConfigError("data.store must be a non-empty path")
        with_path = [v.name for v in (self.target, *self.predictors) if v.path or v.variable]
        if with_path:
            raise ConfigError(
                f"data.store is set: variables {with_path} are read from the store; remove "
                "their 'path'/'variable' (they belong in the prepare section)"
            )
        defaults = DataConfig.__dataclass_fields__
        for key in (
            "data_root",
            "crop_lat",
            "crop_lon",
            "daily",
            "accumulation_hours",
            "cache_in_memory",
            "time_match",
            "predictor_regrid",
        ):
            if getattr(self, key) != defaults[key].default:
                raise ConfigError(
                    f"data.{key} cannot be set with data.store: the store was built with "
                    "the prepare section's settings"
                )

    def root(self, base: Path | None = None) -> Path:
        """Resolve the data root directory.

        Parameters
        ----------
        base
            Directory relative roots are resolved against (the config file's).

        Returns
        -------
        pathlib.Path
            The directory; raises :class:`ConfigError` when it cannot be found.
        """
        return resolve_data_root(self.data_root, base, "data")


@dataclass
class OptimConfig:
    """AdamW, warm-up + cosine learning-rate schedule, clipping and the EMA.

    Parameters
    ----------
    steps
        Number of optimiser steps.
    batch_size
        Global batch size (split evenly across DDP processes).
    lr
        Peak learning rate.
    weight_decay
        AdamW weight decay.
    warmup_steps
        Linear warm-up length.
    min_lr_ratio
        Final learning rate of the cosine decay, as a fraction of ``lr``.
    grad_clip
        Maximum global gradient norm (``0`` disables clipping).
    ema_decay
        Exponential moving average of the weights (``0`` disables it).
    """

    steps: int = 1000
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    ema_decay: float = 0.999

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"optim.steps must be >= 1, got {self.steps}")
        if self.batch_size < 1:
            raise ConfigError(f"optim.batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ConfigError(f"optim.lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError("optim.weight_decay must be >= 0")
        if self.warmup_steps < 0:
            raise ConfigError("optim.warmup_steps must be >= 0")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError("optim.min_lr_ratio must be in [0, 1]")
        if self.grad_clip < 0:
            raise ConfigError("optim.grad_clip must be >= 0")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"optim.ema_decay must be in [0, 1), got {self.ema_decay}")


@dataclass
class LoopConfig:
    """Validation, checkpointing and logging cadence.

    Parameters
    ----------
    validate_every
        Steps between validations (the validation loss curve goes to
        ``metrics.csv``; with ``select: best`` it also selects the model).
    checkpoint_every
        Steps between resumable checkpoints.
    log_every
        Steps between rows of ``metrics.csv``.
    max_validation_samples
        Cap on validation samples per validation (``0``: all).
    progress
        Show a progress bar.
    workers
        Worker processes reading training batches ahead of the step that needs
        them (``0``: read in the training process, one batch at a time). The
        batches are the same either way (:mod:`precipdiff.offline.train.loader`).
    prefetch
        Batches each worker keeps ready (with ``workers > 0``).
    select
        Which weights ``best.safetensors`` (the ones a bundle ships) holds:
        ``"best"`` (the EMA weights of the lowest validation loss) or ``"last"``
        (the EMA weights at the last step). With ``last`` the validation split
        is only *reported*, never used for a choice -- the setting for a final
        model whose step count was chosen on an inner split of the training data
        (docs/training.md, "Choosing on training data only").
    """

    validate_every: int = 100
    checkpoint_every: int = 100
    log_every: int = 10
    max_validation_samples: int = 0
    progress: bool = True
    workers: int = 0
    prefetch: int = 2
    select: Literal["best", "last"] = "best"

    def __post_init__(self) -> None:
        if self.select not in ("best", "last"):
            raise ConfigError(f"loop.select must be 'best' or 'last', got {self.select!r}")
        for key in ("validate_every", "checkpoint_every", "log_every"):
            if getattr(self, key) < 1:
                raise ConfigError(f"loop.{key} must be >= 1")
        if self.max_validation_samples < 0:
            raise ConfigError("loop.max_validation_samples must be >= 0")
        if self.workers < 0:
            raise ConfigError(f"loop.workers must be >= 0, got {self.workers}")
        if self.prefetch < 1:
            raise ConfigError(f"loop.prefetch must be >= 1, got {self.prefetch}")


#: Regression losses accepted by ``regression.loss``.
REGRESSION_LOSSES = ("mse_transformed", "mse_physical", "mixed")


@dataclass
class RegressionStageConfig:
    """The UNet regression: predictors on the coarse grid -> coarse precipitation.

    Parameters
    ----------
    data
        Data section (with predictors).
    model
        Keyword arguments of :class:`precipdiff.nn.unet.UNetConfig`; the channel
        counts are filled in from the data.
    optim
        Optimiser section.
    loop
        Loop section.
    loss
        Training (and model-selection) loss over valid cells, one of
        ``mse_transformed`` (MSE of the normalised transformed field: estimates
        roughly a conditional geometric mean / median, dry for skewed
        precipitation; the default, so older configs keep their meaning),
        ``mse_physical`` (MSE of the inverse-transformed prediction in mm/day:
        estimates the conditional arithmetic mean; the prediction still goes
        through the transform's inverse, so it is never negative at run time) or
        ``mixed`` (``mse_transformed + physical_weight * mse_physical``).
        See ``docs/training.md``.
    physical_weight
        Weight of the mm/day term in ``mixed`` (per (mm/day)²); must be > 0.
    cross_fit_folds
        ``K > 1``: after the main model, train ``K`` more on the training split
        with one contiguous block of training days (``1/K`` of them) held out
        each, and write their predictions for the held-out days -- every training
        day predicted by a model that never saw it -- to
        ``run_dir/regression/condition.npz`` (validation days: the main model).
        A diffusion stage with ``condition.source: regression`` trains on these,
        so its ensemble learns the regression's real out-of-sample error. ``0``:
        none.
    """

    data: DataConfig
    model: dict[str, Any] = field(default_factory=dict)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    loss: str = "mse_transformed"
    physical_weight: float = 0.1
    cross_fit_folds: int = 0

    def __post_init__(self) -> None:
        if not self.data.predictors:
            raise ConfigError("regression.data.predictors must list at least one predictor")
        if self.loss not in REGRESSION_LOSSES:
            raise ConfigError(
                f"regression.loss={self.loss!r} is not supported; expected one of "
                f"{list(REGRESSION_LOSSES)}"
            )
        if not (isinstance(self.physical_weight, (int, float)) and self.physical_weight > 0):
            raise ConfigError(
                f"regression.physical_weight must be a number > 0, got {self.physical_weight!r}"
            )
        if self.cross_fit_folds == 1 or self.cross_fit_folds < 0:
            raise ConfigError(
                f"regression.cross_fit_folds must be 0 (off) or >= 2, got {self.cross_fit_folds}"
            )


#: Static fine-grid channels a denoiser can be given (see ConditionConfig.statics).
STATIC_CHANNELS = (
    "lat_ramp",
    "lon_ramp",
    "sin_lat",
    "cos_lat",
    "sin_lon",
    "cos_lon",
    "target_climatology",
    "valid_fraction",
)
CONDITION_SOURCES = ("truth", "regression")


@dataclass
class StaticFile:
    """A static fine-grid channel read from a file: the training-split time mean.

    Parameters
    ----------
    name
        Channel name (stored in the bundle's ``statics.safetensors``).
    path
        File (relative to the data root), on the target's grid before cropping.
    variable
        Variable in the file.
    """

    name: str
    path: str
    variable: str


@dataclass
class ConditionConfig:
    """What the denoiser is conditioned on besides the noisy field.

    Parameters
    ----------
    source
        The noised coarse channel: ``"truth"`` (the target's block mean, the
        paper's training pairs) or ``"regression"`` (the regression's predictions:
        out-of-fold on training days, which needs ``regression.cross_fit_folds``;
        the denoiser then also learns the large-scale error of the regression and
        the ensemble carries it).
    predictors
        Also give the denoiser the regression's normalised input features,
        upsampled bilinearly to the fine grid (not noised).
    statics
        Fine-grid static channels, in order: ``lat_ramp``/``lon_ramp`` (position
        as a ramp from -1 to 1 across the grid), ``sin_lat``, ``cos_lat``,
        ``sin_lon``, ``cos_lon`` (global grids), ``target_climatology`` (the
        training-split mean of the normalised transformed target per cell),
        ``valid_fraction`` (fraction of training days with a valid target: a
        land-sea mask for E-OBS).
    static_files
        Further static channels from files, e.g. an observed temperature
        climatology as an orography proxy (standardised over the grid).
    features
        The denoiser's own feature channels (names or mappings as in
        ``data.features``, computed from the regression's predictors and normalised
        over the training split), instead of the regression's; needs
        ``predictors: true``. E.g. ``[rh850, psl, hus850]``: absolute humidity, whose
        change with warming the regression's relative humidity leaves out, for the
        small-scale intensity only.
    residual
        Generate the residual from the (clean) upsampled coarse field instead of
        the fine field itself (CorrDiff's formulation, Mardani et al. 2025): the
        denoiser's target is ``z_fine - up(z_coarse)`` in normalised transformed
        space and the runtime adds ``up(z_coarse)`` back to every member. In the
        ``log1p`` space a shift of the condition is a factor on the precipitation,
        so the generated small scales scale with the condition by construction.
    """

    source: str = "truth"
    predictors: bool = False
    statics: list[str] = field(default_factory=list)
    static_files: list[StaticFile] = field(default_factory=list)
    residual: bool = False
    features: list[str | dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        if self.features is not None:
            from precipdiff.features import parse_features

            if not self.predictors:
                raise ConfigError(
                    "diffusion.condition.features lists the denoiser's own feature channels: "
                    "it needs diffusion.condition.predictors: true"
                )
            if not self.features:
                raise ConfigError(
                    "diffusion.condition.features is empty (set predictors: false instead)"
                )
            parse_features(self.features)  # raises ConfigError on a bad entry
        if self.source not in CONDITION_SOURCES:
            raise ConfigError(
                f"diffusion.condition.source must be one of {CONDITION_SOURCES}, "
                f"got {self.source!r}"
            )
        unknown = [s for s in self.statics if s not in STATIC_CHANNELS]
        if unknown:
            raise ConfigError(
                f"diffusion.condition.statics: unknown channel(s) {unknown}; "
                f"known: {list(STATIC_CHANNELS)} (or use static_files)"
            )
        names = [*self.statics, *(f.name for f in self.static_files)]
        if len(set(names)) != len(names):
            raise ConfigError(f"diffusion.condition: duplicate static channels {names}")

    @property
    def static_names(self) -> list[str]:
        """All static channel names, in channel order."""
        return [*self.statics, *(f.name for f in self.static_files)]


@dataclass
class DiffusionStageConfig:
    """The conditional EDM denoiser: upsampled coarse field -> fine field.

    Parameters
    ----------
    data
        Data section (target only; the condition is its block mean).
    model
        Keyword arguments of :class:`precipdiff.nn.unet.UNetConfig`.
    sigma_data
        EDM ``sigma_data`` of the normalised fine field.
    sigma_c
        Standard deviation of the Gaussian noise injected into the (normalised)
        condition during training and inference (paper, Sec. 4.2).
    p_mean, p_std
        Log-normal distribution of the training noise levels (EDM).
    patch_size
        ``[h, w]`` random patches of the fine grid (multiples of the coarsen
        factor); ``None`` trains on whole fields.
    optim
        Optimiser section.
    loop
        Loop section.
    condition
        What the denoiser is conditioned on (:class:`ConditionConfig`; the
        default is the paper's: the noised block mean of the target).
    """

    data: DataConfig
    model: dict[str, Any] = field(default_factory=dict)
    condition: ConditionConfig = field(default_factory=ConditionConfig)
    sigma_data: float = 1.0
    sigma_c: float = 0.1
    p_mean: float = -1.2
    p_std: float = 1.2
    patch_size: list[int] | None = None
    optim: OptimConfig = field(default_factory=OptimConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)

    def __post_init__(self) -> None:
        if self.data.predictors:
            raise ConfigError(
                "diffusion.data.predictors must be empty: the diffusion stage is "
                "conditioned on the coarsened target only"
            )
        if not self.sigma_data > 0:
            raise ConfigError("diffusion.sigma_data must be > 0")
        if self.sigma_c < 0:
            raise ConfigError("diffusion.sigma_c must be >= 0")
        if not self.p_std > 0:
            raise ConfigError("diffusion.p_std must be > 0")
        f = self.data.coarsen_factor
        if self.patch_size is not None and (
            len(self.patch_size) != 2 or any(p < f or p % f for p in self.patch_size)
        ):
            raise ConfigError(
                f"diffusion.patch_size {self.patch_size} must be [h, w], positive "
                f"multiples of data.coarsen_factor ({f})"
            )


@dataclass
class OutputCalibrationConfig:
    """Output calibration of a bundle (``precipdiff train calibrate``).

    A per-fine-cell quantile mapping of the bundle's reanalysis-driven output
    onto the target observations, fitted on the training split only
    (:mod:`precipdiff.qdm.calibration`).

    Parameters
    ----------
    members
        Members generated per training day for the fit (more members: a less
        noisy estimate of the generated distribution).
    n_quantiles
        Quantile nodes of the tables.
    group
        ``"none"`` (one table per cell) or ``"month"`` (per calendar month; the
        runtime then needs each window's date).
    trace
        Trace threshold in mm/day: calibrated values below it become 0.
    default
        Whether the runtime applies it by default (namelist ``output_calibration
        = 'bundle'``); the Iberia demo's choice is made on an inner split
        (``scripts/iberia_selection.py``).
    seed
        Seed of the generated members.
    """

    members: int = 4
    n_quantiles: int = 100
    group: str = "none"
    trace: float = 0.05
    default: bool = True
    seed: int = 12345

    def __post_init__(self) -> None:
        if self.members < 1:
            raise ConfigError(f"output_calibration.members must be >= 1, got {self.members}")
        if self.n_quantiles < 3:
            raise ConfigError(
                f"output_calibration.n_quantiles must be >= 3, got {self.n_quantiles}"
            )
        if self.group not in ("none", "month"):
            raise ConfigError(
                f"output_calibration.group must be 'none' or 'month', got {self.group!r}"
            )
        if not self.trace >= 0:
            raise ConfigError(f"output_calibration.trace must be >= 0, got {self.trace}")


@dataclass
class BundleSection:
    """How the two trained stages are assembled into a bundle.

    Parameters
    ----------
    out
        Output directory of the bundle.
    name
        Bundle name recorded in the manifest.
    description
        One-line description recorded in the manifest.
    sampler
        Default sampler settings (keyword arguments of
        :class:`precipdiff.diffusion.samplers.SamplerConfig`); empty: the
        project's default, :func:`precipdiff.bundle.default_sampler`.
    fine_grid
        Keyword arguments of :meth:`precipdiff.grids.LatLonGrid.regular` for the
        bundle's fine grid; ``None`` uses the diffusion stage's (cropped) grid.
        The denoiser is fully convolutional, so patch-trained weights serve a
        larger grid (e.g. global 0.25 deg).
    denoiser_periodic_lon
        Override ``periodic_lon`` of the shipped denoiser (``True`` for a global
        fine grid when training used non-periodic patches; the weights are the same).
    evaluate
        Score the bundle on the validation splits and write figures.
    members
        Ensemble size of the evaluation.
    max_eval_samples
        Cap on validation samples scored (0: all).
    notes
        Free text recorded in the manifest's provenance (e.g. "shape and
        performance model, not skilful").
    output_calibration
        Settings of the output calibration ``precipdiff train calibrate`` fits
        (``None``: the bundle gets none).
    """

    out: str
    name: str
    description: str = ""
    sampler: dict[str, Any] = field(default_factory=dict)
    fine_grid: dict[str, Any] | None = None
    denoiser_periodic_lon: bool | None = None
    evaluate: bool = True
    members: int = 8
    max_eval_samples: int = 0
    notes: str = ""
    output_calibration: OutputCalibrationConfig | None = None

    def __post_init__(self) -> None:
        from precipdiff.diffusion.samplers import SamplerConfig

        SamplerConfig.from_dict(self.sampler)  # validates, rejects unknown keys
        if self.members < 1:
            raise ConfigError(f"bundle.members must be >= 1, got {self.members}")
        if self.max_eval_samples < 0:
            raise ConfigError("bundle.max_eval_samples must be >= 0")


@dataclass
class PrepareConfig:
    """``precipdiff prepare``: raw (hourly) ERA5 -> a chunked daily training store.

    Read once through :func:`precipdiff.io.readers.open_predictors` (the same
    variable mapping and unit conversion as everywhere else), averaged to daily
    means (accumulations to mm/day), predictors regridded onto the coarse grid,
    precipitation kept on the (cropped) fine grid and block-averaged onto the
    coarse grid, with per-day moments for the normalisation statistics of any
    split. See :mod:`precipdiff.offline.train.prepare` and ``docs/training.md``.

    Parameters
    ----------
    out
        The training store to write (a Zarr directory; relative to the current
        directory, like ``run_dir``).
    target
        Precipitation (``pr``) on the fine grid, e.g. ERA5 ``tp``.
    predictors
        Large-scale predictors, regridded onto the coarse grid.
    start, end
        First and last day written (ISO dates, inclusive).
    split
        The split whose training days give the store's statistics (stages may
        use other splits: their statistics come from the per-day moments).
    data_root
        Directory relative paths resolve against (``None``: the shared data
        directory).
    storage_options
        Passed to :func:`xarray.open_zarr` for remote stores (e.g.
        ``{token: anon}`` for the public ARCO-ERA5 bucket).
    crop_lat, crop_lon
        ``[start, stop)`` index crops of the fine grid (latitude ascending) so
        that it divides by ``coarsen_factor`` (ERA5 0.25°: ``crop_lat: [0, 720]``).
    coarsen_factor
        Fine cells per coarse cell along each axis.
    min_valid_fraction
        Coarse cells with a smaller valid fraction of fine cells are missing.
    predictor_regrid
        ``conservative`` (default: area means, e.g. 0.25° -> 1°) or ``bilinear``.
    accumulation_hours
        Accumulation period of amounts in m/mm (hourly ERA5 ``tp``: 1); inferred
        from the time step when ``None``.
    accumulations_end_at_stamp
        Accumulations are stamped at the end of their period (ERA5): the 00:00
        value belongs to the previous day.
    fine_chunk
        ``[lat, lon]`` chunk of the fine precipitation (one day per chunk):
        small chunks make random patch reads cheap.
    days_per_task
        Days per unit of work (the unit of parallelism and of resumption).
    workers
        Worker processes (``0``: in this process).
    """

    out: str
    target: VariableSource
    predictors: list[VariableSource]
    start: str
    end: str
    split: SplitConfig
    data_root: str | None = None
    storage_options: dict[str, Any] | None = None
    crop_lat: list[int] | None = None
    crop_lon: list[int] | None = None
    coarsen_factor: int = 4
    min_valid_fraction: float = 0.5
    predictor_regrid: Literal["bilinear", "conservative"] = "conservative"
    accumulation_hours: float | None = None
    accumulations_end_at_stamp: bool = True
    fine_chunk: list[int] = field(default_factory=lambda: [144, 144])
    days_per_task: int = 8
    workers: int = 0

    def __post_init__(self) -> None:
        if not self.out:
            raise ConfigError("prepare.out must be a non-empty path")
        if not self.predictors:
            raise ConfigError("prepare.predictors must list at least one predictor")
        _need_paths([self.target, *self.predictors], "prepare")
        if self.target.name != "pr":
            raise ConfigError(
                f"prepare.target must be precipitation 'pr', got {self.target.name!r}"
            )
        names = [p.name for p in self.predictors]
        if len(set(names)) != len(names) or "pr" in names:
            raise ConfigError(f"prepare.predictors: duplicate or reserved names in {names}")
        for key in ("start", "end"):
            try:
                np.datetime64(getattr(self, key), "D")
            except ValueError as exc:
                raise ConfigError(
                    f"prepare.{key}: {getattr(self, key)!r} is not an ISO date"
                ) from exc
        if np.datetime64(self.start, "D") > np.datetime64(self.end, "D"):
            raise ConfigError(f"prepare: start {self.start} is after end {self.end}")
        for key in ("crop_lat", "crop_lon"):
            crop = getattr(self, key)
            if crop is not None and (len(crop) != 2 or crop[0] < 0 or crop[1] <= crop[0]):
                raise ConfigError(f"prepare.{key} must be [start, stop) with 0 <= start < stop")
        if self.coarsen_factor < 1:
            raise ConfigError(f"prepare.coarsen_factor must be >= 1, got {self.coarsen_factor}")
        if not 0.0 < self.min_valid_fraction <= 1.0:
            raise ConfigError("prepare.min_valid_fraction must be in (0, 1]")
        if self.predictor_regrid not in ("bilinear", "conservative"):
            raise ConfigError(
                f"prepare.predictor_regrid must be 'bilinear' or 'conservative', "
                f"got {self.predictor_regrid!r}"
            )
        if self.accumulation_hours is not None and not self.accumulation_hours > 0:
            raise ConfigError("prepare.accumulation_hours must be > 0")
        if len(self.fine_chunk) != 2 or any(c < 1 for c in self.fine_chunk):
            raise ConfigError(f"prepare.fine_chunk must be [lat, lon] > 0, got {self.fine_chunk}")
        if self.days_per_task < 1:
            raise ConfigError("prepare.days_per_task must be >= 1")
        if self.workers < 0:
            raise ConfigError("prepare.workers must be >= 0")

    def root(self, base: Path | None = None) -> Path:
        """Resolve the data root directory.

        Parameters
        ----------
        base
            Directory relative roots are resolved against (the config file's).

        Returns
        -------
        pathlib.Path
            The directory.
        """
        return resolve_data_root(self.data_root, base, "prepare")


@dataclass
class TrainConfig:
    """A complete training experiment.

    Parameters
    ----------
    run_dir
        Directory for checkpoints, metrics and statistics (relative to the
        current directory).
    regression
        Regression stage.
    diffusion
        Diffusion stage.
    bundle
        Bundle assembly.
    prepare
        ``precipdiff prepare``: raw data -> the training store the stages read
        (``data.store``).
    seed
        Seed of every random choice (data order, patches, noise, initialisation).
    device
        ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
    precision
        ``auto`` (bf16 autocast on CUDA, fp32 on CPU), ``fp32`` or ``bf16``.
    transform
        Keyword arguments of :class:`precipdiff.transforms.PrecipTransform`
        (``kind``, ``eps`` in mm/day).
    """

    run_dir: str
    regression: RegressionStageConfig | None = None
    diffusion: DiffusionStageConfig | None = None
    bundle: BundleSection | None = None
    prepare: PrepareConfig | None = None
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    transform: dict[str, Any] = field(default_factory=lambda: {"kind": "log1p", "eps": 0.1})

    #: Directory of the file the config was read from (resolves relative paths).
    source_dir: Path | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        from precipdiff.transforms import PrecipTransform

        PrecipTransform.from_dict(self.transform)  # validates kind/eps, rejects unknown keys
        if self.regression is None and self.diffusion is None and self.prepare is None:
            raise ConfigError(
                "a training config needs a 'regression', 'diffusion' or 'prepare' section"
            )
        cond = self.diffusion.condition if self.diffusion is not None else None
        if cond is not None and (cond.source == "regression" or cond.predictors):
            what = (
                "condition.source: regression"
                if cond.source == "regression"
                else ("condition.predictors: true")
            )
            if self.regression is None:
                raise ConfigError(f"diffusion.{what} needs a 'regression' section")
            if cond.features is not None:
                _check_condition_features(cond.features, self.regression.data)
            if cond.source == "regression" and self.regression.cross_fit_folds < 2:
                raise ConfigError(
                    "diffusion.condition.source: regression trains on out-of-fold regression "
                    "predictions: set regression.cross_fit_folds >= 2"
                )


def _check_condition_features(entries: list[str | dict[str, Any]], data: DataConfig) -> None:
    """Check the denoiser's own features against the regression's data section.

    They must read the regression's predictors and agree by name with the
    regression's features (their statistics are keyed by name).
    """
    from precipdiff.features import (
        identity_features,
        parse_features,
        redefined_features,
        required_variables,
    )

    feats = parse_features(entries)
    have = [p.name for p in data.predictors]
    missing = [v for v in required_variables(feats) if v not in have]
    if missing:
        raise ConfigError(
            f"diffusion.condition.features read predictor(s) {missing} that "
            f"regression.data.predictors do not list (it lists {have})"
        )
    reg = parse_features(data.features) if data.features is not None else identity_features(have)
    clash = redefined_features(reg, feats)
    if clash:
        raise ConfigError(
            f"diffusion.condition.features {clash} share a name with a regression feature "
            "but are computed differently: rename them"
        )


# --------------------------------------------------------------------------------------
# strict loading


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(args[0], value, where) if len(args) == 1 else value
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        (item,) = typing.get_args(tp)
        return [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys.

    Parameters
    ----------
    cls
        The dataclass type.
    data
        The mapping (e.g. parsed YAML).
    where
        Location used in error messages.

    Returns
    -------
    object
        An instance of ``cls``.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and f.name != "source_dir"}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed keys are {sorted(fields)}")
    kwargs = {k: _convert(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    missing = [
        name
        for name, f in fields.items()
        if name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{where}: missing required key(s) {missing}")
    return cls(**kwargs)


def load_config(path: str | os.PathLike[str]) -> TrainConfig:
    """Read a training config from a YAML or JSON file.

    Parameters
    ----------
    path
        The file.

    Returns
    -------
    TrainConfig
        The validated configuration; relative data paths resolve against the
        file's directory.
    """
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"training config {p} does not exist")
    text = p.read_text()
    try:
        raw = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise ConfigError(f"training config {p} is not valid YAML/JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"training config {p}: top level must be a mapping")
    cfg = from_dict(TrainConfig, raw, where=p.name)
    cfg.source_dir = p.resolve().parent
    return cfg


def to_dict(cfg: Any) -> Any:
    """Turn a config dataclass into plain JSON-serialisable data.

    Parameters
    ----------
    cfg
        A config dataclass (or plain value).

    Returns
    -------
    object
        Nested dicts/lists/scalars.
    """
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {
            f.name: to_dict(getattr(cfg, f.name))
            for f in dataclasses.fields(cfg)
            if f.name != "source_dir"
        }
    if isinstance(cfg, list):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg
