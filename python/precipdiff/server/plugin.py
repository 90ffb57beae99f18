"""The Plugin object the C ABI drives: one per Fortran handle.

A :class:`Plugin` receives the ESM's instantaneous fields every timestep
(:meth:`Plugin.set_field`, then :meth:`Plugin.step`), accumulates them over the
averaging window, and when the window closes remaps the window means to the
bundle's coarse grid, optionally bias-corrects them (QDM), generates the
fine-grid precipitation ensemble and hands back one field (a member, the
ensemble mean or a member cycling with the window) on the fine grid and
conservatively remapped to the ESM grid.

Pieces: :mod:`~precipdiff.server.clock` (model time -> windows; the time
convention is documented there), :mod:`~precipdiff.server.accumulator` (window
sums), :mod:`~precipdiff.server.remap` (grids), :mod:`~precipdiff.server.engine`
(the generator), :mod:`~precipdiff.server.placement` (member blocks across
inference ranks), :mod:`~precipdiff.server.output` and
:mod:`~precipdiff.server.restart`.

Determinism
-----------
Member ``k`` of window ``n`` draws its noise from
``numpy.random.SeedSequence([seed, n, k])`` (the generator's rule with the window
index as time index), so results depend neither on where the run started, nor on
restarts, nor on the inference mode (``sync`` or ``lagged``), and offline
generation from the same window means reproduces them.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from precipdiff.device import resolve_device, world_rank
from precipdiff.errors import ConfigError, DeviceError, InputError, PrecipDiffError
from precipdiff.perf.fpenv import flush_denormals
from precipdiff.perf.process import ProcessReport, ProcessSettings, configure
from precipdiff.server.accumulator import FieldAccumulator
from precipdiff.server.clock import WindowClock
from precipdiff.server.config import PluginConfig
from precipdiff.server.engine import GeneratorEngine, InferenceEngine
from precipdiff.server.placement import member_block, node_inference_rank
from precipdiff.server.remap import build_regridders, check_coords

__all__ = ["MM_PER_DAY_TO_KG_M2_S", "Plugin"]

MM_PER_DAY_TO_KG_M2_S = 1.0 / 86400.0


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
        self.rank = world_rank() if rank is None else int(rank)
        self._member_comm = member_comm
        self._member_rank = 0 if member_comm is None else int(member_comm.Get_rank())
        self._member_size = 1 if member_comm is None else int(member_comm.Get_size())
        if member_comm is not None and config.output_rank not in (-1, 0):
            raise ConfigError(
                f"precipdiff_nml: output_rank = {config.output_rank} with members split across "
                f"{self._member_size} inference ranks: the first inference rank (rank 0) "
                "writes the output stream; set output_rank = -1 or 0"
            )
        self._lon = check_coords("lon", lon)
        self._lat = check_coords("lat", lat)
        self.model_shape: tuple[int, int] = (self._lat.size, self._lon.size)
        self.fine_lat = np.asarray(engine.fine_lat, dtype=np.float64)
        self.fine_lon = np.asarray(engine.fine_lon, dtype=np.float64)
        self.fine_shape: tuple[int, int] = (self.fine_lat.size, self.fine_lon.size)

        self._acc = FieldAccumulator(list(engine.predictors), self.model_shape, config.below_ground)
        self.required_fields: list[str] = self._acc.required_fields
        self._clock = WindowClock(config.window_s)
        self._to_coarse, self._to_model = build_regridders(
            config, self._lon, self._lat, engine, self.fine_shape
        )

        # Results: all members of the last published window (mm/day), the field
        # handed back on both grids (output units).
        self._members: np.ndarray | None = None
        self._ready_window = -1
        self._out_fine = np.zeros(self.fine_shape, dtype=np.float64)
        self._out_model = np.zeros(self.model_shape, dtype=np.float64)
        self._pending: tuple[int, Future[np.ndarray] | np.ndarray] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False
        #: What the process set-up did (``Plugin.from_namelist``; None when built directly).
        self.process: ProcessReport | None = None
        self._weights_id: dict[str, str] | None = None

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
        process = None
        if engine is None:
            # Per-node mode: the inference ranks of a node share its GPUs.
            local = None if member_comm is None else node_inference_rank(member_comm)
            try:
                device = resolve_device(
                    config.device, strict=config.strict_device, local_rank=local
                )
            except DeviceError as exc:
                raise DeviceError(f"precipdiff_nml: {exc} (strict_device = .true.)") from exc
            # Threads, allocator and denormals before the bundle is loaded, so that
            # torch's worker threads start with the settings (precipdiff.perf.process).
            process = configure(
                ProcessSettings(
                    threads=config.torch_threads,
                    allocator=config.torch_allocator,
                    flush_denormals=config.flush_denormals,
                ),
                device_type=device.type,
            )
            engine = GeneratorEngine.from_bundle(
                config.bundle_path,
                device=str(device),
                precision=config.precision,
                use_compiled=config.compiled_networks,
                bias_correction=config.bias_correction,
                qdm_mode=config.qdm_mode,
                qdm_trailing_years=config.qdm_trailing_years,
                samples_per_day=86400.0 / config.window_s,
                calendar=config.calendar,
                output_calibration=config.output_calibration,
            )
        else:
            process = configure(
                ProcessSettings(
                    threads=config.torch_threads,
                    allocator="default",
                    flush_denormals=config.flush_denormals,
                )
            )
        plugin = cls(config, lon, lat, engine, rank=rank, member_comm=member_comm)
        plugin.process = process
        return plugin

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
        if self._closed:  # (inline: this runs for every field of every timestep)
            self._check_open()
        self._acc.add(name, values, pressure)

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
            straddling a window boundary (nothing changes: the step may be retried),
            a field missing at window close, non-finite window means.
        PrecipDiffError
            Inference failures (``DeviceError`` for GPU out-of-memory).

        Notes
        -----
        A step that closes a window is all or nothing for that window: when the
        close fails (missing field, non-finite means, remap, bias correction,
        inference), the window is discarded as a whole -- no result, the handed-back
        field stays the previous window's -- and the run continues with the next
        window, which starts clean. The error message says so. A window whose
        inference fails has still fed online QDM's trailing statistics (its raw
        means are valid ESM data), as it would have without the failure.
        """
        if self._closed:
            self._check_open()
        tick = self._clock.check(model_time_s, dt_s)  # raises before changing anything
        window, closes, t_end = tick
        if not closes:
            self._clock.commit(tick)
            self._acc.end_step()
            return False
        try:
            return self._close_window(window, t_end)
        finally:
            # The window is over whether or not it produced a result: the next one
            # starts clean (sums, window index, clock), so a failed close never leaks
            # into later windows (seeds, dates and sums stay those of their window).
            self._acc.reset()
            self._clock.commit(tick)

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
        return self._acc.fields_3d

    # ----------------------------------------------------------- close window
    def _close_window(self, n: int, model_time_s: float) -> bool:
        """Turn window ``n``'s sums into a result; the caller resets sums and clock."""
        discarded = f"window {n} is discarded, the next window ({n + 1}) starts clean"
        with _noting(discarded):
            batch = self._window_batch(n, model_time_s)
        if self.config.inference == "sync":
            with _noting(discarded):
                if self._member_comm is None:
                    members = self._infer(n, batch)
                else:
                    members = self._exchange(n, lambda: self._infer(n, batch))
            self._publish(n, members)
            return True
        previous = self._pending
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="precipdiff")
        self._pending = (n, self._executor.submit(self._infer, n, batch))
        if previous is None:
            return False
        lost = f"window {previous[0]} is discarded (lagged inference); window {n} is pending"
        with _noting(lost):
            members = self._resolve_pending(previous)
        self._publish(previous[0], members)
        return True

    def _window_batch(self, n: int, model_time_s: float) -> dict[str, np.ndarray]:
        """Window means remapped to the coarse grid, bias-corrected: ``(1, nlat_c, nlon_c)``."""
        means = self._acc.window_means(n, model_time_s)
        # The remap is linear, so remapping the window mean once equals the
        # mean of the remapped instantaneous fields.
        predictors = {name: self._to_coarse(mean) for name, mean in means.items()}
        if self.config.bias_correction:
            predictors = self.engine.bias_correct(predictors, self._window_date(n))
        return {k: np.asarray(v)[None].astype(np.float32) for k, v in predictors.items()}

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
            # The calling thread is the host's (or the lagged worker): its floating-point
            # environment is restored on the way out whatever flush_denormals does.
            # an output calibration per month needs the window's date (engine attribute)
            extra: dict[str, Any] = (
                {"date": self._window_date(n)} if getattr(self.engine, "needs_date", False) else {}
            )
            with flush_denormals(c.flush_denormals):
                if self._member_comm is None:
                    out = self.engine.generate(
                        batch,
                        c.members,
                        c.seed,
                        n,
                        c.sampler_steps or None,
                        c.conserve_mass,
                        **extra,
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
                        **extra,
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
            sums=self._acc.sums,
            counts=self._acc.counts,
            steps_in_window=self._clock.steps_in_window,
            window=-1 if self._clock.window is None else self._clock.window,
            next_time=math.nan if self._clock.last_time is None else self._clock.last_time,
            ready_window=self._ready_window,
            members=self._members,
            pending_window=pending_window,
            pending=pending,
            bias_state=self.engine.bias_state(),
            lat=self._lat,
            lon=self._lon,
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
        state = read_restart_file(path, self._restart_identity(), self._lat, self._lon)
        if state.pending is not None and self.config.inference != "lagged":
            raise InputError(
                f"restart file {path!r} holds the pending result of window "
                f"{state.pending_window} from a run with inference = 'lagged'; continue "
                "this run with inference = 'lagged' (switch at a restart written by a sync run)"
            )
        self.engine.load_bias_state(state.bias_state)
        self._acc.load(state.sums, state.counts)
        self._clock.steps_in_window = state.steps_in_window
        self._clock.window = None if state.window < 0 else state.window
        self._clock.last_time = None if math.isnan(state.next_time) else state.next_time
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
        """Everything a restart must share with this run for the result to continue exactly.

        Besides the bundle, the seed and the grids: settings that change the
        generated field (sampler steps, mass conservation), the handed-back field
        (return mode), window dates (reference time, calendar), online bias
        correction (on/off, mode, memory) and remapping (method, weight files'
        contents). The ESM grid's coordinates are checked separately.
        """
        c = self.config
        if self._weights_id is None:
            self._weights_id = {
                key: _file_digest(path) if path else ""
                for key, path in (
                    ("weights_to_bundle", c.weights_to_bundle),
                    ("weights_to_model", c.weights_to_model),
                )
            }
        return {
            "bundle_id": self.engine.bundle_id,
            "seed": c.seed,
            "members": c.members,
            "window_s": c.window_s,
            "fields": ",".join(self.required_fields),
            "model_shape": f"{self.model_shape[0]}x{self.model_shape[1]}",
            "fine_shape": f"{self.fine_shape[0]}x{self.fine_shape[1]}",
            "sampler_steps": c.sampler_steps,
            "conserve_mass": int(c.conserve_mass),
            "return_mode": c.return_mode,
            "return_member": c.return_member if c.return_mode == "member" else 0,
            "reference_time": str(c.reference_time),
            "calendar": str(c.calendar),
            "bias_correction": int(c.bias_correction),
            "qdm_mode": c.qdm_mode if c.bias_correction else "",
            "qdm_trailing_years": float(c.qdm_trailing_years) if c.bias_correction else 0.0,
            "remap_method": c.remap_method,
            "precision": str(getattr(self.engine, "precision", "float32")),
            "output_calibration": int(bool(getattr(self.engine, "output_calibration", False))),
            **self._weights_id,
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
    def _check_open(self) -> None:
        if self._closed:
            raise InputError("this precipdiff plugin was closed (precipdiff_finalize called)")


def _file_digest(path: str) -> str:
    """``sha256:<hex>`` of a file's contents."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


@contextlib.contextmanager
def _noting(note: str) -> Iterator[None]:
    """Append ``note`` to the message of any exception raised inside (same object, same type)."""
    try:
        yield
    except Exception as exc:
        first = str(exc.args[0]) if exc.args else type(exc).__name__
        exc.args = (f"{first}; {note}", *exc.args[1:])
        raise


def _resolve(pending: Future[np.ndarray] | np.ndarray) -> np.ndarray:
    if isinstance(pending, np.ndarray):
        return pending
    return pending.result()
