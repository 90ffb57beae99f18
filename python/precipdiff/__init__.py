"""precipdiff: diffusion-model precipitation from large-scale atmospheric state.

Implements the two-stage method of Aich et al. (2025, arXiv 2504.00307) -- a UNet
regression to coarse precipitation and a noise-conditioned diffusion model that
generates the field at 4x finer resolution -- as an online parameterization that
Earth system models call through a Fortran/C bridge.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
