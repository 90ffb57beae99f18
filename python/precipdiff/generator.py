"""The inference pipeline: predictors → coarse precipitation → fine ensemble.

:class:`PrecipGenerator` runs the two stages of Aich et al. (2025):

1. predictors (any supported grid) are remapped bilinearly to the bundle's
   coarse grid, checked (finite, physical range), normalised and passed through
   the regression UNet → coarse precipitation in normalised transformed space;
2. that field is upsampled bilinearly to the fine grid (the condition), noised at
   ``sigma_c`` with each member's own random stream, and an EDM sampler draws
   each ensemble member from the denoiser; the inverse transform gives
   precipitation (mm/day, never negative).

Member ``k`` of time step ``t`` draws all its noise (condition noise, initial
noise, churn) from a generator seeded by ``SeedSequence([seed, t, k])``, so it
does not depend on the other members or on the batch size.

A bundle may carry an output calibration (:mod:`precipdiff.qdm.calibration`):
a per-fine-cell quantile mapping of the generated values onto the observed
distribution, fitted on the training period; it is applied to every member
when the bundle says so (``output_calibration`` overrides). An optional
mass-conserving correction then rescales the fine field so that its
conservative coarse-graining equals the regression's coarse field (the paper
does not enforce conservation; ``conserve_mass`` switches it on).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from precipdiff.bundle import Bundle, bundle_hash, load_bundle
from precipdiff.bundle.compiled import POLICIES, compiled_networks
from precipdiff.device import resolve_device
from precipdiff.diffusion.edm import EDMPrecond, add_condition_noise
from precipdiff.diffusion.samplers import SamplerConfig, member_generators, sample
from precipdiff.errors import ConfigError, GridError, InputError
from precipdiff.features import compute_features
from precipdiff.grids import LatLonGrid, Regridder
from precipdiff.logs import log_once
from precipdiff.perf.precision import inference_copy, resolve_precision
from precipdiff.qdm.calibration import OutputCalibration
from precipdiff.variables import VariableSpec, check_finite, check_range, resolve_variable

#: Seconds per day: 1 mm/day = 1/86400 kg m-2 s-1.
SECONDS_PER_DAY = 86400.0
UNITS = ("mm/day", "kg m-2 s-1")

ProgressFn = Callable[[int, int], None]

log = logging.getLogger(__name__)


@dataclass
class GenerationResult:
    """Output of :meth:`PrecipGenerator.generate`.

    Parameters
    ----------
    fine
        ``(time, member, nlat_f, nlon_f)`` float32 precipitation.
    coarse
        ``(time, nlat_c, nlon_c)`` float32 regression precipitation.
    units
        ``"mm/day"`` or ``"kg m-2 s-1"``.
    fine_grid, coarse_grid
        The grids of ``fine`` and ``coarse``.
    seed
        The seed used.
    sampler
        The sampler settings used.
    conserve_mass
        Whether the mass-conserving correction was applied.
    attrs
        Provenance (bundle path, manifest provenance, sigma_c, NFE).
    times
        The predictors' time values when they came as an xarray Dataset (``None`` for
        plain arrays); used as the ``time`` coordinate of :meth:`to_dataset`.
    member_offset
        Index of the first member (member ids are ``member_offset + 1 ...``).
    """

    fine: np.ndarray
    coarse: np.ndarray
    units: str
    fine_grid: LatLonGrid
    coarse_grid: LatLonGrid
    seed: int
    sampler: SamplerConfig
    conserve_mass: bool
    attrs: dict[str, Any] = field(default_factory=dict)
    times: Any = None
    member_offset: int = 0

    def to_dataset(self) -> Any:
        """Return the ensemble as an xarray Dataset with the CF attributes the CLI writes.

        Variables ``pr`` ``(time, member, lat, lon)`` on the fine grid and ``pr_coarse``
        ``(time, lat_coarse, lon_coarse)`` (the regression stage), with standard names,
        long names and units; coordinates ``time`` (the predictors' times, or step
        indices for plain arrays), ``member`` (ids from 1), ``lat``/``lon`` with bounds;
        global provenance (``Conventions``, ``references``, ``bundle_hash``, sampler,
        seed, ``history``). ``ds.to_netcdf(path)`` gives a CF-1.8 file.

        Returns
        -------
        xarray.Dataset
            The ensemble.
        """
        from precipdiff.io import cf, import_xarray

        xr = import_xarray()
        nt, nm = self.fine.shape[:2]
        time = np.asarray(self.times) if self.times is not None else np.arange(nt, dtype=np.float64)
        fine_attrs = cf.precip_attributes(self.units, time_mean=False)
        coarse_attrs = {
            **fine_attrs,
            "long_name": "coarse precipitation of the regression stage (precipdiff)",
        }
        ds = xr.Dataset(
            {
                "pr": (("time", "member", "lat", "lon"), self.fine, fine_attrs),
                "pr_coarse": (("time", "lat_coarse", "lon_coarse"), self.coarse, coarse_attrs),
                "lat_bnds": (("lat", "bnds"), self.fine_grid.lat_bounds),
                "lon_bnds": (("lon", "bnds"), self.fine_grid.lon_bounds),
            },
            coords={
                "time": ("time", time),
                "member": ("member", np.arange(1, nm + 1, dtype=np.int32) + self.member_offset),
                "lat": ("lat", self.fine_grid.lat),
                "lon": ("lon", self.fine_grid.lon),
                "lat_coarse": ("lat_coarse", self.coarse_grid.lat),
                "lon_coarse": ("lon_coarse", self.coarse_grid.lon),
            },
        )
        for name in ("lat", "lon"):
            ds[name].attrs["bounds"] = f"{name}_bnds"
            ds[f"{name}_bnds"].encoding["_FillValue"] = None  # CF 7.1: no fill in bounds
            ds[f"{name}_coarse"].attrs.update(cf.coordinate_attributes(name))
        extra: dict[str, Any] = {
            "bundle": str(self.attrs.get("bundle", "")),
            "bundle_provenance": cf.json_attribute(self.attrs.get("provenance", {})),
            "members_seed": self.seed,
            "sampler": cf.json_attribute(self.sampler.to_dict()),
            "nfe_per_member": self.sampler.nfe,
            "sigma_c": float(self.attrs.get("sigma_c", float("nan"))),
            "conserve_mass": int(self.conserve_mass),
            "output_calibration": int(bool(self.attrs.get("output_calibration", False))),
        }
        if "bundle_hash" in self.attrs:
            extra["bundle_hash"] = str(self.attrs["bundle_hash"])
        cf.annotate_dataset(
            ds,
            title="precipitation generated by precipdiff (Python API)",
            command_line="precipdiff.generator.PrecipGenerator.generate",
            extra=extra,
        )
        if self.times is None:  # plain arrays: the steps are indices, not times
            ds["time"].attrs = {"long_name": "time step index of the predictors", "units": "1"}
        return ds


def _spec(spec: Mapping[str, Any]) -> VariableSpec:
    return VariableSpec.from_dict(spec)


class MassConserver:
    """Correct fine fields so their conservative coarse-graining equals a coarse field.

    The paper does not enforce conservation; this optional step makes the
    area-weighted mean of each fine member over every coarse cell equal the
    regression's coarse value. The correction is multiplicative where the fine
    field has rain (keeps it non-negative and keeps its pattern) and additive
    where it is dry but the coarse field is not; it is iterated because fine
    cells may straddle coarse-cell edges (0.25° cells centred on 1° cell edges).

    Parameters
    ----------
    fine_grid, coarse_grid
        The grids; the fine grid must cover every coarse cell.
    """

    def __init__(self, fine_grid: LatLonGrid, coarse_grid: LatLonGrid) -> None:
        try:
            self.down = Regridder(fine_grid, coarse_grid, "conservative")
        except GridError as exc:
            raise ConfigError(
                "conserve_mass needs the fine grid to cover the coarse grid for a "
                f"conservative coarse-graining: {exc}"
            ) from exc
        # Spread coarse-cell factors back to fine cells with the overlap weights.
        w = self.down.weights.T.tocsr()
        rows = np.asarray(w.sum(axis=1)).ravel()
        rows[rows == 0] = 1.0
        self.spread = sp.csr_matrix(sp.diags(1.0 / rows) @ w)
        self.fine_grid, self.coarse_grid = fine_grid, coarse_grid

    def __call__(self, fine: np.ndarray, coarse: np.ndarray, iterations: int = 20) -> np.ndarray:
        """Return the corrected fine field.

        Parameters
        ----------
        fine
            ``(..., nlat_f, nlon_f)`` precipitation (any units, >= 0).
        coarse
            ``(..., nlat_c, nlon_c)`` target coarse values, broadcastable to the
            leading dimensions of ``fine``.
        iterations
            Maximum correction sweeps (stops earlier at 1e-5 relative error).

        Returns
        -------
        numpy.ndarray
            The corrected field, float32, same shape as ``fine``.
        """
        lead = fine.shape[:-2]
        f = fine.reshape(-1, self.fine_grid.size).astype(np.float64)
        target = np.broadcast_to(coarse, (*lead, *self.coarse_grid.shape)).reshape(
            -1, self.coarse_grid.size
        )
        w = self.down.weights
        scale = max(float(np.abs(target).max()), 1e-12)
        for _ in range(iterations):
            cf = (w @ f.T).T
            if np.abs(cf - target).max() <= 1e-5 * scale:
                break
            wet = cf > 1e-9 * scale
            ratio = np.where(wet, target / np.where(wet, cf, 1.0), 1.0)
            add = np.where(wet, 0.0, np.maximum(target - cf, 0.0))
            f = f * (self.spread @ ratio.T).T + (self.spread @ add.T).T
        return np.maximum(f, 0.0).astype(np.float32).reshape(fine.shape)


class PrecipGenerator:
    """Generate fine-grid precipitation ensembles from large-scale predictors.

    Parameters
    ----------
    bundle
        A loaded :class:`~precipdiff.bundle.Bundle`.
    use_compiled
        ``"auto"``: per network, use the AOTInductor package from the bundle when
        one matches the device, shapes, torch version and precision and was
        measured to pay at export, eager otherwise; ``True``: require packages
        for both networks; ``False``: always eager.
    member_batch
        Members denoised together in one network call. The default 1 makes a
        member bit-identical whatever the ensemble size (batched convolutions
        may pick different kernels); larger values trade that for speed on GPUs.
    precision
        Precision of the denoiser: ``"bundle"`` (the manifest's choice for this
        device type), ``"float32"``, ``"bf16"`` or ``"fp16"`` (CUDA only); see
        :mod:`precipdiff.perf.precision`. The regression runs float32.

    Notes
    -----
    The networks run as frozen inference copies (``requires_grad=False``, under
    ``torch.inference_mode``); the bundle's own modules are left untouched.
    """

    def __init__(
        self,
        bundle: Bundle,
        *,
        use_compiled: bool | str = "auto",
        member_batch: int = 1,
        precision: str = "bundle",
    ) -> None:
        if use_compiled not in ("auto", True, False):
            raise ConfigError(f"use_compiled must be 'auto', True or False, got {use_compiled!r}")
        if member_batch < 1:
            raise ConfigError(f"member_batch must be >= 1, got {member_batch}")
        self.precision = resolve_precision(precision, bundle.manifest.precision, bundle.device.type)
        self.bundle = bundle
        self.manifest = bundle.manifest
        self.device = bundle.device
        self.member_batch = member_batch
        self.coarse_grid = bundle.coarse_grid
        self.fine_grid = bundle.fine_grid
        self.transform = bundle.transform
        self.sampler = self.manifest.sampler_config()
        self.bundle_hash = bundle_hash(self.manifest)
        norm = self.manifest.normalisation
        self.features = self.manifest.feature_specs()
        self._x_mean = np.array(
            [norm["predictors"][f.name]["mean"] for f in self.features], np.float32
        )
        self._x_std = np.array(
            [norm["predictors"][f.name]["std"] for f in self.features], np.float32
        )
        self._cond_predictors = bool(self.manifest.condition["predictors"])
        #: The denoiser's feature channels (the regression's unless the manifest's
        #: ``condition.features`` lists its own; empty without predictors).
        self.condition_features = self.manifest.condition_feature_specs()
        self._c_mean = np.array(
            [norm["predictors"][f.name]["mean"] for f in self.condition_features], np.float32
        )
        self._c_std = np.array(
            [norm["predictors"][f.name]["std"] for f in self.condition_features], np.float32
        )
        self._own_condition_features = self.condition_features != list(self.features)
        #: the denoiser generates the residual from the clean upsampled condition
        self._residual = bool(self.manifest.condition.get("residual", False))
        self._y_mean = float(norm["precip"]["mean"])
        self._y_std = float(norm["precip"]["std"])
        self._upsample = Regridder(self.coarse_grid, self.fine_grid, "bilinear")
        self._input_regridders: dict[tuple[bytes, bytes], Regridder] = {}
        self._mass: MassConserver | None = None
        #: The bundle's output calibration (``None`` when it has none).
        self.output_calibration: OutputCalibration | None = None
        if self.manifest.output_calibration:
            self.output_calibration = OutputCalibration.from_manifest(
                self.manifest.output_calibration, bundle.path
            )
        self._statics_fine = torch.as_tensor(bundle.statics_fine, device=self.device)
        self._statics_coarse = bundle.statics_coarse
        self.regression_fn: Callable[[torch.Tensor], torch.Tensor] = inference_copy(
            bundle.regression, "float32"
        )
        self.denoise_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] = (
            EDMPrecond(
                inference_copy(bundle.denoiser.net, self.precision),
                sigma_data=bundle.denoiser.sigma_data,
            )
        )
        policy = {"auto": "auto", True: "always", False: "never"}[use_compiled]
        assert policy in POLICIES
        #: Which networks run as compiled packages.
        self.compiled_networks = compiled_networks(bundle, precision=self.precision, policy=policy)
        if "regression" in self.compiled_networks:
            self.regression_fn = self.compiled_networks["regression"]
        if "denoiser" in self.compiled_networks:
            self.denoise_fn = self.compiled_networks["denoiser"]
        self.compiled = bool(self.compiled_networks)

    @classmethod
    def from_bundle(
        cls,
        path: str | os.PathLike[str],
        device: str | torch.device = "auto",
        use_compiled: bool | str = "auto",
        member_batch: int = 1,
        precision: str = "bundle",
    ) -> PrecipGenerator:
        """Load a bundle and build a generator.

        Parameters
        ----------
        path
            The bundle directory.
        device
            ``"auto"``, ``"cpu"`` or ``"cuda"``.
        use_compiled
            See :class:`PrecipGenerator`.
        member_batch
            See :class:`PrecipGenerator`.
        precision
            See :class:`PrecipGenerator`.

        Returns
        -------
        PrecipGenerator
            The generator.
        """
        return cls(
            load_bundle(path, resolve_device(device)),
            use_compiled=use_compiled,
            member_batch=member_batch,
            precision=precision,
        )

    def calibrates(self, output_calibration: bool | None = None) -> bool:
        """Whether :meth:`generate` applies the output calibration.

        Parameters
        ----------
        output_calibration
            ``None``: the bundle's default (off when it has no calibration);
            ``True``: on (a :class:`ConfigError` when the bundle has none);
            ``False``: off.

        Returns
        -------
        bool
            The resolved choice.
        """
        if output_calibration is None:
            return self.output_calibration is not None and self.output_calibration.default
        if output_calibration and self.output_calibration is None:
            raise ConfigError(
                f"output calibration asked for, but the bundle {self.bundle.path} has none "
                "(fit one with `precipdiff train calibrate CONFIG`)"
            )
        return bool(output_calibration)

    # ------------------------------------------------------------------ inputs
    def _predictor_array(
        self, predictors: Any, grid: LatLonGrid | None
    ) -> tuple[np.ndarray, LatLonGrid]:
        """Stack the manifest's predictors as ``(time, nvar, nlat, nlon)`` float32."""
        if hasattr(predictors, "data_vars"):  # an xarray Dataset (e.g. io.open_predictors)
            from precipdiff.io.readers import dataset_to_predictors

            predictors, ds_grid = dataset_to_predictors(predictors, self.manifest.variables)
            grid = ds_grid if grid is None else grid
        if not isinstance(predictors, Mapping):
            raise InputError(
                f"predictors must be a mapping name -> array, got {type(predictors).__name__}"
            )
        fields: list[np.ndarray] = []
        for spec in self.manifest.variables:
            vspec = _spec(spec)
            key = resolve_variable(list(predictors), vspec)
            arr = np.asarray(predictors[key], dtype=np.float32)
            if arr.ndim == 2:
                arr = arr[None]
            if arr.ndim != 3:
                raise InputError(
                    f"predictor {key!r} must be (time, lat, lon) or (lat, lon), "
                    f"got shape {arr.shape}"
                )
            check_finite(key, arr)
            check_range(vspec, arr)
            fields.append(arr)
        shapes = {f.shape for f in fields}
        if len(shapes) != 1:
            found = [f.shape for f in fields]
            names = self.manifest.variable_names()
            raise InputError(
                f"predictors have different shapes: {dict(zip(names, found, strict=True))}"
            )
        x = np.stack(fields, axis=1)
        src = grid if grid is not None else self.coarse_grid
        if grid is None and x.shape[-2:] != self.coarse_grid.shape:
            raise GridError(
                f"predictors are on a {x.shape[-2]}×{x.shape[-1]} grid but the bundle's coarse "
                f"grid is {self.coarse_grid.shape[0]}×{self.coarse_grid.shape[1]}; pass grid= "
                "(a LatLonGrid) so they can be remapped"
            )
        if x.shape[-2:] != src.shape:
            raise GridError(
                f"predictor arrays are {x.shape[-2]}×{x.shape[-1]} but grid= is "
                f"{src.shape[0]}×{src.shape[1]}"
            )
        return x, src

    def _to_coarse(self, x: np.ndarray, src: LatLonGrid) -> np.ndarray:
        if src == self.coarse_grid:
            return x
        key = (src.lat.tobytes() + src.lon.tobytes(), b"")
        rg = self._input_regridders.get(key)
        if rg is None:
            log_once(
                log,
                logging.INFO,
                f"remapping predictors on {src!r} to the bundle's coarse grid "
                f"{self.coarse_grid!r} (bilinear)",
            )
            try:
                rg = Regridder(src, self.coarse_grid, "bilinear")
            except GridError as exc:
                raise GridError(
                    f"predictors on {src!r} cannot be remapped to the bundle's coarse grid "
                    f"{self.coarse_grid!r}: {exc}"
                ) from exc
            self._input_regridders[key] = rg
        return rg(x)

    # -------------------------------------------------------------- stage 1
    def features_normalised(self, predictors: Any, grid: LatLonGrid | None = None) -> np.ndarray:
        """Regrid the predictors to the coarse grid, derive the features, normalise.

        Parameters
        ----------
        predictors
            Mapping name → ``(time, lat, lon)`` arrays, or an xarray Dataset.
        grid
            Grid of the predictors (default: the bundle's coarse grid).

        Returns
        -------
        numpy.ndarray
            ``(time, n_features, nlat_c, nlon_c)`` float32: the regression's input
            channels before any coarse static fields.
        """
        return self.features_from_coarse(self._coarse_variables(predictors, grid), "regression")

    def condition_features_normalised(
        self, predictors: Any, grid: LatLonGrid | None = None
    ) -> np.ndarray | None:
        """Compute the denoiser's feature channels on the coarse grid, normalised.

        What :meth:`sample_fine` takes as ``x_feat``: the regression's features
        (:meth:`features_normalised`) unless the bundle's denoiser reads its own
        (manifest ``condition.features``).

        Parameters
        ----------
        predictors
            Mapping name → ``(time, lat, lon)`` arrays, or an xarray Dataset.
        grid
            Grid of the predictors (default: the bundle's coarse grid).

        Returns
        -------
        numpy.ndarray or None
            ``(time, n_condition_features, nlat_c, nlon_c)`` float32; ``None`` when
            the denoiser reads no predictors.
        """
        if not self._cond_predictors:
            return None
        return self.features_from_coarse(self._coarse_variables(predictors, grid), "condition")

    def _coarse_variables(self, predictors: Any, grid: LatLonGrid | None) -> dict[str, np.ndarray]:
        """Regrid the predictors to the coarse grid: name → ``(time, nlat_c, nlon_c)``."""
        x, src = self._predictor_array(predictors, grid)
        x = self._to_coarse(x, src)
        return {n: x[:, i] for i, n in enumerate(self.manifest.variable_names())}

    def features_from_coarse(
        self, coarse: Mapping[str, np.ndarray], which: str = "regression"
    ) -> np.ndarray:
        """Compute and normalise feature channels from variables already on a coarse grid.

        No regridding: the fields may be on any grid (e.g. the region a denoiser was
        trained on).

        Parameters
        ----------
        coarse
            Variable name → ``(time, lat, lon)`` float arrays, in the bundle's units.
        which
            ``"regression"`` (the regression's input features) or ``"condition"``
            (the denoiser's, :attr:`condition_features`).

        Returns
        -------
        numpy.ndarray
            ``(time, n_features, lat, lon)`` float32.
        """
        if which == "regression":
            specs, mean, std = self.features, self._x_mean, self._x_std
        elif which == "condition":
            specs, mean, std = self.condition_features, self._c_mean, self._c_std
        else:
            raise ConfigError(f"which must be 'regression' or 'condition', got {which!r}")
        feats = compute_features(specs, coarse)
        return (feats - mean[None, :, None, None]) / std[None, :, None, None]

    @torch.inference_mode()
    def regress(self, predictors: Any, grid: LatLonGrid | None = None) -> np.ndarray:
        """Run the regression: coarse precipitation in normalised transformed space.

        Parameters
        ----------
        predictors
            Mapping name → ``(time, lat, lon)`` arrays, or an xarray Dataset.
        grid
            Grid of the predictors (default: the bundle's coarse grid).

        Returns
        -------
        numpy.ndarray
            ``(time, nlat_c, nlon_c)`` float32, normalised transformed space.
        """
        return self._regress_features(self.features_normalised(predictors, grid))

    def _regress_features(self, x: np.ndarray) -> np.ndarray:
        """Run the regression on normalised features ``(time, C, Hc, Wc)``."""
        if self._statics_coarse.shape[0]:
            st = np.broadcast_to(self._statics_coarse, (x.shape[0], *self._statics_coarse.shape))
            x = np.concatenate([x, st], axis=1)
        xt = torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32), device=self.device)
        # One time step per call: results never depend on how many steps are passed.
        with torch.inference_mode():
            out = [self.regression_fn(xt[i : i + 1])[:, 0] for i in range(xt.shape[0])]
        return torch.cat(out).cpu().numpy()

    def to_precip(self, y: np.ndarray) -> np.ndarray:
        """Map normalised transformed fields to precipitation in mm/day (>= 0).

        Parameters
        ----------
        y
            Array in normalised transformed space.

        Returns
        -------
        numpy.ndarray
            mm/day, float32.
        """
        return self.transform.inverse(
            (y * self._y_std + self._y_mean).astype(np.float32, copy=False)
        )

    # -------------------------------------------------------------- stage 2
    def _member_denoise(
        self,
        y_up: torch.Tensor,
        t_index: int,
        members: Sequence[int],
        seed: int,
        config: SamplerConfig,
        feats_up: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Sample members ``members`` of one time step (batched together).

        ``feats_up`` are the normalised features upsampled to the fine grid
        ``(C, Hf, Wf)`` for bundles whose condition includes them.
        """
        b = len(members)
        gens = member_generators(seed, [t_index] * b, members, self.device)
        up = y_up[None, None].expand(b, 1, *y_up.shape).contiguous()
        cond = add_condition_noise(up, self.manifest.sigma_c, gens)
        if feats_up is not None:
            cond = torch.cat([cond, feats_up[None].expand(b, *feats_up.shape)], dim=1)
        if self._statics_fine.shape[0]:
            st = self._statics_fine[None].expand(b, *self._statics_fine.shape)
            cond = torch.cat([cond, st], dim=1)
        if self._residual:
            # the residual's SDEdit start is zero (the condition itself); the clean
            # upsampled field, not its noised copy, is added back
            x = sample(self.denoise_fn, cond, config, gens, x_init=torch.zeros_like(up))
            return (x + up)[:, 0]
        return sample(self.denoise_fn, cond, config, gens, x_init=up)[:, 0]

    def sample_fine(
        self,
        y_c: np.ndarray,
        x_feat: np.ndarray | None = None,
        *,
        members: int = 1,
        seed: int = 0,
        sampler: SamplerConfig | None = None,
        time_offset: int = 0,
        member_offset: int = 0,
        progress: ProgressFn | None = None,
        upsampler: Regridder | None = None,
    ) -> np.ndarray:
        """Draw fine-grid members from given coarse fields (stage 2 alone).

        :meth:`generate` calls this with the regression's output; evaluations call
        it with other coarse fields (e.g. the observations' block mean).

        Parameters
        ----------
        y_c
            ``(time, nlat_c, nlon_c)`` coarse precipitation in normalised
            transformed space (the regression's output space).
        x_feat
            ``(time, n_features, nlat_c, nlon_c)``: the denoiser's normalised
            feature channels (:meth:`condition_features_normalised`); needed when
            the bundle's condition includes them.
        members
            Ensemble size.
        seed
            Random seed (member ``k`` of time ``t``: ``SeedSequence([seed,
            time_offset + t, member_offset + k])``).
        sampler
            Sampler settings (default: the bundle's).
        time_offset, member_offset
            Offsets of the time/member indices in the seed sequence.
        progress
            Called as ``progress(done, total)`` after each member batch.
        upsampler
            Coarse-to-fine regridder for fields on other grids than the bundle's
            (the fully convolutional denoiser runs on any grid, e.g. the patches a
            bundle was trained on); only for bundles without fine static fields.

        Returns
        -------
        numpy.ndarray
            ``(time, member, nlat_f, nlon_f)`` float32 in normalised transformed space.
        """
        config = sampler if sampler is not None else self.sampler
        if self._cond_predictors and x_feat is None:
            raise ConfigError(
                "this bundle's denoiser is conditioned on the predictors too: pass x_feat "
                "(condition_features_normalised())"
            )
        if self._cond_predictors:
            assert x_feat is not None
            want = [f.name for f in self.condition_features]
            if np.ndim(x_feat) != 4 or np.shape(x_feat)[1] != len(want):
                raise ConfigError(
                    f"x_feat must be (time, {len(want)}, nlat_c, nlon_c): the denoiser's feature "
                    f"channels {want} (condition_features_normalised()), got shape "
                    f"{np.shape(x_feat)}"
                )
        up_fn = self._upsample if upsampler is None else upsampler
        if upsampler is not None and self._statics_fine.shape[0]:
            raise ConfigError(
                "sample_fine(upsampler=...) samples on another grid, but this bundle's "
                "denoiser reads fine static fields of its own grid"
            )
        up = np.asarray(up_fn(np.asarray(y_c, np.float32)), np.float32)
        feats_up = (
            np.asarray(up_fn(np.asarray(x_feat, np.float32)), np.float32)
            if self._cond_predictors
            else None
        )
        nt = up.shape[0]
        out = np.empty((nt, members, *up.shape[-2:]), np.float32)
        total = nt * math.ceil(members / self.member_batch)
        done = 0
        with torch.inference_mode():
            for t in range(nt):
                y_up = torch.as_tensor(up[t], device=self.device)
                f_up = (
                    torch.as_tensor(feats_up[t], device=self.device)
                    if feats_up is not None
                    else None
                )
                for k0 in range(0, members, self.member_batch):
                    ks = list(range(k0, min(members, k0 + self.member_batch)))
                    x = self._member_denoise(
                        y_up,
                        time_offset + t,
                        [member_offset + k for k in ks],
                        int(seed),
                        config,
                        f_up,
                    )
                    out[t, ks[0] : ks[-1] + 1] = x.cpu().numpy()
                    done += 1
                    if progress is not None:
                        progress(done, total)
        return out

    def generate(
        self,
        predictors: Any,
        grid: LatLonGrid | None = None,
        members: int = 1,
        seed: int = 0,
        steps: int | None = None,
        conserve_mass: bool = False,
        units: str = "mm/day",
        *,
        sampler: SamplerConfig | None = None,
        time_offset: int = 0,
        member_offset: int = 0,
        progress: ProgressFn | None = None,
        output_calibration: bool | None = None,
        dates: Any = None,
        calendar: str | None = None,
    ) -> GenerationResult:
        """Generate a fine-grid precipitation ensemble.

        Parameters
        ----------
        predictors
            Mapping name → ``(time, lat, lon)`` (or ``(lat, lon)``) arrays named
            as in the manifest (or an alias: ERA5 ``q``/``u``/``v``/``msl``,
            CMIP6 ``hus``/``ua``/``va``/``psl``), or an xarray Dataset.
        grid
            Grid of the predictors; ``None`` means the bundle's coarse grid.
        members
            Ensemble size.
        seed
            Random seed; member ``k`` of time ``t`` uses
            ``SeedSequence([seed, time_offset + t, member_offset + k])``.
        steps
            Sampler steps (default: the bundle's sampler default).
        conserve_mass
            Make the conservative coarse-graining of each member equal the
            regression's coarse field.
        units
            ``"mm/day"`` or ``"kg m-2 s-1"``.
        sampler
            Full sampler settings overriding the bundle's defaults (``steps``
            still overrides its step count).
        time_offset, member_offset
            Offsets of the time/member indices in the seed sequence (e.g. the
            model step number when called every time step).
        progress
            Called as ``progress(done, total)`` after each member batch.
        output_calibration
            Apply the bundle's output calibration (``None``: as the bundle's
            manifest says; ``True`` fails when the bundle has none).
        dates
            ``time`` dates of the predictors (needed by an output calibration per
            month; taken from the Dataset's ``time`` when the predictors are one).
        calendar
            Calendar of ``dates`` that carry none.

        Returns
        -------
        GenerationResult
            ``fine (time, member, nlat_f, nlon_f)`` and ``coarse (time, nlat_c,
            nlon_c)``; ``result.to_dataset()`` gives an xarray Dataset with coordinates
            and CF attributes (the predictors' times when they were a Dataset).
        """
        if units not in UNITS:
            raise ConfigError(f"units must be one of {UNITS}, got {units!r}")
        if not isinstance(members, int) or members < 1:
            raise ConfigError(f"members must be a positive integer, got {members!r}")
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
        config = sampler if sampler is not None else self.sampler
        if steps is not None:
            config = config.replace(steps=steps)
        times = None
        if hasattr(predictors, "data_vars") and "time" in getattr(predictors, "coords", {}):
            times = np.asarray(predictors["time"].values)
        calibrate = self.calibrates(output_calibration)
        coarse_vars = self._coarse_variables(predictors, grid)
        x_feat = self.features_from_coarse(coarse_vars, "regression")
        y_c = self._regress_features(x_feat)
        x_cond: np.ndarray | None = None
        if self._cond_predictors:
            x_cond = (
                self.features_from_coarse(coarse_vars, "condition")
                if self._own_condition_features
                else x_feat
            )
        coarse = self.to_precip(y_c)
        fine = self.to_precip(
            self.sample_fine(
                y_c,
                x_cond,
                members=members,
                seed=int(seed),
                sampler=config,
                time_offset=time_offset,
                member_offset=member_offset,
                progress=progress,
            )
        )
        if calibrate:
            assert self.output_calibration is not None
            fine = self.output_calibration.apply(
                fine, dates if dates is not None else times, calendar
            )
        if conserve_mass:
            if self._mass is None:
                self._mass = MassConserver(self.fine_grid, self.coarse_grid)
            fine = self._mass(fine, coarse[:, None])
        if units == "kg m-2 s-1":
            fine = fine / np.float32(SECONDS_PER_DAY)
            coarse = coarse / np.float32(SECONDS_PER_DAY)
        return GenerationResult(
            fine=fine,
            coarse=coarse,
            units=units,
            fine_grid=self.fine_grid,
            coarse_grid=self.coarse_grid,
            seed=int(seed),
            sampler=config,
            conserve_mass=conserve_mass,
            attrs={
                "bundle": str(Path(self.bundle.path).resolve()),
                "sigma_c": self.manifest.sigma_c,
                "nfe_per_member": config.nfe,
                "compiled_networks": self.compiled,
                "compiled": sorted(self.compiled_networks),
                "precision": self.precision,
                "output_calibration": calibrate,
                "provenance": self.manifest.provenance,
                "bundle_hash": self.bundle_hash,
            },
            times=times,
            member_offset=int(member_offset),
        )
