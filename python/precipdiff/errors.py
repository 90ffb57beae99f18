"""Exception hierarchy shared by the library, the CLI and the embedded server.

Every error a user can cause derives from :class:`PrecipDiffError`, so the CLI
prints it as a one-line message and the Fortran bridge turns it into
``errflg``/``errmsg``. Messages must name the problem (variable, file, value).
"""

from __future__ import annotations


class PrecipDiffError(Exception):
    """Base class of every user-facing precipdiff error."""


class ConfigError(PrecipDiffError):
    """Invalid configuration: unknown keys, bad values, inconsistent options."""


class BundleError(PrecipDiffError):
    """A model bundle is missing, corrupt, incompatible or fails validation."""


class InputError(PrecipDiffError):
    """Input data are missing, on an unusable grid, non-finite or out of range."""


class GridError(InputError):
    """A grid cannot be built or remapped to the requested grid."""


class DeviceError(PrecipDiffError):
    """A requested compute device is unavailable (e.g. CUDA asked for, none present)."""
