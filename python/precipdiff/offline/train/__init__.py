"""Offline training pipeline: typed configs, lazy netCDF data, the two stages, bundles.

``precipdiff train regression CONFIG``, ``precipdiff train diffusion CONFIG`` and
``precipdiff train bundle CONFIG`` (or ``precipdiff train all CONFIG``) run the
documented sequence that builds a complete bundle; see ``docs/training.md``.
"""
