"""Exception hierarchy shared by the library, the CLI and the embedded server.

Every error a user can cause derives from :class:`PrecipDiffError`, so the CLI
prints it as a one-line message and the Fortran bridge turns it into
``errflg``/``errmsg``. Messages must name the problem (variable, file, value).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


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


def reject_unknown_keys(cls: type, data: Mapping[str, Any], what: str) -> None:
    """Raise :class:`ConfigError` when ``data`` has keys that are not fields of ``cls``.

    The shared check behind every ``from_dict`` of a config dataclass (configs are
    loaded strictly: a misspelt key is an error, never silently ignored).

    Parameters
    ----------
    cls
        The dataclass whose field names are the accepted keys.
    data
        The mapping about to be turned into ``cls``.
    what
        What the mapping configures, for the message (e.g. ``"sampler settings"``).

    Raises
    ------
    ConfigError
        Naming the unknown keys and the accepted ones.
    """
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {what}; expected {sorted(known)}")
