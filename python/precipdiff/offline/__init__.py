"""Offline tools: everything an ESM process never imports.

- :mod:`~precipdiff.offline.train` -- training the regression UNet and the
  diffusion denoiser, building bundles;
- :mod:`~precipdiff.offline.evaluate` -- evaluation reports, the paper experiment;
- :mod:`~precipdiff.offline.qdm_fit` -- fitting QDM tables, offline correction;
- :mod:`~precipdiff.offline.export` -- compiling a bundle's networks (AOTInductor);
- :mod:`~precipdiff.offline.metrics` -- skill scores;
- :mod:`~precipdiff.offline.cli` -- the ``precipdiff`` command line.

They build on the runtime modules (``precipdiff.generator``, ``precipdiff.bundle``,
``precipdiff.grids``, ...); the runtime never imports them
(``tests/python/test_structure.py`` checks both directions and the absence of
import cycles).
"""
