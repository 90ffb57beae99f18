"""Reading predictors and writing precipitation (netCDF).

Always obtain the ``netCDF4`` module through :func:`import_netcdf4`: inside a
Fortran program linked to the system libnetcdf, the wheel's bundled
libnetcdf/HDF5 must be loaded with ``RTLD_DEEPBIND`` or the process crashes
(see ``docs/data_and_grids.md``).
"""

from __future__ import annotations

import os
import sys
import threading
from types import ModuleType

__all__ = ["import_netcdf4", "import_xarray"]

_LOCK = threading.Lock()


def import_netcdf4() -> ModuleType:
    """Import and return the ``netCDF4`` module with symbol-isolating dlopen flags.

    The first import is done under ``sys.setdlopenflags(RTLD_NOW | RTLD_DEEPBIND)``
    so the wheel's own libnetcdf/HDF5 resolve their symbols internally instead of
    binding to a libnetcdf already loaded by the host Fortran program; the previous
    flags are restored afterwards. Later calls return the cached module.

    Returns
    -------
    module
        The ``netCDF4`` module.
    """
    mod = sys.modules.get("netCDF4")
    if mod is not None:
        return mod
    with _LOCK:
        mod = sys.modules.get("netCDF4")
        if mod is not None:
            return mod
        deepbind = getattr(os, "RTLD_DEEPBIND", 0)  # absent on macOS: plain import
        old = sys.getdlopenflags()
        try:
            sys.setdlopenflags(os.RTLD_NOW | deepbind)
            import netCDF4
        finally:
            sys.setdlopenflags(old)
        return netCDF4


def import_xarray() -> ModuleType:
    """Import ``xarray`` after :func:`import_netcdf4` so its backend reuses that module.

    Returns
    -------
    module
        The ``xarray`` module.
    """
    import_netcdf4()
    import xarray

    return xarray
