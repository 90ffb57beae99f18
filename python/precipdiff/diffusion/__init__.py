"""EDM diffusion: preconditioning, loss, condition noise and samplers."""

from precipdiff.diffusion.edm import EDMPrecond, add_condition_noise, edm_loss
from precipdiff.diffusion.samplers import SamplerConfig, member_generators, sample, sigma_steps

__all__ = [
    "EDMPrecond",
    "SamplerConfig",
    "add_condition_noise",
    "edm_loss",
    "member_generators",
    "sample",
    "sigma_steps",
]
