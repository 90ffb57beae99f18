"""The Plugin object the C ABI drives: one per Fortran handle.

A :class:`Plugin` receives the ESM's instantaneous fields every timestep
(:meth:`Plugin.set_field`, then :meth:`Plugin.step`), accumulates them over the
averaging window, and when the window closes remaps the window means to the
bundle's coarse grid, optionally bias-corrects them (QDM), generates the
fine-grid precipitation ensemble and hands back one field (a member, the
ensemble mean or a member cycling with the window) on the fine grid and
conservatively remapped to the ESM grid.

Time convention
---------------
``model_time_s`` is the model time at the END of the step just computed
(seconds since the run's reference): the fields passed since the previous
:meth:`Plugin.step` are the state at that time, and ``dt_s`` is the step
length. A step covers ``(model_time_s - dt_s, model_time_s]``; window ``n``
covers ``(n * window_s, (n + 1) * window_s]`` and closes at the step whose
``model_time_s`` is ``(n + 1) * window_s``. With daily windows the mean of
day ``n`` averages the states at ``dt, 2 dt, ..., 86400 s`` of that day, as a
daily mean of an ESM's instantaneous output. Consecutive calls must continue
in time (``model_time_s`` equal to the previous one plus ``dt_s``).

Determinism
-----------
Member ``k`` of window ``n`` draws its noise from
``numpy.random.SeedSequence([seed, n, k])`` (the generator's rule with the window
index as time index), so results depend neither on where the run started, nor on
restarts, nor on the inference mode (``sync`` or ``lagged``), and offline
generation from the same window means reproduces them.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from precipdiff.errors import ConfigError, DeviceError, InputError, PrecipDiffError
from precipdiff.server.config import PluginConfig
from precipdiff.server.vertical import interp_log_pressure

MM_PER_DAY_TO_KG_M2_S = 1.0 / 86400.0
_TIME_TOL = 1e-6


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


def resolve_device(device: str, strict: bool) -> str:
    """Turn the namelist's device setting into a torch device string.

    Parameters
    ----------
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    strict : bool
        Raise instead of falling back to the CPU when CUDA is not available.

    Returns
    -------
    str
        ``"cpu"`` or a CUDA device string.

    Raises
    ------
    DeviceError
        When CUDA is asked for, is unavailable (or the index is out of range), and
        ``strict`` is True.
    """
    import torch

    if device == "cpu":
        return "cpu"
    have = torch.cuda.is_available()
    if device == "auto":
        # The node-local rank picks the GPU (cuda:k); CPU without CUDA.
        from precipdiff.server.placement import auto_device

        return auto_device() if have else "cpu"
    index = int(device.split(":")[1]) if ":" in device else 0
    count = torch.cuda.device_count() if have else 0
    if index < count:
        return device
    why = (
        "no CUDA device is available"
        if count == 0
        else f"only {count} CUDA device(s) are visible (CUDA_VISIBLE_DEVICES)"
    )
    if strict:
        raise DeviceError(f"precipdiff_nml: device = {device!r} but {why} (strict_device = .true.)")
    warnings.warn(
        f"precipdiff: device = {device!r} but {why}; running on the CPU "
        "(set strict_device = .true. to make this an error)",
        RuntimeWarning,
        stacklevel=2,
    )
    return "cpu"


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


def detect_rank() -> int:
    """Return this process's MPI rank from the launcher's environment (0 if none).

    Returns
    -------
    int
        The rank read from Open MPI, MPICH/PMI or Slurm variables.
    """
    for var in ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID"):
        val = os.environ.get(var)
        if val is not None and val.strip().isdigit():
            return int(val)
    return 0


def inference_auto_device(member_comm: Any) -> str:
    """Resolve ``device = 'auto'`` for an inference rank of the per-node MPI mode.

    Collective over ``member_comm``: the inference ranks on one node are numbered
    0, 1, ... (``MPI_Comm_split_type`` SHARED) and rank ``i`` takes
    ``cuda:(i mod visible GPUs)`` (:func:`precipdiff.server.placement.auto_device`), so
    inference ranks forced onto one node use different GPUs; CPU without CUDA.

    Parameters
    ----------
    member_comm : mpi4py.MPI.Comm
        Communicator of the inference ranks.

    Returns
    -------
    str
        Torch device string.
    """
    import torch
    from mpi4py import MPI

    from precipdiff.server.placement import auto_device

    node = member_comm.Split_type(MPI.COMM_TYPE_SHARED, key=member_comm.Get_rank())
    try:
        index = int(node.Get_rank())
    finally:
        node.Free()
    return auto_device(local_rank=index) if torch.cuda.is_available() else "cpu"


def member_block(members: int, parts: int, index: int) -> tuple[int, int]:
    """Contiguous block ``[lo, hi)`` of ``members`` that part ``index`` of ``parts`` generates.

    Parameters
    ----------
    members : int
        Ensemble size.
    parts : int
        Number of inference ranks sharing the ensemble.
    index : int
        0-based index of this rank among them.

    Returns
    -------
    tuple of int
        ``(lo, hi)``; the first ``members % parts`` parts get one member more, and the
        blocks in index order cover ``0..members-1`` (some are empty when
        ``parts > members``).
    """
    base, extra = divmod(members, parts)
    lo = index * base + min(index, extra)
    return lo, lo + base + (1 if index < extra else 0)


class Plugin:
    """Embedded-server plugin: accumulate, remap, generate, hand back.

    Parameters
    ----------
    config : PluginConfig
        Validated namelist settings.
    lon, lat : numpy.ndarray
        The ESM grid's 1-D longitudes (nlon) and latitudes (nlat) in degrees. With
        ``weights_to_bundle`` the grid may be unstructured: then ``nlat * nlon``
        must equal the weight file's source size and ``lon``/``lat`` only give
        the shape.
    engine : InferenceEngine
        The model (normally :class:`GeneratorEngine` built from the bundle).
    rank : int, optional
        This process's MPI rank (with ``output_rank >= 0`` only that rank writes the output
        stream); detected from the environment when omitted.
    member_comm : mpi4py.MPI.Comm, optional
        Communicator of the inference ranks that share the ensemble (the MPI layer's
        per-node mode, docs/scaling.md). Every rank of it runs an identical plugin on the
        same fields; rank ``j`` generates the contiguous member block
        :func:`member_block` ``(members, size, j)`` (engine ``generate`` called with
        ``member_offset``), and the blocks are exchanged in member order, so every rank
        then holds the ensemble of a single-rank run bit for bit. Only its rank 0 writes
        the output stream and restart files. None (default): this plugin generates
        every member.
    """

    def __init__(
        self,
        config: PluginConfig,
        lon: np.ndarray,
        lat: np.ndarray,
        engine: InferenceEngine,
        rank: int | None = None,
        member_comm: Any = None,
    ) -> None:
        from precipdiff.server.output import OutputStream

        self.config = config
        self.engine = engine
        self.rank = detect_rank() if rank is None else int(rank)
        self._member_comm = member_comm
        self._member_rank = 0 if member_comm is None else int(member_comm.Get_rank())
        self._member_size = 1 if member_comm is None else int(member_comm.Get_size())
        if member_comm is not None and config.output_rank not in (-1, 0):
            raise ConfigError(
                f"precipdiff_nml: output_rank = {config.output_rank} with members split across "
                f"{self._member_size} inference ranks: the first inference rank (rank 0) "
                "writes the output stream; set output_rank = -1 or 0"
            )
        self._lon = _coords("lon", lon)
        self._lat = _coords("lat", lat)
        self.model_shape: tuple[int, int] = (self._lat.size, self._lon.size)
        self.fine_lat = np.asarray(engine.fine_lat, dtype=np.float64)
        self.fine_lon = np.asarray(engine.fine_lon, dtype=np.float64)
        self.fine_shape: tuple[int, int] = (self.fine_lat.size, self.fine_lon.size)

        self._specs = list(engine.predictors)
        self.required_fields: list[str] = [s.name for s in self._specs]
        # Accepted names: canonical names and aliases (2-D), base names (3-D).
        self._alias: dict[str, str] = {}
        for s in self._specs:
            for a in (*s.aliases, s.name):
                self._alias[a] = s.name
        self._by3d: dict[str, list[PredictorSpec]] = {}
        for s in self._specs:
            if s.level_hpa is None:
                continue
            for b in s.base_names:
                if b not in self._alias:
                    self._by3d.setdefault(b, []).append(s)
        self._levels3d = {
            b: np.array([s.level_hpa for s in specs], dtype=np.float64) * 100.0
            for b, specs in self._by3d.items()
        }

        self._to_coarse, self._to_model = _build_regridders(
            config, self._lon, self._lat, engine, self.fine_shape
        )

        # Accumulator: float64 sums on the ESM grid, updated in place each step.
        self._sum = {n: np.zeros(self.model_shape, dtype=np.float64) for n in self.required_fields}
        self._count = dict.fromkeys(self.required_fields, 0)
        self._set_this_step: set[str] = set()
        self._steps_in_window = 0
        self._window: int | None = None
        self._next_time: float | None = None

        # Results: all members of the last published window (mm/day), the field
        # handed back on both grids (output units).
        self._members: np.ndarray | None = None
        self._ready_window = -1
        self._out_fine = np.zeros(self.fine_shape, dtype=np.float64)
        self._out_model = np.zeros(self.model_shape, dtype=np.float64)
        self._pending: tuple[int, Future[np.ndarray] | np.ndarray] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False

        self._stream: OutputStream | None = None
        writes = self._member_rank == 0 if member_comm is not None else True
        if config.output_dir and writes and config.output_rank in (-1, self.rank):
            self._stream = OutputStream(config, self.fine_lat, self.fine_lon, engine.bundle_id)

    # ------------------------------------------------------------------ setup
    @classmethod
    def from_namelist(
        cls,
        nml_path: str,
        lon: np.ndarray,
        lat: np.ndarray,
        *,
        rank: int | None = None,
        engine: InferenceEngine | None = None,
        member_comm: Any = None,
    ) -> Plugin:
        """Build a plugin from a namelist file and the ESM grid.

        Parameters
        ----------
        nml_path : str
            File holding ``&precipdiff_nml``.
        lon, lat : numpy.ndarray
            ESM grid coordinates (degrees), 1-D.
        rank : int, optional
            MPI rank of this process (detected from the environment if omitted).
        engine : InferenceEngine, optional
            Use this engine instead of loading ``bundle_path`` (tests, tools).
        member_comm : mpi4py.MPI.Comm, optional
            Split the members across the ranks of this communicator (see :class:`Plugin`).

        Returns
        -------
        Plugin
            The ready plugin.

        Raises
        ------
        PrecipDiffError
            ``ConfigError`` for a bad namelist, ``BundleError`` for a missing or
            corrupt bundle, ``DeviceError``, ``GridError`` for grids that cannot be
            remapped.
        """
        config = PluginConfig.from_namelist(nml_path)
        if config.torch_threads > 0:
            import torch

            torch.set_num_threads(config.torch_threads)
        if engine is None:
            if member_comm is not None and config.device == "auto":
                device = inference_auto_device(member_comm)
            else:
                device = resolve_device(config.device, config.strict_device)
            engine = GeneratorEngine.from_bundle(
                config.bundle_path,
                device=device,
                bias_correction=config.bias_correction,
                qdm_mode=config.qdm_mode,
                qdm_trailing_years=config.qdm_trailing_years,
                samples_per_day=86400.0 / config.window_s,
                calendar=config.calendar,
            )
        return cls(config, lon, lat, engine, rank=rank, member_comm=member_comm)

    # --------------------------------------------------------------- per step
    def set_field(self, name: str, values: np.ndarray, pressure: np.ndarray | None = None) -> None:
        """Add one instantaneous field of the current timestep to the accumulator.

        Parameters
        ----------
        name : str
            A name from :attr:`required_fields` (2-D, on the bundle's level), or
            the base name of a 3-D field (see :attr:`fields_3d`).
        values : numpy.ndarray
            ``(nlat, nlon)``, or ``(nlev, nlat, nlon)`` with ``pressure``;
            float32 or float64. Not retained.
        pressure : numpy.ndarray, optional
            Layer pressures in Pa, same shape as a 3-D ``values``.

        Raises
        ------
        InputError
            Unknown name, wrong shape, missing pressure, a field set twice in one
            step, or a 3-D level below ground under ``below_ground = 'error'``.
        """
        self._check_open()
        if pressure is None:
            if name not in self._alias:
                raise InputError(self._unknown_field_message(name, three_d=False))
            name = self._alias[name]
            if values.shape != self.model_shape:
                raise InputError(
                    f"field {name!r}: shape {values.shape} does not match the ESM grid "
                    f"(nlat, nlon) = {self.model_shape}"
                    + ("; a 3-D field needs its layer pressures" if values.ndim == 3 else "")
                )
            self._mark(name)
            acc = self._sum[name]
            np.add(acc, values, out=acc)
            self._count[name] += 1
            return
        specs = self._by3d.get(name)
        if specs is None:
            raise InputError(self._unknown_field_message(name, three_d=True))
        if values.ndim != 3 or values.shape[1:] != self.model_shape:
            raise InputError(
                f"field {name!r}: a 3-D field must have shape (nlev, nlat, nlon) with "
                f"(nlat, nlon) = {self.model_shape}, got {values.shape}"
            )
        for s in specs:
            self._mark(s.name)
        interp = interp_log_pressure(
            name,
            values,
            pressure,
            self._levels3d[name],
            self.config.below_ground,  # type: ignore[arg-type]
        )
        for i, s in enumerate(specs):
            acc = self._sum[s.name]
            np.add(acc, interp[i], out=acc)
            self._count[s.name] += 1

    def step(self, model_time_s: float, dt_s: float) -> bool:
        """Advance one ESM timestep; close the window when its end is reached.

        Parameters
        ----------
        model_time_s : float
            Model time at the END of this step (the time the fields just set are
            valid at), seconds since the run's reference; the first step of a run
            from the reference has ``model_time_s = dt_s``.
        dt_s : float
            Timestep length in seconds; must divide ``window_s``.

        Returns
        -------
        bool
            True when a new result is ready (:meth:`output_fine`,
            :meth:`output_model`).

        Raises
        ------
        InputError
            Bad time or timestep, time that skips or goes backwards, a step
            straddling a window boundary, a field missing at window close,
            non-finite window means.
        PrecipDiffError
            Inference failures (``DeviceError`` for GPU out-of-memory).
        """
        self._check_open()
        t_end = float(model_time_s)
        dt = float(dt_s)
        w = self.config.window_s
        if not (math.isfinite(dt) and dt > 0.0):
            raise InputError(f"dt_s = {dt_s} must be a positive number of seconds")
        tol = _TIME_TOL * max(1.0, dt)
        if not (math.isfinite(t_end) and t_end >= dt - tol):
            raise InputError(
                f"model_time_s = {model_time_s} is the time at the END of the step (seconds "
                f"since the run's reference) and must be >= dt_s = {dt:g}"
            )
        ratio = w / dt
        if abs(ratio - round(ratio)) > 1e-9 * max(1.0, ratio):
            raise InputError(
                f"timestep dt_s = {dt:g} s does not divide the averaging window window_s = {w:g} s"
            )
        t = t_end - dt  # start of the step
        if self._next_time is not None and abs(t - self._next_time) > tol:
            expected = self._next_time + dt
            verb = "went backwards" if t < self._next_time else "skipped ahead"
            raise InputError(
                f"model time {verb}: expected model_time_s = {expected:.6f} s (previous "
                f"model_time_s + dt_s), got {t_end:.6f} s"
            )
        n = math.floor(t / w + 1e-9)
        end = t_end / w
        closes = abs(end - round(end)) <= 1e-9 * max(1.0, end)
        if not closes and math.floor(end - 1e-9) != n:
            raise InputError(
                f"step from {t:g} s to {t_end:g} s straddles the window boundary at "
                f"{(n + 1) * w:g} s; model times must be multiples of dt_s = {dt:g} s"
            )
        if self._window is None:
            self._window = n
        self._set_this_step.clear()
        self._steps_in_window += 1
        self._next_time = t_end
        if not closes:
            return False
        return self._close_window(self._window)

    def output_fine(self) -> np.ndarray:
        """Return the handed-back field on the bundle's fine grid.

        Returns
        -------
        numpy.ndarray
            ``(nlat_f, nlon_f)`` float64 in ``output_units``; read-only view that
            is overwritten at the next ready step (zeros before the first).
        """
        v = self._out_fine.view()
        v.flags.writeable = False
        return v

    def output_model(self) -> np.ndarray:
        """Return the handed-back field conservatively remapped to the ESM grid.

        Returns
        -------
        numpy.ndarray
            ``(nlat, nlon)`` float64 in ``output_units``; read-only view.
        """
        v = self._out_model.view()
        v.flags.writeable = False
        return v

    def output_members(self) -> np.ndarray:
        """Return every member of the last ready window on the fine grid.

        Returns
        -------
        numpy.ndarray
            ``(members, nlat_f, nlon_f)`` float64 in ``output_units``.

        Raises
        ------
        InputError
            When no window has been ready yet.
        """
        if self._members is None:
            raise InputError("output_members: no window has closed with a result yet")
        return self._members * self._unit_factor()

    @property
    def ready_window(self) -> int:
        """Index of the window whose result is currently handed back (-1: none)."""
        return self._ready_window

    @property
    def fields_3d(self) -> dict[str, list[float]]:
        """Base names of accepted 3-D fields and the hPa levels taken from each."""
        return {b: [float(s.level_hpa or 0.0) for s in specs] for b, specs in self._by3d.items()}

    # ----------------------------------------------------------- close window
    def _close_window(self, n: int) -> bool:
        missing = [name for name in self.required_fields if self._count[name] == 0]
        if missing:
            raise InputError(
                f"window {n} closed at model time {self._next_time:g} s without field(s) "
                f"{', '.join(missing)}: call set_field for every required field "
                f"({', '.join(self.required_fields)}) each timestep"
            )
        predictors: dict[str, np.ndarray] = {}
        for name in self.required_fields:
            mean = self._sum[name] / self._count[name]
            bad = ~np.isfinite(mean)
            if bad.any():
                j, i = np.argwhere(bad)[0]
                raise InputError(
                    f"window {n}: field {name!r} has {int(bad.sum())} non-finite window-mean "
                    f"values (first at lat index {j}, lon index {i})"
                )
            # The remap is linear, so remapping the window mean once equals the
            # mean of the remapped instantaneous fields.
            predictors[name] = self._to_coarse(mean)
        if self.config.bias_correction:
            predictors = self.engine.bias_correct(predictors, self._window_date(n))
        for acc in self._sum.values():
            acc.fill(0.0)
        self._count = dict.fromkeys(self.required_fields, 0)
        self._steps_in_window = 0
        self._window = n + 1
        batch = {k: v[None].astype(np.float32) for k, v in predictors.items()}
        if self.config.inference == "sync":
            if self._member_comm is None:
                self._publish(n, self._infer(n, batch))
            else:
                self._publish(n, self._exchange(n, lambda: self._infer(n, batch)))
            return True
        previous = self._pending
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="precipdiff")
        self._pending = (n, self._executor.submit(self._infer, n, batch))
        if previous is None:
            return False
        self._publish(previous[0], self._resolve_pending(previous))
        return True

    def _resolve_pending(self, pending: tuple[int, Future[np.ndarray] | np.ndarray]) -> np.ndarray:
        """All members of a pending window (exchanged across ``member_comm`` when split)."""
        n, value = pending
        if self._member_comm is None or (
            isinstance(value, np.ndarray) and value.shape[0] == self.config.members
        ):
            return _resolve(value)
        return self._exchange(n, lambda: _resolve(value))

    def _exchange(self, n: int, local: Callable[[], np.ndarray]) -> np.ndarray:
        """Gather every rank's member block over ``member_comm``, in member order.

        Every rank reaches the one ``allgather`` whether its own block succeeded or not
        (MPI calls stay on the calling thread, never in the lagged worker), so a failure
        on one inference rank is raised on all of them and none waits forever.
        """
        comm = self._member_comm
        block: np.ndarray | None = None
        failure: BaseException | None = None
        try:
            block = local()
        except Exception as exc:
            failure = exc
        err = None if failure is None else (type(failure).__name__, str(failure))
        parts = comm.allgather((block, err))
        if failure is not None:
            raise failure
        for j, (_, e) in enumerate(parts):
            if e is not None:
                # The failing rank's error class (so e.g. a GPU out-of-memory keeps its code).
                import precipdiff.errors as errs

                cls = getattr(errs, e[0], None)
                if not (isinstance(cls, type) and issubclass(cls, PrecipDiffError)):
                    cls = PrecipDiffError
                raise cls(f"inference rank {j} (members split across ranks): {e[1]}")
        return np.concatenate([np.asarray(b) for b, _ in parts], axis=0)

    def _window_date(self, n: int) -> Any:
        """Date (in the ESM calendar) of the middle of window ``n``."""
        from precipdiff.calendars import model_time_to_date

        c = self.config
        return model_time_to_date((n + 0.5) * c.window_s, c.reference_time, c.calendar)

    def _infer(self, n: int, batch: dict[str, np.ndarray]) -> np.ndarray:
        c = self.config
        lo, hi = member_block(c.members, self._member_size, self._member_rank)
        if hi <= lo:
            return np.zeros((0, *self.fine_shape), dtype=np.float64)
        try:
            if self._member_comm is None:
                out = self.engine.generate(
                    batch, c.members, c.seed, n, c.sampler_steps or None, c.conserve_mass
                )
            else:
                out = self.engine.generate(  # type: ignore[call-arg]
                    batch,
                    hi - lo,
                    c.seed,
                    n,
                    c.sampler_steps or None,
                    c.conserve_mass,
                    member_offset=lo,
                )
        except PrecipDiffError:
            raise
        except Exception as exc:
            if type(exc).__name__ == "OutOfMemoryError":
                raise DeviceError(
                    f"GPU out of memory generating window {n} ({self.config.members} members on "
                    f"a {self.fine_shape} grid): lower members or use device = 'cpu'"
                ) from exc
            raise PrecipDiffError(
                f"inference failed for window {n}: {type(exc).__name__}: {exc}"
            ) from exc
        arr = np.asarray(out, dtype=np.float64)
        expected = (hi - lo, *self.fine_shape)
        if arr.shape != expected:
            raise PrecipDiffError(
                f"inference for window {n} returned shape {arr.shape}, expected {expected}"
            )
        return arr

    def _publish(self, n: int, members_mm: np.ndarray) -> None:
        cfg = self.config
        if cfg.return_mode == "mean":
            sel = members_mm.mean(axis=0)
        elif cfg.return_mode == "cycle":
            sel = members_mm[n % cfg.members]
        else:
            sel = members_mm[cfg.return_member - 1]
        f = self._unit_factor()
        self._members = members_mm
        self._ready_window = n
        np.multiply(sel, f, out=self._out_fine)
        self._out_model[...] = self._to_model(self._out_fine)
        if self._stream is not None:
            self._stream.write(n, members_mm)

    def _unit_factor(self) -> float:
        return MM_PER_DAY_TO_KG_M2_S if self.config.output_units == "kg m-2 s-1" else 1.0

    # ---------------------------------------------------------------- restart
    def write_restart(self, path: str) -> None:
        """Write the plugin's state to a netCDF restart file.

        Holds the accumulator, the window/time position (which fixes the random
        state: seeds derive from the window index), the pending result of the
        lagged mode, the result currently handed back and the running state of
        online bias correction.

        Parameters
        ----------
        path : str
            Restart file to (over)write.
        """
        from precipdiff.server.restart import RestartState, write_restart_file

        self._check_open()
        pending_window = -1
        pending = None
        if self._pending is not None:
            pending_window = self._pending[0]
            pending = self._resolve_pending(self._pending)
            self._pending = (pending_window, pending)
        state = RestartState(
            sums=self._sum,
            counts=self._count,
            steps_in_window=self._steps_in_window,
            window=-1 if self._window is None else self._window,
            next_time=math.nan if self._next_time is None else self._next_time,
            ready_window=self._ready_window,
            members=self._members,
            pending_window=pending_window,
            pending=pending,
            bias_state=self.engine.bias_state(),
        )
        if self._member_rank != 0:
            return  # split members: the first inference rank writes the file
        write_restart_file(path, state, self._restart_identity())

    def read_restart(self, path: str) -> None:
        """Restore the state written by :meth:`write_restart`.

        Parameters
        ----------
        path : str
            Restart file.

        Raises
        ------
        InputError
            When the file is missing, unreadable, or was written by a plugin with
            a different bundle, seed, members, window or grid.
        """
        from precipdiff.server.restart import read_restart_file

        self._check_open()
        state = read_restart_file(path, self._restart_identity(), self.model_shape)
        if state.pending is not None and self.config.inference != "lagged":
            raise InputError(
                f"restart file {path!r} holds the pending result of window "
                f"{state.pending_window} from a run with inference = 'lagged'; continue "
                "this run with inference = 'lagged' (switch at a restart written by a sync run)"
            )
        self.engine.load_bias_state(state.bias_state)
        for name in self.required_fields:
            self._sum[name][...] = state.sums[name]
        self._count = {name: int(state.counts[name]) for name in self.required_fields}
        self._steps_in_window = state.steps_in_window
        self._window = None if state.window < 0 else state.window
        self._next_time = None if math.isnan(state.next_time) else state.next_time
        self._set_this_step.clear()
        self._pending = (state.pending_window, state.pending) if state.pending is not None else None
        self._members = None
        self._ready_window = -1
        self._out_fine.fill(0.0)
        self._out_model.fill(0.0)
        if state.members is not None:
            # Restore the handed-back field without writing it to the stream again.
            stream, self._stream = self._stream, None
            try:
                self._publish(state.ready_window, state.members)
            finally:
                self._stream = stream

    def _restart_identity(self) -> dict[str, Any]:
        c = self.config
        return {
            "bundle_id": self.engine.bundle_id,
            "seed": c.seed,
            "members": c.members,
            "window_s": c.window_s,
            "fields": ",".join(self.required_fields),
            "model_shape": f"{self.model_shape[0]}x{self.model_shape[1]}",
            "fine_shape": f"{self.fine_shape[0]}x{self.fine_shape[1]}",
        }

    # ------------------------------------------------------------------ close
    def close(self) -> None:
        """Finish pending work, close the output stream and release resources.

        Idempotent. A pending lagged result is completed and written to the
        output stream (it is not handed back: the ESM has stopped stepping).
        """
        if self._closed:
            return
        self._closed = True
        try:
            if self._pending is not None:
                n, fut = self._pending
                self._pending = None
                result = _resolve(fut)
                if self._stream is not None:
                    self._stream.write(n, result)
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None
            if self._stream is not None:
                self._stream.close()
                self._stream = None

    def __enter__(self) -> Plugin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- helpers
    def _mark(self, name: str) -> None:
        if name in self._set_this_step:
            raise InputError(
                f"field {name!r} was set twice in the same timestep (call step() between)"
            )
        self._set_this_step.add(name)

    def _check_open(self) -> None:
        if self._closed:
            raise InputError("this precipdiff plugin was closed (precipdiff_finalize called)")

    def _unknown_field_message(self, name: str, three_d: bool) -> str:
        msg = f"unknown field {name!r}: the bundle needs {', '.join(self.required_fields)}"
        if self._by3d:
            msg += (
                f"; 3-D fields on model levels (with pressure) are accepted as "
                f"{', '.join(self._by3d)}"
            )
        if three_d and name in self._alias:
            msg += f" ({name!r} is a 2-D field: pass it without pressure)"
        return msg


def _resolve(pending: Future[np.ndarray] | np.ndarray) -> np.ndarray:
    if isinstance(pending, np.ndarray):
        return pending
    return pending.result()


def _coords(name: str, values: np.ndarray) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size < 1:
        raise InputError(f"ESM grid {name} must be a non-empty 1-D array, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"ESM grid {name} has non-finite values")
    return arr


def _build_regridders(
    config: PluginConfig,
    lon: np.ndarray,
    lat: np.ndarray,
    engine: InferenceEngine,
    fine_shape: tuple[int, int],
) -> tuple[Any, Any]:
    """Return (model -> coarse, fine -> model) callables on 2-D arrays."""
    from precipdiff.grids import LatLonGrid, Regridder

    model_shape = (lat.size, lon.size)
    coarse = LatLonGrid(lat=np.asarray(engine.coarse_lat), lon=np.asarray(engine.coarse_lon))
    fine = LatLonGrid(lat=np.asarray(engine.fine_lat), lon=np.asarray(engine.fine_lon))
    model: LatLonGrid | None = None
    if not (config.weights_to_bundle and config.weights_to_model):
        model = LatLonGrid(lat=lat, lon=lon)

    if config.weights_to_bundle:
        _check_file("weights_to_bundle", config.weights_to_bundle)
        to_coarse: Callable[[np.ndarray], np.ndarray] = _FlatRegridder(
            Regridder.from_scrip(config.weights_to_bundle), model_shape, coarse.shape
        )
    else:
        assert model is not None
        method: Literal["bilinear", "conservative"] = (
            "bilinear" if config.remap_method == "bilinear" else "conservative"
        )
        to_coarse = Regridder(model, coarse, method=method)
    if config.weights_to_model:
        _check_file("weights_to_model", config.weights_to_model)
        to_model: Callable[[np.ndarray], np.ndarray] = _FlatRegridder(
            Regridder.from_scrip(config.weights_to_model), fine_shape, model_shape
        )
    else:
        assert model is not None
        to_model = Regridder(fine, model, method="conservative")
    return to_coarse, to_model


class _FlatRegridder:
    """Apply a SCRIP regridder to 2-D arrays whose memory is the flat grid."""

    def __init__(self, regridder: Any, src_shape: tuple[int, int], dst_shape: tuple[int, int]):
        self.regridder = regridder
        self.src_shape = src_shape
        self.dst_shape = dst_shape

    def __call__(self, field: np.ndarray) -> np.ndarray:
        src = getattr(self.regridder, "src_shape", None)
        x = field.reshape(src) if src is not None else field
        try:
            y = np.asarray(self.regridder(x))
        except PrecipDiffError:
            raise
        except Exception as exc:
            raise InputError(
                f"SCRIP weights do not fit a field of shape {field.shape}: {exc}"
            ) from exc
        if y.size != self.dst_shape[0] * self.dst_shape[1]:
            raise InputError(
                f"SCRIP weights produce {y.size} points, the destination grid has "
                f"{self.dst_shape[0]}x{self.dst_shape[1]}"
            )
        return y.reshape(self.dst_shape)


def _check_file(key: str, path: str) -> None:
    if not Path(path).is_file():
        raise ConfigError(f"precipdiff_nml: {key} = {path!r} does not exist")


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

    Raises
    ------
    ConfigError
        When bias correction is asked for and the bundle holds no QDM tables.
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
    ) -> None:
        import hashlib
        import json

        self.generator = generator
        manifest = generator.manifest
        self.predictors: Sequence[PredictorSpec] = [_predictor_spec(v) for v in manifest.variables]
        self.coarse_lat = np.asarray(generator.coarse_grid.lat, dtype=np.float64)
        self.coarse_lon = np.asarray(generator.coarse_grid.lon, dtype=np.float64)
        self.fine_lat = np.asarray(generator.fine_grid.lat, dtype=np.float64)
        self.fine_lon = np.asarray(generator.fine_grid.lon, dtype=np.float64)
        text = json.dumps(manifest.to_dict(), sort_keys=True, default=str)
        self.bundle_id = "sha256:" + hashlib.sha256(text.encode()).hexdigest()
        self._qdm: Any = None
        if bias_correction:
            from precipdiff.qdm import OnlineQDM, QDMTables

            slot = manifest.bias_correction
            path = str(getattr(generator.bundle, "path", ""))
            if not slot:
                raise ConfigError(
                    f"precipdiff_nml: bias_correction = .true. but the bundle {path!r} holds no "
                    "QDM tables (fit them with precipdiff.qdm.fit_qdm and attach them with "
                    "QDMTables.attach_to_bundle, or set bias_correction = .false.)"
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
    def from_bundle(cls, path: str, device: str, **kwargs: Any) -> GeneratorEngine:
        """Load the bundle at ``path`` onto ``device``.

        Parameters
        ----------
        path : str
            Bundle directory.
        device : str
            Resolved torch device string (see :func:`resolve_device`).
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
        from precipdiff.errors import BundleError
        from precipdiff.generator import PrecipGenerator

        if not Path(path).exists():
            raise BundleError(f"precipdiff_nml: bundle_path = {path!r} does not exist")
        try:
            gen = PrecipGenerator.from_bundle(path, device=device)
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


def _predictor_spec(v: Mapping[str, Any]) -> PredictorSpec:
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
