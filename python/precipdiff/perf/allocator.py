"""A caching CPU allocator for torch's tensors, leaving the host's malloc alone.

Eager inference at 721×1440 frees and re-allocates the same large activations in
every network evaluation; glibc serves blocks above its mmap threshold (at most
32 MiB) with ``mmap``/``munmap``, so each forward re-faults its activations page by
page. Raising glibc's thresholds with ``mallopt`` cures that but changes the malloc
behaviour of the whole process -- the host model's included. This module instead
installs a small C++ allocator (``torch_cpu_cache.cpp``) in front of torch's own CPU
allocator with ``c10::SetCPUAllocator``: freed blocks of at least ``min_block`` bytes
are kept for reuse, everything else passes through. The host's ``malloc`` settings
are never touched.

The library is compiled once per torch version with the C++ compiler torch's own
``torch.compile`` needs anyway (``$CXX``, else ``c++``), into
``$PRECIPDIFF_CACHE_DIR`` (default ``$XDG_CACHE_HOME/precipdiff`` or
``~/.cache/precipdiff``); ``scripts/setup.sh`` builds it ahead of time with
``python -m precipdiff.perf.allocator``. ``$PRECIPDIFF_TORCH_CACHE_LIB`` names a
prebuilt library instead.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from precipdiff.errors import ConfigError

__all__ = [
    "AllocatorStats",
    "build_library",
    "install",
    "installed",
    "library_path",
    "release",
    "stats",
    "uninstall",
]

log = logging.getLogger(__name__)

SOURCE_NAME = "torch_cpu_cache.cpp"
LIB_ENV = "PRECIPDIFF_TORCH_CACHE_LIB"
CACHE_ENV = "PRECIPDIFF_CACHE_DIR"
#: Blocks smaller than this pass straight through (glibc serves them without page faults).
DEFAULT_MIN_BLOCK = 1 << 20

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None


@dataclass(frozen=True)
class AllocatorStats:
    """Counters of the caching allocator.

    Parameters
    ----------
    installed
        Whether it currently serves torch's CPU allocations.
    hits, misses
        Cached-size requests served from / not found in the cache.
    cached_bytes
        Bytes held for reuse.
    live_bytes, peak_live_bytes
        Bytes of cached-size blocks in use now / at most.
    returned_blocks
        Blocks given back to torch's allocator (over the cap, or released).
    cached_blocks
        Blocks held for reuse.
    """

    installed: bool
    hits: int
    misses: int
    cached_bytes: int
    live_bytes: int
    peak_live_bytes: int
    returned_blocks: int
    cached_blocks: int


def _source() -> bytes:
    return resources.files("precipdiff.perf").joinpath(SOURCE_NAME).read_bytes()


def _torch_dirs() -> tuple[Path, Path]:
    import torch

    root = Path(torch.__file__).resolve().parent
    return root / "include", root / "lib"


def cache_dir() -> Path:
    """Return the directory compiled helper libraries are kept in.

    Returns
    -------
    pathlib.Path
        ``$PRECIPDIFF_CACHE_DIR``, else ``$XDG_CACHE_HOME/precipdiff``, else
        ``~/.cache/precipdiff``.
    """
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "precipdiff"


def library_path() -> Path:
    """Return where the library for this torch build is (or would be) kept.

    Returns
    -------
    pathlib.Path
        ``$PRECIPDIFF_TORCH_CACHE_LIB`` when set, else a file in :func:`cache_dir`
        named after the torch version and a hash of the source and torch's location.
    """
    env = os.environ.get(LIB_ENV)
    if env:
        return Path(env)
    import torch

    inc, lib = _torch_dirs()
    key = hashlib.sha256(_source() + f"{torch.__version__}|{inc}|{lib}".encode()).hexdigest()
    version = torch.__version__.replace("+", "_")
    return cache_dir() / f"libpd_torch_cpu_cache-{version}-{key[:16]}.so"


def build_library(*, force: bool = False, compiler: str | None = None) -> Path:
    """Compile the allocator library for the installed torch (once).

    Parameters
    ----------
    force
        Rebuild even when the library exists.
    compiler
        C++ compiler (default ``$CXX`` or ``c++``).

    Returns
    -------
    pathlib.Path
        The library.

    Raises
    ------
    ConfigError
        When no compiler is found, torch's headers are missing or compilation fails
        (the message holds the compiler's output).
    """
    out = library_path()
    if out.is_file() and not force:
        return out
    if os.environ.get(LIB_ENV):
        raise ConfigError(f"${LIB_ENV}={out} does not exist")
    cxx = compiler or os.environ.get("CXX") or "c++"
    exe = shutil.which(cxx)
    if exe is None:
        raise ConfigError(
            f"no C++ compiler {cxx!r} on PATH to build the caching CPU allocator (set $CXX, "
            f"or torch_allocator = 'default' in &precipdiff_nml)"
        )
    inc, lib = _torch_dirs()
    if not (inc / "c10" / "core" / "CPUAllocator.h").is_file():
        raise ConfigError(f"torch's C++ headers are missing ({inc}): cannot build the allocator")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".build-") as tmp:
        src = Path(tmp) / SOURCE_NAME
        src.write_bytes(_source())
        tmp_out = Path(tmp) / out.name
        cmd = [
            exe,
            "-O2",
            "-std=c++17",
            "-shared",
            "-fPIC",
            "-fvisibility=hidden",
            f"-I{inc}",
            str(src),
            f"-L{lib}",
            "-lc10",
            f"-Wl,-rpath,{lib}",
            "-o",
            str(tmp_out),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise ConfigError(
                f"building the caching CPU allocator failed ({' '.join(cmd)}):\n"
                f"{proc.stderr[-3000:]}"
            )
        os.replace(tmp_out, out)  # atomic: concurrent builders race harmlessly
    return out


def _load(build: bool) -> ctypes.CDLL:
    global _lib
    if _lib is not None:
        return _lib
    import torch  # noqa: F401  (libc10 must be loaded first)

    path = library_path()
    if not path.is_file():
        if not build:
            raise ConfigError(f"the caching CPU allocator is not built ({path})")
        path = build_library()
    lib = ctypes.CDLL(str(path), mode=os.RTLD_NOW | os.RTLD_LOCAL)
    lib.pdc_install.argtypes = [ctypes.c_ulonglong, ctypes.c_ulonglong]
    lib.pdc_install.restype = ctypes.c_int
    lib.pdc_uninstall.restype = ctypes.c_int
    lib.pdc_release.restype = ctypes.c_ulonglong
    lib.pdc_stats.argtypes = [ctypes.POINTER(ctypes.c_longlong)]
    lib.pdc_stats.restype = None
    _lib = lib
    return lib


def install(*, min_block: int = DEFAULT_MIN_BLOCK, max_cached: int = 0, build: bool = True) -> bool:
    """Put the caching allocator in front of torch's CPU allocator.

    Parameters
    ----------
    min_block
        Smallest block (bytes) that is cached.
    max_cached
        Most bytes held for reuse; 0 means twice the peak of live cached-size
        bytes (room for one working set even when freed blocks do not fit
        the next requests exactly).
    build
        Compile the library when it is missing.

    Returns
    -------
    bool
        True when it was installed by this call, False when it already was.

    Raises
    ------
    ConfigError
        When the library cannot be built or loaded, or torch's allocator cannot be
        wrapped.
    """
    if min_block < 1 or max_cached < 0:
        raise ConfigError(
            f"min_block must be >= 1 and max_cached >= 0, got {min_block}, {max_cached}"
        )
    with _lock:
        try:
            lib = _load(build)
        except OSError as exc:
            raise ConfigError(f"cannot load the caching CPU allocator: {exc}") from exc
        rc = lib.pdc_install(min_block, max_cached)
    if rc < 0:
        raise ConfigError(f"the caching CPU allocator could not be installed (code {rc})")
    return rc == 0


def uninstall() -> bool:
    """Restore torch's previous CPU allocator and free the cached blocks.

    Returns
    -------
    bool
        True when it was installed.
    """
    with _lock:
        if _lib is None:
            return False
        return bool(_lib.pdc_uninstall() == 0)


def release() -> int:
    """Free the cached blocks (the allocator stays installed).

    Returns
    -------
    int
        Bytes given back.
    """
    with _lock:
        return 0 if _lib is None else int(_lib.pdc_release())


def stats() -> AllocatorStats:
    """Return the allocator's counters (all zero when it was never loaded).

    Returns
    -------
    AllocatorStats
        The counters.
    """
    buf = (ctypes.c_longlong * 8)()
    with _lock:
        if _lib is not None:
            _lib.pdc_stats(buf)
    v = list(buf)
    return AllocatorStats(bool(v[0]), *v[1:])


def installed() -> bool:
    """Return whether the caching allocator serves torch's CPU allocations now.

    Returns
    -------
    bool
        Installed or not.
    """
    return stats().installed


def main(argv: list[str] | None = None) -> int:
    """Build the library ahead of time (``python -m precipdiff.perf.allocator``)."""
    import argparse

    p = argparse.ArgumentParser(description="build precipdiff's caching CPU allocator for torch")
    p.add_argument("--force", action="store_true", help="rebuild even if present")
    args = p.parse_args(argv)
    try:
        path = build_library(force=args.force)
    except ConfigError as exc:
        print(f"precipdiff: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
