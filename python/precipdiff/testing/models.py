"""Tiny random-weight model bundles for tests, examples and benchmarks.

:func:`make_tiny_bundle` writes a complete, valid bundle (manifest, safetensors
weights) whose networks have random weights: the pipeline, the bridge and the
tools can be exercised end to end without a trained model. Its output is
precipitation-shaped noise, not a forecast.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from precipdiff.bundle import manifest_from_networks, save_bundle
from precipdiff.diffusion.edm import EDMPrecond
from precipdiff.diffusion.samplers import SamplerConfig
from precipdiff.grids import LatLonGrid
from precipdiff.nn.unet import UNet, UNetConfig
from precipdiff.transforms import PrecipTransform
from precipdiff.variables import VariableSpec, get_variable

#: The paper's predictors: specific humidity, u and v wind at 850 hPa, sea-level pressure.
DEFAULT_VARIABLES = ("hus850", "ua850", "va850", "psl")

#: Plausible (mean, std) per base variable in canonical units, for normalisation.
_TYPICAL_STATS = {
    "hus": (0.006, 0.004),
    "ua": (1.0, 8.0),
    "va": (0.0, 6.0),
    "ta": (275.0, 15.0),
    "psl": (101_300.0, 1_200.0),
    "uas": (0.0, 5.0),
    "vas": (0.0, 5.0),
    "tas": (280.0, 15.0),
}


def typical_stats(spec: VariableSpec) -> tuple[float, float]:
    """Plausible normalisation statistics ``(mean, std)`` of a variable.

    Parameters
    ----------
    spec
        The variable.

    Returns
    -------
    tuple of float
        Mean and standard deviation in canonical units.
    """
    base = spec.base_aliases[0] if spec.base_aliases else spec.name
    return _TYPICAL_STATS.get(base, (0.0, 1.0))


def make_tiny_bundle(
    path: str | os.PathLike[str],
    *,
    coarse_grid: LatLonGrid,
    fine_grid: LatLonGrid,
    variables: Sequence[str | VariableSpec] = DEFAULT_VARIABLES,
    sigma_c: float = 0.5,
    seed: int = 0,
    base_channels: int = 8,
    channel_mult: tuple[int, ...] = (1, 2),
    static_fields: Sequence[str] = (),
    sampler: SamplerConfig | None = None,
    precip_stats: tuple[float, float] = (1.0, 1.5),
    overwrite: bool = False,
    num_blocks: int = 1,
    attention_levels: tuple[int, ...] = (),
    noise_channels: int = 16,
) -> Path:
    """Write a valid bundle with tiny random-weight networks.

    Parameters
    ----------
    path
        Destination directory.
    coarse_grid, fine_grid
        Regression and diffusion grids (periodicity is taken from each grid).
    variables
        Predictor names (resolved by :func:`precipdiff.variables.get_variable`)
        or specs, in channel order.
    sigma_c
        Condition-noise level.
    seed
        Seed of the random weights (same seed, same bundle weights).
    base_channels
        Channels at full resolution of both networks.
    channel_mult
        Channel multipliers (levels) of both networks.
    static_fields
        Computed static fields (``"sin_lat"``, ``"cos_lat"``) added to both
        networks' inputs.
    sampler
        Sampler defaults (default: 2 Heun steps from the condition noised at
        sigma 1, 3 network evaluations, to keep tests fast; a random-weight
        denoiser started from pure noise gives meaningless huge values).
    precip_stats
        Mean and standard deviation of the transformed precipitation
        (``log1p(P / 0.1 mm/day)``) stored as the bundle's normalisation; the
        default gives ~0.2 mm/day for a zero network output, ``(3.4, 0.5)`` ~3 mm/day
        (a host model whose water budget depends on the plugin, e.g. SPEEDY's
        interactive mode, needs a plausible magnitude).
    overwrite
        Replace an existing bundle.
    num_blocks, attention_levels
        Residual blocks per level and attention levels of both networks (e.g. a
        paper-sized network for benchmarks: base 64, ``(1, 2, 2, 4)``, 2, ``(3,)``).
    noise_channels
        Noise-embedding size of the denoiser.

    Returns
    -------
    pathlib.Path
        The bundle directory.
    """
    specs = [v if isinstance(v, VariableSpec) else get_variable(v) for v in variables]
    statics = list(static_fields)
    rng_state = torch.random.get_rng_state()
    gen = torch.Generator().manual_seed(seed)
    reg = UNet(
        UNetConfig(
            in_channels=len(specs) + len(statics),
            base_channels=base_channels,
            channel_mult=channel_mult,
            num_blocks=num_blocks,
            attention_levels=attention_levels,
            periodic_lon=coarse_grid.periodic,
        )
    )
    den_net = UNet(
        UNetConfig(
            in_channels=2 + len(statics),
            base_channels=base_channels,
            channel_mult=channel_mult,
            num_blocks=num_blocks,
            attention_levels=attention_levels,
            periodic_lon=fine_grid.periodic,
            noise_channels=noise_channels,
        )
    )
    # Deterministic weights independent of the global RNG's history.
    with torch.no_grad():
        for net in (reg, den_net):
            for p in net.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * (0.3 / np.sqrt(max(1, p[0].numel()))))
    torch.random.set_rng_state(rng_state)
    denoiser = EDMPrecond(den_net, sigma_data=1.0)
    manifest = manifest_from_networks(
        variables=[s.to_dict() for s in specs],
        coarse_grid=coarse_grid,
        fine_grid=fine_grid,
        predictor_stats={s.name: typical_stats(s) for s in specs},
        precip_stats=precip_stats,
        regression=reg,
        denoiser=denoiser,
        sigma_c=sigma_c,
        transform=PrecipTransform("log1p", 0.1),
        sampler=sampler or SamplerConfig(name="heun", steps=2, start="sdedit", sdedit_sigma=1.0),
        static_fields={"coarse": statics, "fine": statics},
        provenance={"data": "random weights (precipdiff.testing.models.make_tiny_bundle)"},
    )
    return save_bundle(path, manifest, reg, denoiser, overwrite=overwrite)


def random_predictors(
    bundle_variables: Sequence[str | VariableSpec],
    grid: LatLonGrid,
    times: int = 1,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Physically plausible random predictor fields for a grid.

    Parameters
    ----------
    bundle_variables
        Variable names or specs.
    grid
        Grid of the fields.
    times
        Number of time steps.
    seed
        Random seed.

    Returns
    -------
    dict
        ``name -> (times, nlat, nlon)`` float32, within each variable's range.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for v in bundle_variables:
        spec = v if isinstance(v, VariableSpec) else get_variable(v)
        mean, std = typical_stats(spec)
        x = mean + std * rng.standard_normal((times, *grid.shape))
        if spec.valid_range is not None:
            x = np.clip(x, *spec.valid_range)
        out[spec.name] = x.astype(np.float32)
    return out
