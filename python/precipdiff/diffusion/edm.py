"""EDM preconditioning and training loss (Karras et al. 2022), with condition noise.

The denoiser ``D(x; sigma, c)`` of Karras et al. (2022, "Elucidating the design
space of diffusion-based generative models", Table 1) wraps a raw network ``F``::

    c_skip  = sigma_data**2 / (sigma**2 + sigma_data**2)
    c_out   = sigma * sigma_data / sqrt(sigma**2 + sigma_data**2)
    c_in    = 1 / sqrt(sigma**2 + sigma_data**2)
    c_noise = log(sigma) / 4
    D(x; sigma, c) = c_skip * x + c_out * F(concat(c_in * x, c), c_noise)

The condition ``c`` is the regression's coarse precipitation upsampled to the
fine grid and *noised* at level ``sigma_c`` (Aich et al. 2025, Sect. 4.2), plus
optional static fine fields. Noising the condition wipes its small scales, so
the denoiser learns to regenerate them; at inference the same noise wipes the
biased small scales of an ESM-driven condition.
"""

from __future__ import annotations

import torch
from torch import nn

from precipdiff.errors import ConfigError


class EDMPrecond(nn.Module):
    """EDM-preconditioned denoiser around a :class:`~precipdiff.nn.unet.UNet`.

    Parameters
    ----------
    net
        The raw network; its ``in_channels`` must equal ``1 + cond_channels``
        and it must have a noise embedding (``noise_channels > 0``).
    sigma_data
        Standard deviation of the (normalised, transformed) target data.
    """

    def __init__(self, net: nn.Module, sigma_data: float = 1.0) -> None:
        super().__init__()
        if not sigma_data > 0:
            raise ConfigError(f"EDMPrecond.sigma_data must be positive, got {sigma_data}")
        self.net = net
        self.sigma_data = float(sigma_data)

    def forward(
        self, x_noisy: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor
    ) -> torch.Tensor:
        """Denoise ``x_noisy`` at noise level ``sigma`` given the condition.

        Parameters
        ----------
        x_noisy
            ``(batch, 1, H, W)`` noisy field.
        sigma
            Noise level: a scalar or ``(batch,)`` tensor, > 0.
        cond
            ``(batch, C, H, W)`` condition (noised upsampled coarse field and
            static fields).

        Returns
        -------
        torch.Tensor
            The denoised estimate ``D(x; sigma, c)``, shaped like ``x_noisy``.
        """
        sigma = sigma.to(x_noisy.dtype).reshape(-1)
        if sigma.numel() == 1:
            sigma = sigma.expand(x_noisy.shape[0])
        s = sigma[:, None, None, None]
        sd = self.sigma_data
        c_skip = sd**2 / (s**2 + sd**2)
        c_out = s * sd / torch.sqrt(s**2 + sd**2)
        c_in = 1.0 / torch.sqrt(s**2 + sd**2)
        c_noise = torch.log(sigma) / 4.0
        inp = torch.cat([c_in * x_noisy, cond], dim=1)
        # A reduced-precision copy of the network (precipdiff.perf.precision) runs in its
        # own dtype; the preconditioning around it stays in the sampler's float32.
        dtype = _param_dtype(self.net, inp.dtype)
        f_x = self.net(inp.to(dtype), c_noise).to(x_noisy.dtype)
        return c_skip * x_noisy + c_out * f_x


def _param_dtype(net: nn.Module, default: torch.dtype) -> torch.dtype:
    """Return the dtype of the first floating-point parameter of ``net`` (or ``default``)."""
    for p in net.parameters():
        if p.is_floating_point():
            return p.dtype
    return default


def add_condition_noise(
    cond: torch.Tensor, sigma_c: float, generators: list[torch.Generator] | None = None
) -> torch.Tensor:
    """Noise the upsampled coarse condition: ``cond + sigma_c * N(0, 1)``.

    Parameters
    ----------
    cond
        ``(batch, C, H, W)`` upsampled coarse field(s) in network space.
    sigma_c
        Condition noise level (stored in the bundle); 0 returns ``cond``.
    generators
        One generator per batch element (see
        :func:`precipdiff.diffusion.samplers.member_generators`), so each member's
        noise does not depend on the batch; ``None`` uses the global RNG
        (training).

    Returns
    -------
    torch.Tensor
        The noised condition.
    """
    if sigma_c < 0:
        raise ConfigError(f"condition noise sigma_c must be >= 0, got {sigma_c}")
    if sigma_c == 0:
        return cond
    if generators is None:
        noise = torch.randn_like(cond)
    else:
        if len(generators) != cond.shape[0]:
            raise ConfigError(
                f"{len(generators)} generators for a batch of {cond.shape[0]} conditions"
            )
        noise = torch.stack(
            [
                torch.randn(cond.shape[1:], generator=g, device=cond.device, dtype=cond.dtype)
                for g in generators
            ]
        )
    return cond + sigma_c * noise


def edm_loss(
    precond: EDMPrecond,
    x0: torch.Tensor,
    cond: torch.Tensor,
    *,
    p_mean: float = -1.2,
    p_std: float = 1.2,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """EDM training loss (Karras et al. 2022, Eq. 8 with Table 1's choices).

    ``sigma ~ exp(N(p_mean, p_std**2))``, ``lambda(sigma) = (sigma**2 +
    sigma_data**2) / (sigma * sigma_data)**2``.

    Parameters
    ----------
    precond
        The preconditioned denoiser.
    x0
        ``(batch, 1, H, W)`` clean targets (normalised transformed precipitation).
    cond
        ``(batch, C, H, W)`` condition, already noised at ``sigma_c``
        (:func:`add_condition_noise`) and with static fields appended.
    p_mean, p_std
        Log-normal noise-level distribution.
    generator
        Optional generator for reproducible noise.

    Returns
    -------
    torch.Tensor
        Scalar mean weighted loss.
    """
    b = x0.shape[0]
    rnd = torch.randn(b, generator=generator, device=x0.device, dtype=x0.dtype)
    sigma = torch.exp(rnd * p_std + p_mean)
    sd = precond.sigma_data
    weight = (sigma**2 + sd**2) / (sigma * sd) ** 2
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    denoised = precond(x0 + sigma[:, None, None, None] * noise, sigma, cond)
    return (weight[:, None, None, None] * (denoised - x0) ** 2).mean()
