"""The embedded inference server: the Python side of the Fortran/C bridge.

:class:`~precipdiff.server.plugin.Plugin` is the object the C ABI
(:mod:`precipdiff.server.capi`) creates per Fortran handle. It is configured by
the ``&precipdiff_nml`` namelist (:class:`~precipdiff.server.config.PluginConfig`),
accumulates the ESM's fields over the averaging window, interpolates 3-D fields
to pressure levels (:mod:`precipdiff.server.vertical`), runs the generator when
the window closes, writes the optional output stream
(:mod:`precipdiff.server.output`) and its restart files
(:mod:`precipdiff.server.restart`).
"""

from __future__ import annotations

from precipdiff.server.config import PluginConfig
from precipdiff.server.plugin import (
    Plugin,
    PredictorSpec,
    resolve_device,
    window_seed_sequence,
)

__all__ = ["Plugin", "PluginConfig", "PredictorSpec", "resolve_device", "window_seed_sequence"]
