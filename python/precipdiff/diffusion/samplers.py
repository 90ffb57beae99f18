"""EDM samplers (Karras et al. 2022, Algorithms 1 and 2): Heun and Euler.

One pure function, one equation per line, names as in the paper. Randomness
comes from one ``torch.Generator`` per batch element (member), drawn in a fixed
order (initial noise, then churn noise step by step), so a member's sample does
not depend on which other members share its batch.

Two starts are supported:

* ``start="noise"``: ``x_0 = sigma_max * n`` (pure noise), as in EDM;
* ``start="sdedit"``: ``x_0 = x_init + sdedit_sigma * n`` where ``x_init`` is
  the upsampled coarse condition (SDEdit, Meng et al. 2022): the large scales of
  the condition survive noising at ``sdedit_sigma`` and the sampler only has to
  regenerate the smaller scales, which needs fewer steps.

Network evaluations per sample (NFE): Heun ``2 * steps - 1`` (the last step to
``sigma = 0`` is a plain Euler step), Euler ``steps``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from precipdiff.errors import ConfigError, reject_unknown_keys

#: ``denoise_fn(x, sigma, cond) -> D(x; sigma, cond)``; ``sigma`` is a 0-d tensor.
DenoiseFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

SAMPLER_NAMES = ("heun", "euler")
SAMPLER_STARTS = ("noise", "sdedit")


@dataclass(frozen=True)
class SamplerConfig:
    """Settings of the EDM sampler (defaults stored in the bundle manifest).

    Parameters
    ----------
    name
        ``"heun"`` (2nd order, EDM Algorithm 1/2) or ``"euler"`` (1st order).
    steps
        Number of noise levels ``N`` before the final ``sigma = 0``.
    sigma_min, sigma_max
        Noise-level range of the schedule (``sigma_max`` is ignored for
        ``start="sdedit"``, which starts at ``sdedit_sigma``).
    rho
        Schedule exponent (EDM Eq. 5); 7 concentrates steps at low noise.
    s_churn
        Total stochasticity (EDM Algorithm 2); 0 gives the deterministic ODE
        sampler.
    s_tmin, s_tmax
        Noise-level range where churn is applied; ``s_tmax=None`` means no
        upper limit.
    s_noise
        Scale of the churn noise (slightly above 1 compensates detail loss).
    start
        ``"noise"`` (pure noise at ``sigma_max``) or ``"sdedit"`` (the
        condition noised at ``sdedit_sigma``).
    sdedit_sigma
        Start level of ``start="sdedit"``.
    """

    name: str = "heun"
    steps: int = 4
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float | None = None
    s_noise: float = 1.0
    start: str = "noise"
    sdedit_sigma: float | None = None

    def __post_init__(self) -> None:
        if self.name not in SAMPLER_NAMES:
            raise ConfigError(
                f"sampler name {self.name!r} is not supported; expected one of {SAMPLER_NAMES}"
            )
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ConfigError(f"sampler steps must be a positive integer, got {self.steps!r}")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ConfigError(
                f"sampler needs 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}"
            )
        if self.rho <= 0:
            raise ConfigError(f"sampler rho must be positive, got {self.rho}")
        if self.s_churn < 0 or self.s_noise <= 0:
            raise ConfigError(
                f"sampler needs s_churn >= 0 and s_noise > 0, got {self.s_churn}, {self.s_noise}"
            )
        if self.start not in SAMPLER_STARTS:
            raise ConfigError(
                f"sampler start {self.start!r} is not supported; expected one of {SAMPLER_STARTS}"
            )
        if self.start == "sdedit":
            if self.sdedit_sigma is None or not self.sdedit_sigma > self.sigma_min:
                raise ConfigError(
                    f"start='sdedit' needs sdedit_sigma > sigma_min={self.sigma_min}, "
                    f"got {self.sdedit_sigma}"
                )

    @property
    def nfe(self) -> int:
        """Network evaluations per sample."""
        return 2 * self.steps - 1 if self.name == "heun" else self.steps

    @property
    def sigma_start(self) -> float:
        """The first noise level of the schedule."""
        if self.start == "sdedit":
            assert self.sdedit_sigma is not None
            return float(self.sdedit_sigma)
        return float(self.sigma_max)

    def replace(self, **changes: Any) -> SamplerConfig:
        """Return a copy with some fields changed (validated).

        Parameters
        ----------
        **changes
            Field values to change.

        Returns
        -------
        SamplerConfig
            The new configuration.
        """
        return SamplerConfig.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict.

        Returns
        -------
        dict
            The configuration.
        """
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SamplerConfig:
        """Build from a dict, rejecting unknown keys.

        Parameters
        ----------
        data
            As produced by :meth:`to_dict`.

        Returns
        -------
        SamplerConfig
            The configuration.
        """
        reject_unknown_keys(cls, data, "sampler settings")
        return cls(**data)


def sigma_steps(config: SamplerConfig) -> np.ndarray:
    """Noise levels ``t_0 > ... > t_{N-1} > t_N = 0`` (EDM Eq. 5).

    Parameters
    ----------
    config
        Sampler settings.

    Returns
    -------
    numpy.ndarray
        ``steps + 1`` float64 noise levels, the last one 0.
    """
    n = config.steps
    hi, lo, rho = config.sigma_start, config.sigma_min, config.rho
    if n == 1:
        return np.array([hi, 0.0])
    i = np.arange(n, dtype=np.float64)
    t = (hi ** (1 / rho) + i / (n - 1) * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    return np.append(t, 0.0)


def member_generators(
    seed: int, time_indices: Sequence[int], members: Sequence[int], device: torch.device | str
) -> list[torch.Generator]:
    """One generator per ``(time, member)`` seeded from ``SeedSequence([seed, t, k])``.

    Parameters
    ----------
    seed
        User seed (non-negative).
    time_indices, members
        Equal-length sequences: element ``i`` of the batch is member
        ``members[i]`` of time ``time_indices[i]``.
    device
        Device of the generators (CPU and CUDA streams differ).

    Returns
    -------
    list of torch.Generator
        The generators, in batch order.
    """
    if seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed}")
    gens = []
    for t, k in zip(time_indices, members, strict=True):
        state = np.random.SeedSequence([int(seed), int(t), int(k)]).generate_state(2, np.uint64)
        g = torch.Generator(device=device)
        g.manual_seed(int(state[0] >> np.uint64(1)))  # 63-bit seed
        gens.append(g)
    return gens


def _randn(
    shape: Sequence[int], generators: Sequence[torch.Generator], like: torch.Tensor
) -> torch.Tensor:
    """Draw standard normal noise, each batch element from its own generator."""
    return torch.stack(
        [
            torch.randn(tuple(shape), generator=g, device=like.device, dtype=like.dtype)
            for g in generators
        ]
    )


@torch.no_grad()
def sample(
    denoise_fn: DenoiseFn,
    cond: torch.Tensor,
    config: SamplerConfig,
    generators: Sequence[torch.Generator],
    x_init: torch.Tensor | None = None,
) -> torch.Tensor:
    """Draw samples with the EDM Heun/Euler sampler.

    Parameters
    ----------
    denoise_fn
        ``D(x; sigma, cond)``, e.g. an :class:`~precipdiff.diffusion.edm.EDMPrecond`.
    cond
        ``(batch, C, H, W)`` condition passed unchanged to every evaluation.
    config
        Sampler settings.
    generators
        One generator per batch element.
    x_init
        ``(batch, 1, H, W)`` start field for ``start="sdedit"`` (the upsampled
        coarse condition); ignored for ``start="noise"``.

    Returns
    -------
    torch.Tensor
        ``(batch, 1, H, W)`` samples (network space).
    """
    b, _, h, w = cond.shape
    if len(generators) != b:
        raise ConfigError(f"{len(generators)} generators for a batch of {b}")
    t_steps = torch.as_tensor(sigma_steps(config), dtype=cond.dtype, device=cond.device)
    shape = (1, h, w)
    # Initial sample x_0 (Algorithm 1/2, line 2; SDEdit: noised start field).
    x_next = _randn(shape, generators, cond) * t_steps[0]
    if config.start == "sdedit":
        if x_init is None:
            raise ConfigError("start='sdedit' needs x_init (the upsampled condition)")
        x_next = x_next + x_init
    s_tmax = math.inf if config.s_tmax is None else config.s_tmax
    n = config.steps
    for i in range(n):
        t_cur, t_next = t_steps[i], t_steps[i + 1]
        x_cur = x_next
        # Churn: increase noise temporarily (Algorithm 2, lines 4-6).
        gamma = (
            min(config.s_churn / n, math.sqrt(2.0) - 1.0)
            if config.s_tmin <= float(t_cur) <= s_tmax
            else 0.0
        )
        if gamma > 0:
            t_hat = t_cur + gamma * t_cur
            eps = _randn(shape, generators, cond) * config.s_noise
            x_hat = x_cur + torch.sqrt(t_hat**2 - t_cur**2) * eps
        else:
            t_hat, x_hat = t_cur, x_cur
        # Euler step (lines 7-8).
        d_cur = (x_hat - denoise_fn(x_hat, t_hat, cond)) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur
        # Heun's 2nd-order correction (lines 9-11), skipped on the last step to 0.
        if config.name == "heun" and i < n - 1:
            d_prime = (x_next - denoise_fn(x_next, t_next, cond)) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
    return x_next
