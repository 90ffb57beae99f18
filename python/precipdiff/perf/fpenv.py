"""The floating-point environment of the calling thread: save, restore, flush denormals.

``torch.set_flush_denormal(True)`` sets the FTZ/DAZ bits of the *calling thread's*
MXCSR (x86) or FPCR (Arm). In an ESM that thread is the host model's: left set, it
would change the host's own arithmetic. :func:`flush_denormals` therefore scopes
it: the caller's whole floating-point environment (``fegetenv``) is saved on entry
and restored on exit, whatever happens inside. The C layer of ``libprecipdiff``
additionally restores the host's environment after every call into Python.

torch's intra-op worker threads are separate OS threads that inherit the
environment of the thread that created them (POSIX): they flush denormals only if
they were created inside such a scope (:func:`precipdiff.perf.process.configure`
creates them there when asked to). They run nothing but torch's kernels.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

__all__ = ["denormals_flushed", "flush_denormals", "get_fenv", "set_fenv"]

#: Bytes reserved for a ``fenv_t`` (32 on x86-64 glibc, 8 on aarch64; generous).
_FENV_BYTES = 256

_libm: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libm
    if _libm is None:
        name = ctypes.util.find_library("m") or "libm.so.6"
        lib = ctypes.CDLL(name)
        lib.fegetenv.argtypes = [ctypes.c_void_p]
        lib.fegetenv.restype = ctypes.c_int
        lib.fesetenv.argtypes = [ctypes.c_void_p]
        lib.fesetenv.restype = ctypes.c_int
        _libm = lib
    return _libm


def get_fenv() -> bytes:
    """Return the calling thread's floating-point environment (opaque bytes).

    Returns
    -------
    bytes
        What ``fegetenv`` stored (control words, status flags, FTZ/DAZ).
    """
    buf = ctypes.create_string_buffer(_FENV_BYTES)
    if _lib().fegetenv(buf) != 0:
        raise OSError("fegetenv failed")
    return buf.raw


def set_fenv(env: bytes) -> None:
    """Restore an environment returned by :func:`get_fenv` on the calling thread.

    Parameters
    ----------
    env
        The saved environment.
    """
    buf = ctypes.create_string_buffer(env, _FENV_BYTES)
    if _lib().fesetenv(buf) != 0:
        raise OSError("fesetenv failed")


def denormals_flushed() -> bool:
    """Return whether the calling thread flushes denormal results to zero.

    Returns
    -------
    bool
        True when a float32 operation producing a denormal gives 0.
    """
    tiny = np.float32(1.0e-37)
    with np.errstate(all="ignore"):
        return bool(tiny * np.float32(1.0e-3) == np.float32(0.0))


@contextmanager
def flush_denormals(enabled: bool = True) -> Iterator[None]:
    """Flush denormals to zero on this thread inside the block; restore on exit.

    Parameters
    ----------
    enabled
        When False the block runs unchanged (the environment is still restored).

    Yields
    ------
    None
        Inside the block FTZ/DAZ are set (when the CPU supports them).
    """
    import torch

    saved = get_fenv()
    try:
        if enabled:
            torch.set_flush_denormal(True)
        yield
    finally:
        set_fenv(saved)
