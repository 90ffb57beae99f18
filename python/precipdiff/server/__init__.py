"""The embedded inference server: the Python side of the Fortran/C bridge.

:class:`~precipdiff.server.plugin.Plugin` is the object the C ABI
(:mod:`precipdiff.server.capi`) creates per Fortran handle. It is configured by
the ``&precipdiff_nml`` namelist (:mod:`~precipdiff.server.config`) and built from
one-noun pieces:

- :mod:`~precipdiff.server.clock` -- which averaging window a step belongs to;
- :mod:`~precipdiff.server.accumulator` -- window sums of the ESM's fields (3-D
  fields interpolated to pressure levels by :mod:`~precipdiff.server.vertical`);
- :mod:`~precipdiff.server.remap` -- ESM grid <-> the bundle's grids;
- :mod:`~precipdiff.server.engine` -- the inference engine over the generator
  (and online QDM);
- :mod:`~precipdiff.server.placement` -- inference ranks, devices and member
  blocks of MPI runs;
- :mod:`~precipdiff.server.output` -- the optional output stream;
- :mod:`~precipdiff.server.restart` -- restart files.
"""

from __future__ import annotations

from precipdiff.server.config import PluginConfig
from precipdiff.server.engine import GeneratorEngine, PredictorSpec, window_seed_sequence
from precipdiff.server.plugin import Plugin

__all__ = ["GeneratorEngine", "Plugin", "PluginConfig", "PredictorSpec", "window_seed_sequence"]
