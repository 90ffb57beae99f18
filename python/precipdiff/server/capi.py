"""C ABI of the embedded server: cffi ``def_extern`` functions and the handle registry.

``libprecipdiff`` (``fortran_bridge/``) starts the interpreter, then its cffi
embedding init code imports this module and calls :func:`install`, which defines
the Python side of every ``pdpy_*`` function declared in
``fortran_bridge/pd_embed_api.h``. Each function:

- finds the plugin named by an opaque integer handle (several per process);
- wraps the caller's arrays as zero-copy numpy views (a Fortran ``(nlon, nlat)``
  array is a C-order ``(nlat, nlon)`` view of the same memory; inputs are
  read-only views, outputs are written in place);
- turns every exception (``SystemExit`` included) into a non-zero status and a
  last-error message; nothing here ever exits the process.

The pure-Python layer (:class:`Bridge`) holds all logic, so it is testable
without cffi pointers; the ``def_extern`` shims only convert pointers.
"""

from __future__ import annotations

import importlib
import math
import os
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Protocol

import numpy as np

from precipdiff.errors import (
    BundleError,
    ConfigError,
    DeviceError,
    GridError,
    InputError,
    PrecipDiffError,
)

#: Value ``pdpy_ready`` returns when this module is installed ("PDRY"). cffi
#: returns 0 from every function when its init code failed, so 0 cannot mean ready.
READY_MAGIC = 0x50445259

#: Environment variable naming an alternative plugin class (``module:Class``).
PLUGIN_CLASS_ENV = "PRECIPDIFF_PLUGIN_CLASS"
DEFAULT_PLUGIN_CLASS = "precipdiff.server.plugin:Plugin"


class Status(IntEnum):
    """Status codes of the C ABI (``enum pd_status`` in ``precipdiff.h``)."""

    OK = 0
    PYTHON_INIT = 1
    NOT_INITIALISED = 2
    BAD_HANDLE = 3
    INVALID_ARGUMENT = 4
    CONFIG = 5
    BUNDLE = 6
    INPUT = 7
    GRID = 8
    DEVICE = 9
    PYTHON = 10
    ALREADY_INITIALISED = 11
    INTERNAL = 12


class BridgeError(PrecipDiffError):
    """A misuse of the C ABI (bad handle, wrong shape, ...) with its status code.

    Parameters
    ----------
    status : Status
        The code returned to the caller.
    message : str
        What went wrong, naming the argument and the expected value.
    """

    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status


class _PluginLike(Protocol):
    """What the bridge needs from a plugin (see :class:`precipdiff.server.plugin.Plugin`)."""

    required_fields: list[str]
    model_shape: tuple[int, int]
    fine_shape: tuple[int, int]
    fine_lon: np.ndarray
    fine_lat: np.ndarray

    def set_field(
        self, name: str, values: np.ndarray, pressure: np.ndarray | None = None
    ) -> None: ...

    def step(self, model_time_s: float, dt_s: float) -> bool: ...

    def output_fine(self) -> np.ndarray: ...

    def output_model(self) -> np.ndarray: ...

    def write_restart(self, path: str) -> None: ...

    def read_restart(self, path: str) -> None: ...

    def close(self) -> None: ...


def status_of(exc: BaseException) -> Status:
    """Map an exception to the status code the C ABI returns.

    Parameters
    ----------
    exc : BaseException
        The exception raised by the plugin or the bridge.

    Returns
    -------
    Status
        ``GridError`` → GRID (checked before its base ``InputError``), ``ConfigError``
        → CONFIG, ``BundleError`` → BUNDLE, ``InputError`` → INPUT, ``DeviceError`` →
        DEVICE, ``ImportError`` → PYTHON_INIT (a package missing from the embedded
        Python), anything else → PYTHON.
    """
    if isinstance(exc, BridgeError):
        return exc.status
    for cls, status in (
        (GridError, Status.GRID),
        (ConfigError, Status.CONFIG),
        (BundleError, Status.BUNDLE),
        (InputError, Status.INPUT),
        (DeviceError, Status.DEVICE),
        (ImportError, Status.PYTHON_INIT),
    ):
        if isinstance(exc, cls):
            return status
    return Status.PYTHON


def load_plugin_class(spec: str | None = None) -> Any:
    """Import the plugin class named ``module:Class``.

    Parameters
    ----------
    spec : str, optional
        ``module:Class``; default ``$PRECIPDIFF_PLUGIN_CLASS`` or
        ``precipdiff.server.plugin:Plugin``.

    Returns
    -------
    type
        The class; it must provide ``from_namelist(nml_path, lon, lat, rank=...)``.

    Raises
    ------
    ConfigError
        When the spec is malformed or names nothing.
    """
    spec = spec or os.environ.get(PLUGIN_CLASS_ENV) or DEFAULT_PLUGIN_CLASS
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{PLUGIN_CLASS_ENV}={spec!r}: expected 'module:Class'")
    module = importlib.import_module(module_name)
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise ConfigError(
            f"{PLUGIN_CLASS_ENV}={spec!r}: module {module_name!r} has no attribute {attr!r}"
        ) from None
    return obj


def _mpi_rank(comm_f: int) -> int | None:
    """Rank of this process in the Fortran communicator, or None when unknown."""
    try:
        import mpi4py

        if "mpi4py.MPI" not in sys.modules:
            # Never let the import initialise or finalise MPI behind the host's back.
            mpi4py.rc.initialize = False
            mpi4py.rc.finalize = False
        from mpi4py import MPI

        if not MPI.Is_initialized() or MPI.Is_finalized():
            return None
        return int(MPI.Comm.f2py(comm_f).Get_rank())
    except Exception:  # the rank only labels messages
        return None


class CommKind(IntEnum):
    """What the communicator passed to ``pd_plugin_create`` is (``has_comm``, precipdiff.h)."""

    NONE = 0
    #: The host's communicator: labels messages with the rank.
    RANK = 1
    #: The inference ranks sharing the ensemble (``precipdiff_mpi``'s per-node mode).
    MEMBERS = 2


def _member_comm(comm_f: int) -> Any:
    """Return the mpi4py communicator the members are split across (per-node mode).

    Raises
    ------
    ConfigError
        When mpi4py is not importable in the embedded Python or MPI is not running:
        without the communicator every inference rank would generate the whole
        ensemble, silently.
    """
    try:
        import mpi4py

        if "mpi4py.MPI" not in sys.modules:
            mpi4py.rc.initialize = False
            mpi4py.rc.finalize = False
        from mpi4py import MPI
    except ImportError as exc:
        raise ConfigError(
            "precipdiff_mpi_init(inference='per_node') splits the members across the "
            "inference ranks with mpi4py, which the embedded Python cannot import "
            f"({exc}); install it (pip install 'precipdiff[mpi]', built against the "
            "host's MPI) or use inference='root'"
        ) from exc
    if not MPI.Is_initialized() or MPI.Is_finalized():
        raise ConfigError(
            "precipdiff_init: a member communicator was passed but MPI is not running"
        )
    return MPI.Comm.f2py(comm_f)


@dataclass
class _Instance:
    plugin: _PluginLike
    label: str
    has_output: bool = False


def _fortran_shape(shape: tuple[int, ...]) -> str:
    names = ("nlon", "nlat", "nlev")
    rev = tuple(reversed(shape))
    return "(" + ", ".join(f"{n}={v}" for n, v in zip(names, rev, strict=False)) + ")"


class Bridge:
    """Handle registry and the logic behind each ``pdpy_*`` function.

    All methods take numpy arrays (already wrapped) and raise on error; the cffi
    shims convert pointers and exceptions. Handles are positive and never reused
    within a process, so a stale handle cannot silently address a newer instance.
    """

    def __init__(self) -> None:
        self._instances: dict[int, _Instance] = {}
        self._next = 1
        # Per thread: the C layer fetches the message right after the failing call,
        # without holding the GIL in between.
        self._local = threading.local()

    @property
    def last_error(self) -> str:
        """Message of the last failure in the calling thread."""
        return str(getattr(self._local, "last_error", ""))

    @last_error.setter
    def last_error(self, text: str) -> None:
        self._local.last_error = text

    # -------------------------------------------------------------- registry
    @property
    def count(self) -> int:
        """Number of live instances."""
        return len(self._instances)

    def get(self, handle: int) -> _Instance:
        """Return the live instance of ``handle``.

        Raises
        ------
        BridgeError
            NOT_INITIALISED for handle 0, BAD_HANDLE for an unknown handle.
        """
        if handle == 0:
            raise BridgeError(
                Status.NOT_INITIALISED,
                "handle is PD_NO_HANDLE (0): call precipdiff_init before using it",
            )
        try:
            return self._instances[handle]
        except KeyError:
            live = sorted(self._instances)
            raise BridgeError(
                Status.BAD_HANDLE,
                f"unknown handle {handle} (never created or already finalized; "
                f"live handles: {live if live else 'none'})",
            ) from None

    # ------------------------------------------------------------- life cycle
    def create(
        self,
        nml_path: str,
        lon: np.ndarray,
        lat: np.ndarray,
        comm_f: int | None = None,
        start: tuple[int, int] = (1, 1),
        global_shape: tuple[int, int] | None = None,
        comm_kind: int = CommKind.RANK,
    ) -> int:
        """Build a plugin and return its new handle.

        Parameters
        ----------
        nml_path : str
            Namelist file with ``&precipdiff_nml``.
        lon, lat : numpy.ndarray
            ESM grid coordinates (degrees), 1-D.
        comm_f : int, optional
            Fortran MPI communicator handle.
        comm_kind : int
            :class:`CommKind` of ``comm_f``: ``RANK`` labels messages with the rank;
            ``MEMBERS`` also splits the members across its ranks (needs mpi4py).
        start, global_shape : tuple of int
            Subdomain placement; only the full grid is supported today.

        Returns
        -------
        int
            The handle (> 0).
        """
        nlon, nlat = int(lon.size), int(lat.size)
        if nlon < 1 or nlat < 1:
            raise BridgeError(
                Status.INVALID_ARGUMENT,
                f"precipdiff_init: empty grid (nlon={nlon}, nlat={nlat}); lon and lat "
                "must have at least one point each",
            )
        gshape = global_shape or (nlon, nlat)
        if tuple(start) != (1, 1) or tuple(gshape) != (nlon, nlat):
            raise BridgeError(
                Status.INVALID_ARGUMENT,
                f"precipdiff_init: subdomain start={tuple(start)} global_shape="
                f"{tuple(gshape)} for a local grid (nlon={nlon}, nlat={nlat}): domain "
                "decomposition is not available in this build; pass the full grid",
            )
        if not (np.isfinite(lon).all() and np.isfinite(lat).all()):
            raise InputError("precipdiff_init: lon or lat contains NaN/Inf")
        if not os.path.isfile(nml_path):
            raise ConfigError(
                f"precipdiff_init: namelist file {nml_path!r} not found "
                f"(working directory {os.getcwd()})"
            )
        rank = _mpi_rank(comm_f) if comm_f is not None else None
        cls = load_plugin_class()
        kwargs: dict[str, Any] = {} if rank is None else {"rank": rank}
        if comm_f is not None and comm_kind == CommKind.MEMBERS:
            kwargs["member_comm"] = _member_comm(comm_f)
        plugin = cls.from_namelist(nml_path, np.array(lon), np.array(lat), **kwargs)
        if tuple(plugin.model_shape) != (nlat, nlon):
            plugin.close()
            raise BridgeError(
                Status.INTERNAL,
                f"plugin reports model_shape {plugin.model_shape}, expected {(nlat, nlon)}",
            )
        handle = self._next
        self._next += 1
        label = f"handle {handle}" + ("" if rank is None else f", rank {rank}")
        self._instances[handle] = _Instance(plugin, label)
        return handle

    def destroy(self, handle: int) -> None:
        """Close and forget the plugin of ``handle``."""
        inst = self.get(handle)
        del self._instances[handle]
        inst.plugin.close()

    # -------------------------------------------------------------- per step
    def set_field(
        self, handle: int, name: str, values: np.ndarray, pressure: np.ndarray | None
    ) -> None:
        """Check shapes and finiteness, then hand the view to the plugin."""
        inst = self.get(handle)
        plugin = inst.plugin
        if not name.strip():
            raise BridgeError(Status.INVALID_ARGUMENT, "precipdiff_set_field: empty field name")
        nlat, nlon = plugin.model_shape
        if values.shape[-2:] != (nlat, nlon):
            raise BridgeError(
                Status.INVALID_ARGUMENT,
                f"precipdiff_set_field: field {name!r} has Fortran shape "
                f"{_fortran_shape(values.shape)} but the grid given to precipdiff_init is "
                f"(nlon={nlon}, nlat={nlat})",
            )
        for what, arr in (("field", values), ("pressure of field", pressure)):
            # Fast path: a finite sum proves every value finite (NaN/Inf propagate);
            # only a non-finite sum (or a harmless overflow) pays the full scan.
            if arr is None or np.isfinite(arr.sum()):
                continue
            finite = np.isfinite(arr)
            if not finite.all():
                bad = np.argwhere(~finite)
                first = tuple(int(i) + 1 for i in reversed(bad[0]))
                raise InputError(
                    f"precipdiff_set_field: {what} {name!r} has {len(bad)} non-finite "
                    f"value(s) (NaN/Inf); first at Fortran index {first}"
                )
        plugin.set_field(name, values, pressure)

    def step(self, handle: int, model_time_s: float, dt_s: float) -> bool:
        """Advance the plugin clock; True when new output is ready."""
        inst = self.get(handle)
        if not (np.isfinite(model_time_s) and np.isfinite(dt_s)) or dt_s <= 0:
            raise BridgeError(
                Status.INVALID_ARGUMENT,
                f"precipdiff_run: model_time={model_time_s} s, dt={dt_s} s: "
                "expected finite values and dt > 0",
            )
        ready = bool(inst.plugin.step(float(model_time_s), float(dt_s)))
        inst.has_output = inst.has_output or ready
        return ready

    def get_output(self, handle: int, fine: np.ndarray | None, model: np.ndarray | None) -> None:
        """Write the latest output into the caller's arrays (in place)."""
        inst = self.get(handle)
        plugin = inst.plugin
        if not inst.has_output:
            raise InputError(
                "precipdiff_get_output: no output yet: no accumulation window has "
                "closed since precipdiff_init (check `ready` from precipdiff_run)"
            )
        for what, arr, want in (
            ("pr_fine", fine, tuple(plugin.fine_shape)),
            ("pr_model", model, tuple(plugin.model_shape)),
        ):
            if arr is not None and arr.shape != want:
                raise BridgeError(
                    Status.INVALID_ARGUMENT,
                    f"precipdiff_get_output: {what} has Fortran shape "
                    f"{_fortran_shape(arr.shape)}, expected {_fortran_shape(want)}",
                )
        if fine is not None:
            fine[...] = plugin.output_fine()
        if model is not None:
            model[...] = plugin.output_model()

    # --------------------------------------------------------------- queries
    def shapes(self, handle: int) -> tuple[int, int, int, int]:
        """Return ``(nlon, nlat, nlon_fine, nlat_fine)``."""
        p = self.get(handle).plugin
        return (p.model_shape[1], p.model_shape[0], p.fine_shape[1], p.fine_shape[0])

    def fine_coords(self, handle: int, lon: np.ndarray, lat: np.ndarray) -> None:
        """Copy the fine-grid coordinates into the caller's arrays."""
        p = self.get(handle).plugin
        flon = np.asarray(p.fine_lon, dtype=np.float64)
        flat = np.asarray(p.fine_lat, dtype=np.float64)
        if lon.shape != flon.shape or lat.shape != flat.shape:
            raise BridgeError(
                Status.INVALID_ARGUMENT,
                f"precipdiff_fine_coords: lon_fine/lat_fine have sizes {lon.size}/{lat.size}"
                f", expected nlon_fine={flon.size}/nlat_fine={flat.size}",
            )
        lon[...] = flon
        lat[...] = flat

    def required_fields(self, handle: int) -> list[str]:
        """Names of the fields the bundle needs."""
        return [str(n) for n in self.get(handle).plugin.required_fields]

    def write_restart(self, handle: int, path: str) -> None:
        """Write the plugin's restart file."""
        self.get(handle).plugin.write_restart(path)

    def read_restart(self, handle: int, path: str) -> None:
        """Restore the plugin from a restart file."""
        inst = self.get(handle)
        inst.plugin.read_restart(path)
        # A restored plugin carries the output of its last window -- if one had closed
        # before the file was written (plugins without ready_window: assume so).
        ready = getattr(inst.plugin, "ready_window", None)
        inst.has_output = ready is None or int(ready) >= 0

    # ---------------------------------------------------------------- errors
    def fail(self, where: str, handle: int | None, exc: BaseException) -> int:
        """Record ``exc`` as the last error and return its status code."""
        status = status_of(exc)
        label = ""
        if handle is not None:
            inst = self._instances.get(handle)
            label = f" ({inst.label})" if inst else f" (handle {handle})"
        if isinstance(exc, BridgeError):
            text = str(exc)
        else:
            text = f"{type(exc).__name__}: {exc}"
        if status in (Status.PYTHON, Status.INTERNAL):
            # A bug rather than bad input: say where it happened.
            tb = traceback.extract_tb(exc.__traceback__)
            if tb:
                last = tb[-1]
                text += f" [at {last.filename}:{last.lineno} in {last.name}]"
        self.last_error = f"{where}{label}: {text}"
        return int(status)


#: The process-wide registry used by the installed cffi functions.
BRIDGE = Bridge()


def _cstr(ffi: Any, ptr: Any, what: str) -> str:
    if ptr == ffi.NULL:
        raise BridgeError(Status.INVALID_ARGUMENT, f"{what} is a NULL pointer")
    return str(ffi.string(ptr).decode("utf-8", "replace"))


def _view(
    ffi: Any, ptr: Any, dtype: Any, shape: tuple[int, ...], what: str, writable: bool
) -> np.ndarray:
    """Zero-copy numpy view of caller memory, C-order ``shape``."""
    if ptr == ffi.NULL:
        raise BridgeError(Status.INVALID_ARGUMENT, f"{what} is a NULL pointer")
    if any(n < 0 for n in shape):
        raise BridgeError(Status.INVALID_ARGUMENT, f"{what}: negative extent in {shape}")
    dt = np.dtype(dtype)
    # math.prod, not np.prod: this runs on every call (np.prod costs ~6 us here).
    nbytes = math.prod(shape) * dt.itemsize
    arr: np.ndarray = np.ndarray(shape, dt, ffi.buffer(ptr, nbytes))
    if not writable:
        arr.flags.writeable = False
    return arr


def _copy_str(ffi: Any, buf: Any, buflen: int, text: str) -> int:
    data = text.encode("utf-8", "replace")[: max(buflen - 1, 0)]
    if buflen > 0 and buf != ffi.NULL:
        ffi.memmove(buf, data, len(data))
        buf[len(data)] = b"\0"
    return len(data)


def install(ffi: Any, bridge: Bridge | None = None) -> None:
    """Define the ``pdpy_*`` ``def_extern`` functions on the embedding ``ffi``.

    Parameters
    ----------
    ffi : cffi.FFI
        The embedding module's ``ffi`` (``_precipdiff_bridge.ffi``).
    bridge : Bridge, optional
        Registry to serve; default the process-wide :data:`BRIDGE`.
    """
    b = BRIDGE if bridge is None else bridge
    err = int(Status.PYTHON)

    def guarded(where: str, handle_arg: bool = True) -> Callable[[Callable[..., None]], Any]:
        def deco(fn: Callable[..., None]) -> Any:
            def shim(*args: Any) -> int:
                handle = int(args[0]) if handle_arg else None
                try:
                    fn(*args)  # calls on one handle are serialised by the C layer
                except BaseException as exc:  # SystemExit too: never exit the ESM
                    return b.fail(where, handle, exc)
                return int(Status.OK)

            shim.__name__ = fn.__name__
            return ffi.def_extern(name=fn.__name__, error=err)(shim)

        return deco

    @ffi.def_extern(name="pdpy_ready", error=0)
    def _ready() -> int:
        return READY_MAGIC

    @ffi.def_extern(name="pdpy_import_error", error=-1)
    def _import_error(buf: Any, buflen: int) -> int:
        return 0

    @ffi.def_extern(name="pdpy_last_error", error=-1)
    def _last_error(buf: Any, buflen: int) -> int:
        return _copy_str(ffi, buf, buflen, b.last_error)

    @guarded("precipdiff_init", handle_arg=False)
    def pdpy_create(
        nml: Any, lon: Any, nlon: int, lat: Any, nlat: int, has_comm: int, comm_f: int,
        start_lon: int, start_lat: int, nlon_g: int, nlat_g: int, handle: Any,
    ) -> None:  # fmt: skip
        if handle == ffi.NULL:
            raise BridgeError(Status.INVALID_ARGUMENT, "precipdiff_init: handle is NULL")
        handle[0] = 0
        path = _cstr(ffi, nml, "precipdiff_init: nml_file")
        lon_a = _view(ffi, lon, np.float64, (nlon,), "precipdiff_init: lon", False)
        lat_a = _view(ffi, lat, np.float64, (nlat,), "precipdiff_init: lat", False)
        handle[0] = b.create(
            path,
            lon_a,
            lat_a,
            int(comm_f) if has_comm else None,
            (int(start_lon), int(start_lat)),
            (int(nlon_g), int(nlat_g)),
            comm_kind=int(has_comm),
        )

    @guarded("precipdiff_set_field")
    def pdpy_set_field(
        handle: int, name: Any, itemsize: int, values: Any, nlon: int, nlat: int, nlev: int,
        pressure: Any,
    ) -> None:  # fmt: skip
        fname = _cstr(ffi, name, "precipdiff_set_field: name")
        dtype = {4: np.float32, 8: np.float64}.get(int(itemsize))
        if dtype is None:
            raise BridgeError(
                Status.INVALID_ARGUMENT,
                f"precipdiff_set_field: itemsize {itemsize} is not 4 or 8",
            )
        b.get(handle)
        shape: tuple[int, ...] = (nlat, nlon) if nlev == 0 else (nlev, nlat, nlon)
        what = f"precipdiff_set_field: values of {fname!r}"
        vals = _view(ffi, values, dtype, shape, what, False)
        pres = None
        if nlev > 0:
            what = f"precipdiff_set_field: pressure of 3-D field {fname!r}"
            pres = _view(ffi, pressure, dtype, shape, what, False)
        elif pressure != ffi.NULL:
            raise BridgeError(
                Status.INVALID_ARGUMENT,
                f"precipdiff_set_field: pressure given for 2-D field {fname!r}",
            )
        b.set_field(handle, fname, vals, pres)

    @guarded("precipdiff_run")
    def pdpy_step(handle: int, model_time_s: float, dt_s: float, ready: Any) -> None:
        if ready == ffi.NULL:
            raise BridgeError(Status.INVALID_ARGUMENT, "precipdiff_run: ready is NULL")
        ready[0] = 0
        ready[0] = 1 if b.step(handle, model_time_s, dt_s) else 0

    @guarded("precipdiff_get_output")
    def pdpy_get_output(
        handle: int, fine: Any, nlon_f: int, nlat_f: int, model: Any, nlon: int, nlat: int
    ) -> None:
        b.get(handle)
        fa = None if fine == ffi.NULL else _view(
            ffi, fine, np.float64, (nlat_f, nlon_f), "pr_fine", True
        )  # fmt: skip
        ma = None if model == ffi.NULL else _view(
            ffi, model, np.float64, (nlat, nlon), "pr_model", True
        )  # fmt: skip
        b.get_output(handle, fa, ma)

    @guarded("precipdiff_shapes")
    def pdpy_shapes(handle: int, nlon: Any, nlat: Any, nlon_f: Any, nlat_f: Any) -> None:
        for p in (nlon, nlat, nlon_f, nlat_f):
            if p == ffi.NULL:
                raise BridgeError(Status.INVALID_ARGUMENT, "precipdiff_shapes: NULL output")
        a, c, d, e = b.shapes(handle)
        nlon[0], nlat[0], nlon_f[0], nlat_f[0] = a, c, d, e

    @guarded("precipdiff_fine_coords")
    def pdpy_fine_coords(handle: int, lon: Any, nlon_f: int, lat: Any, nlat_f: int) -> None:
        b.get(handle)
        lon_a = _view(ffi, lon, np.float64, (nlon_f,), "lon_fine", True)
        lat_a = _view(ffi, lat, np.float64, (nlat_f,), "lat_fine", True)
        b.fine_coords(handle, lon_a, lat_a)

    @guarded("precipdiff_required_fields")
    def pdpy_required_fields(handle: int, buf: Any, buflen: int, count: Any) -> None:
        names = b.required_fields(handle)
        text = " ".join(names)
        if buf == ffi.NULL or count == ffi.NULL or len(text.encode()) + 1 > buflen:
            raise BridgeError(
                Status.INVALID_ARGUMENT,
                f"precipdiff_required_fields: buffer of {buflen} bytes too small for "
                f"{len(text.encode()) + 1} bytes of names",
            )
        _copy_str(ffi, buf, buflen, text)
        count[0] = len(names)

    @guarded("precipdiff_write_restart")
    def pdpy_write_restart(handle: int, path: Any) -> None:
        b.write_restart(handle, _cstr(ffi, path, "precipdiff_write_restart: path"))

    @guarded("precipdiff_read_restart")
    def pdpy_read_restart(handle: int, path: Any) -> None:
        b.read_restart(handle, _cstr(ffi, path, "precipdiff_read_restart: path"))

    @guarded("precipdiff_finalize")
    def pdpy_destroy(handle: int) -> None:
        b.destroy(handle)

    @guarded("pd_plugin_count", handle_arg=False)
    def pdpy_count(count: Any) -> None:
        if count == ffi.NULL:
            raise BridgeError(Status.INVALID_ARGUMENT, "pd_plugin_count: count is NULL")
        count[0] = b.count
