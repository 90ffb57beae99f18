"""The inference engine a :class:`~precipdiff.server.plugin.Plugin` drives.

:class:`InferenceEngine` is the contract (predictor list, grids, ``generate`` one
window, online bias correction and its state); :class:`GeneratorEngine` is the
production engine over a bundle's :class:`~precipdiff.generator.PrecipGenerator`.
Tests and benchmarks inject other engines (``Plugin(..., engine=...)``).

Seeds: member ``k`` of window ``n`` draws its noise from
:func:`window_seed_sequence` ``(seed, n, k)`` only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from precipdiff.errors import ConfigError, InputError, PrecipDiffError

__all__ = [
    "GeneratorEngine",
    "InferenceEngine",
    "PredictorSpec",
    "predictor_spec",
    "window_seed_sequence",
]


@dataclass(frozen=True)
class PredictorSpec:
    """One predictor the bundle needs, as the plugin sees it.

    Parameters
    ----------
    name : str
        The bundle's variable name (the name the ESM passes to ``set_field`` for a
        2-D field already on the right pressure level), e.g. ``"hus850"``.
    level_hpa : float or None
        Pressure level in hPa, or None for single-level fields.
    aliases : tuple of str
        Other accepted names of the 2-D field (e.g. ERA5's ``"q850"``).
    base_names : tuple of str
        Names under which the ESM may pass the 3-D model-level field this
        predictor is interpolated from (e.g. ``("hus", "q")`` for ``"hus850"``).
    """

    name: str
    level_hpa: float | None = None
    aliases: tuple[str, ...] = ()
    base_names: tuple[str, ...] = ()


class InferenceEngine(Protocol):
    """What the plugin needs from the generator (see :class:`GeneratorEngine`)."""

    predictors: Sequence[PredictorSpec]
    coarse_lat: np.ndarray
    coarse_lon: np.ndarray
    fine_lat: np.ndarray
    fine_lon: np.ndarray
    bundle_id: str

    def generate(
        self,
        predictors: Mapping[str, np.ndarray],
        members: int,
        seed: int,
        window: int,
        steps: int | None,
        conserve_mass: bool,
    ) -> np.ndarray:
        """Generate ``(members, nlat_f, nlon_f)`` mm/day for one window.

        Member ``k`` of window ``window`` must draw its noise from
        ``SeedSequence([seed, window, k])`` only.
        """
        ...

    def bias_correct(self, predictors: dict[str, np.ndarray], date: Any) -> dict[str, np.ndarray]:
        """Apply the bundle's QDM tables to coarse-grid window means valid at ``date``."""
        ...

    def bias_state(self) -> dict[str, np.ndarray]:
        """Return the running bias-correction state as arrays (empty when none)."""
        ...

    def load_bias_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore the state returned by :meth:`bias_state`."""
        ...


def window_seed_sequence(seed: int, window: int, member: int) -> np.random.SeedSequence:
    """Return the seed sequence member ``member`` of window ``window`` draws from.

    This is :class:`~precipdiff.generator.PrecipGenerator`'s rule with the
    window index as time index (``time_offset``), so offline generation from the
    same window means with ``seed`` reproduces the online members.

    Parameters
    ----------
    seed : int
        The namelist's base seed.
    window : int
        Window index counted from model time 0.
    member : int
        0-based member index.

    Returns
    -------
    numpy.random.SeedSequence
        ``SeedSequence([seed, window, member])``.
    """
    return np.random.SeedSequence([seed, window, member])


class GeneratorEngine:
    """The production :class:`InferenceEngine`: a bundle's :class:`PrecipGenerator`.

    Parameters
    ----------
    generator : precipdiff.generator.PrecipGenerator
        The loaded generator.
    bias_correction : bool
        Whether the plugin will ask for QDM; requires tables in the bundle.
    qdm_mode : {"trailing", "static"}
        Projection distribution of online QDM (see :class:`precipdiff.qdm.OnlineQDM`).
    qdm_trailing_years : float
        Memory of the trailing projection distribution in years.
    samples_per_day : float
        Averaging windows per day.
    calendar : str, optional
        The ESM calendar.
    output_calibration : {"bundle", "on", "off"}
        Whether the bundle's output calibration is applied (``"bundle"``: as its
        manifest says).

    Raises
    ------
    ConfigError
        When bias correction or output calibration is asked for and the bundle
        holds no tables for it.
    """

    def __init__(
        self,
        generator: Any,
        bias_correction: bool = False,
        *,
        qdm_mode: str = "trailing",
        qdm_trailing_years: float = 20.0,
        samples_per_day: float = 1.0,
        calendar: str | None = None,
        output_calibration: str = "bundle",
    ) -> None:
        from precipdiff.bundle import bundle_hash

        self.generator = generator
        manifest = generator.manifest
        self.predictors: Sequence[PredictorSpec] = [predictor_spec(v) for v in manifest.variables]
        self.coarse_lat = np.asarray(generator.coarse_grid.lat, dtype=np.float64)
        self.coarse_lon = np.asarray(generator.coarse_grid.lon, dtype=np.float64)
        self.fine_lat = np.asarray(generator.fine_grid.lat, dtype=np.float64)
        self.fine_lon = np.asarray(generator.fine_grid.lon, dtype=np.float64)
        self.bundle_id = bundle_hash(manifest)
        #: The denoiser's inference precision (part of a restart's identity).
        self.precision = str(getattr(generator, "precision", "float32"))
        choice = {"bundle": None, "on": True, "off": False}.get(output_calibration, "bad")
        if choice == "bad":
            raise ConfigError(
                f"precipdiff_nml: output_calibration = {output_calibration!r} is not one of "
                "'bundle', 'on', 'off'"
            )
        try:
            #: Whether the bundle's output calibration is applied to every window.
            self.output_calibration = bool(generator.calibrates(choice))
        except ConfigError as exc:
            raise ConfigError(f"precipdiff_nml: output_calibration = 'on': {exc}") from exc
        cal = getattr(generator, "output_calibration", None)
        #: Whether :meth:`generate` needs the window's date (a calibration per month).
        self.needs_date = bool(self.output_calibration and cal is not None and cal.needs_dates)
        self.calendar = calendar
        self._qdm: Any = None
        if bias_correction:
            from precipdiff.qdm import OnlineQDM, QDMTables

            slot = manifest.bias_correction
            path = str(getattr(generator.bundle, "path", ""))
            if not slot:
                raise ConfigError(
                    f"precipdiff_nml: bias_correction = .true. but the bundle {path!r} holds no "
                    "QDM tables (fit them with `precipdiff qdm fit --bundle ...` or "
                    "precipdiff.offline.qdm_fit.fit_qdm and QDMTables.attach_to_bundle, or set "
                    "bias_correction = .false.)"
                )
            tables = QDMTables.from_manifest(slot, path)
            self._qdm = OnlineQDM(
                tables,
                trailing_years=qdm_trailing_years,
                samples_per_day=samples_per_day,
                mode="static" if qdm_mode == "static" else "trailing",
                calendar=calendar,
            )

    @classmethod
    def from_bundle(
        cls,
        path: str,
        device: str,
        *,
        precision: str = "bundle",
        use_compiled: str = "auto",
        **kwargs: Any,
    ) -> GeneratorEngine:
        """Load the bundle at ``path`` onto ``device``.

        Parameters
        ----------
        path : str
            Bundle directory.
        device : str
            Resolved torch device string (see :func:`resolve_device`).
        precision : str
            Denoiser precision (``"bundle"``, ``"float32"``, ``"bf16"``, ``"fp16"``).
        use_compiled : str
            ``"auto"``, ``"always"`` or ``"never"`` (namelist ``compiled_networks``).
        **kwargs
            Passed to :class:`GeneratorEngine` (``bias_correction``, ``qdm_mode``, ...).

        Returns
        -------
        GeneratorEngine
            The engine.

        Raises
        ------
        BundleError
            When the bundle is missing or corrupt (hash mismatch, bad manifest).
        """
        from precipdiff.bundle import find_bundle
        from precipdiff.errors import BundleError
        from precipdiff.generator import PrecipGenerator

        try:
            resolved = find_bundle(path)  # a path, or the name of a shipped bundle
        except BundleError as exc:
            raise BundleError(f"precipdiff_nml: bundle_path = {path!r}: {exc}") from exc
        if not resolved.exists():
            raise BundleError(f"precipdiff_nml: bundle_path = {path!r} does not exist")
        path = str(resolved)
        compiled: bool | str = {"always": True, "never": False}.get(use_compiled, use_compiled)
        try:
            gen = PrecipGenerator.from_bundle(
                path, device=device, precision=precision, use_compiled=compiled
            )
        except PrecipDiffError:
            raise
        except Exception as exc:  # torch/safetensors errors on damaged files
            raise BundleError(
                f"model bundle {path!r} could not be loaded: {type(exc).__name__}: {exc}"
            ) from exc
        return cls(gen, **kwargs)

    def generate(
        self,
        predictors: Mapping[str, np.ndarray],
        members: int,
        seed: int,
        window: int,
        steps: int | None,
        conserve_mass: bool,
        member_offset: int = 0,
        date: Any = None,
    ) -> np.ndarray:
        """Generate all members of one window (see :class:`InferenceEngine`).

        Parameters
        ----------
        predictors : Mapping[str, numpy.ndarray]
            ``(1, nlat_c, nlon_c)`` window means on the coarse grid.
        members : int
            Ensemble size.
        seed : int
            Base seed.
        window : int
            Window index, used as the generator's time index in the seed sequence.
        steps : int or None
            Sampler steps (None: bundle default).
        conserve_mass : bool
            Passed to the generator.
        member_offset : int
            Index of the first member (members ``member_offset .. member_offset +
            members - 1`` of the ensemble; their seeds do not depend on the offset split).
        date : cftime.datetime, optional
            Middle of the window; needed when :attr:`needs_date` (an output
            calibration per month).

        Returns
        -------
        numpy.ndarray
            ``(members, nlat_f, nlon_f)`` in mm/day.
        """
        res = self.generator.generate(
            dict(predictors),
            members=members,
            seed=seed,
            steps=steps,
            conserve_mass=conserve_mass,
            units="mm/day",
            time_offset=window,
            member_offset=member_offset,
            output_calibration=self.output_calibration,
            dates=None if date is None else [date],
            calendar=self.calendar,
        )
        return np.asarray(res.fine[0])

    def bias_correct(self, predictors: dict[str, np.ndarray], date: Any) -> dict[str, np.ndarray]:
        """Apply the bundle's QDM tables to the window means.

        Parameters
        ----------
        predictors : dict
            Coarse-grid window means ``(nlat_c, nlon_c)`` by variable name.
        date : cftime.datetime
            Middle of the window (selects the season of the tables).

        Returns
        -------
        dict
            Bias-corrected window means.
        """
        if self._qdm is None:
            raise ConfigError("bias correction was not enabled when this engine was built")
        out = self._qdm.apply(predictors, date)
        return {k: np.asarray(v) for k, v in out.items()}

    def bias_state(self) -> dict[str, np.ndarray]:
        """Return the online QDM state (trailing projection quantiles, buffer).

        Returns
        -------
        dict
            Arrays by key; empty without bias correction.
        """
        if self._qdm is None:
            return {}
        return {k: np.asarray(v) for k, v in self._qdm.state_dict().items()}

    def load_bias_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore the online QDM state.

        Parameters
        ----------
        state : Mapping[str, numpy.ndarray]
            Arrays from :meth:`bias_state`.
        """
        if self._qdm is None:
            if state:
                raise InputError(
                    "the restart file holds online QDM state but bias_correction = .false."
                )
            return
        self._qdm.load_state_dict(state)


def predictor_spec(v: Mapping[str, Any]) -> PredictorSpec:
    """Build a :class:`PredictorSpec` from a manifest variable dict."""
    level = v.get("level_hpa")
    bases: tuple[str, ...] = ()
    if level is not None:
        names = [*(v.get("base_aliases") or ()), str(v.get("standard_name") or "")]
        bases = tuple(dict.fromkeys(n for n in names if n))
    return PredictorSpec(
        name=str(v["name"]),
        level_hpa=None if level is None else float(level),
        aliases=tuple(v.get("aliases") or ()),
        base_names=bases,
    )
