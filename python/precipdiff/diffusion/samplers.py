"""Diffusion samplers: EDM Heun/Euler (Karras et al. 2022) and DPM-Solver++(2M).

One pure function, one equation per line, names as in the papers. Randomness
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
``sigma = 0`` is a plain Euler step), Euler ``steps``, DPM-Solver++(2M) ``steps``.

Which sampler is accurate at few evaluations
--------------------------------------------
With the exact denoiser of a known target (``bench/bench_sampler_analytic.py``,
``tests/python/test_samplers.py``) the EDM Euler/Heun samplers on the
``rho = 7`` schedule are far off at few steps: Euler 8 gives a standard deviation
33 % too small for N(2, 0.5^2), Heun 4 (7 evaluations) several times too large,
and even Heun 18 (35 evaluations) is 5 % too wide. ``dpmpp2m`` is the
multistep second-order solver of Lu et al. (2022b, "DPM-Solver++", Algorithm 2) in
the data-prediction form for ``x = x0 + sigma * n`` (alpha = 1, lambda = -log
sigma), on the ``"loglinear"`` schedule with a *jump*: from ``sigma_max`` it
steps straight to ``sigma_jump`` (an exponential-integrator step is exact while the
denoiser is constant in ``x``, which holds for ``sigma`` far above the data's
scale, so that first evaluation only has to estimate the mean), then
log-uniformly down to ``sigma_min``; the last evaluation returns the denoised
field. With 8 evaluations (``bundle.default_sampler()``: ``sigma_jump`` 5,
``sigma_min`` 0.03) its standard deviation is within 3 % and its mean within
1 % of the target for Gaussians of width 0.15 to 1.5 and for two-component
mixtures of that scale (normalised precipitation has ``sigma_data = 1``); wider
targets lose spread in the jump (-4 % at width 2). Full table:
``bench/bench_sampler_analytic.py`` and docs/generator.md.
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

SAMPLER_NAMES = ("heun", "euler", "dpmpp2m")
SAMPLER_STARTS = ("noise", "sdedit")
SCHEDULES = ("karras", "loglinear")


@dataclass(frozen=True)
class SamplerConfig:
    """Settings of the EDM sampler (defaults stored in the bundle manifest).

    Parameters
    ----------
    name
        ``"heun"`` (2nd order, EDM Algorithm 1/2), ``"euler"`` (1st order) or
        ``"dpmpp2m"`` (DPM-Solver++(2M), deterministic; the accurate few-step
        choice, see the module docstring).
    steps
        Number of noise levels ``N`` before the final ``sigma = 0``.
    sigma_min, sigma_max
        Noise-level range of the schedule (``sigma_max`` is ignored for
        ``start="sdedit"``, which starts at ``sdedit_sigma``).
    rho
        Schedule exponent (EDM Eq. 5, ``schedule="karras"``); 7 concentrates
        steps at low noise.
    schedule
        ``"karras"`` (EDM Eq. 5) or ``"loglinear"`` (levels equally spaced in
        ``log sigma``).
    sigma_jump
        Only with ``schedule="loglinear"``: the second level; the first step
        goes from the start level straight to it and the other ``steps - 1``
        levels are log-uniform from ``sigma_jump`` to ``sigma_min``. ``None``:
        log-uniform from the start level.
    s_churn
        Total stochasticity (EDM Algorithm 2, Heun/Euler only); 0 gives the
        deterministic ODE sampler.
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
    schedule: str = "karras"
    sigma_jump: float | None = None
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
        if self.schedule not in SCHEDULES:
            raise ConfigError(
                f"sampler schedule {self.schedule!r} is not supported; expected one of {SCHEDULES}"
            )
        if self.sigma_jump is not None:
            if self.schedule != "loglinear":
                raise ConfigError("sampler sigma_jump needs schedule='loglinear'")
            if not self.sigma_min < self.sigma_jump < self.sigma_start:
                raise ConfigError(
                    f"sampler needs sigma_min < sigma_jump < the start level "
                    f"({self.sigma_min} < {self.sigma_jump} < {self.sigma_start})"
                )
            if self.steps < 2:
                raise ConfigError("sampler sigma_jump needs steps >= 2")
        if self.name == "dpmpp2m" and self.s_churn > 0:
            raise ConfigError(
                "sampler 'dpmpp2m' is deterministic: s_churn must be 0 "
                f"(got {self.s_churn}); use 'heun' or 'euler' for churn"
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
        if self.start == "sdedit" and self.sdedit_sigma is not None:
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
    """Noise levels ``t_0 > ... > t_{N-1} > t_N = 0`` (EDM Eq. 5 or log-linear).

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
    if config.schedule == "loglinear":
        if config.sigma_jump is None:
            t = np.exp(np.linspace(np.log(hi), np.log(lo), n))
        else:
            rest = np.exp(np.linspace(np.log(config.sigma_jump), np.log(lo), n - 1))
            t = np.concatenate([[hi], rest])
        return np.append(t, 0.0)
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
    """Draw samples with the configured sampler (EDM Heun/Euler or DPM-Solver++(2M)).

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
    if config.name == "dpmpp2m":
        return _dpmpp2m(denoise_fn, cond, x_next, t_steps, from_noise=config.start == "noise")
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


def _dpmpp2m(
    denoise_fn: DenoiseFn,
    cond: torch.Tensor,
    x: torch.Tensor,
    t_steps: torch.Tensor,
    from_noise: bool,
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2), variance-exploding form.

    With ``x = x0 + sigma * n`` (``alpha = 1``), ``lambda = -log sigma`` and the
    denoiser ``D`` as data prediction, one step from ``s`` to ``t`` with
    ``h = lambda_t - lambda_s`` is ``x_t = (sigma_t / sigma_s) x_s - expm1(-h) D``;
    from the second step on ``D`` is replaced by the multistep extrapolation
    ``(1 + 1 / (2 r)) D_s - 1 / (2 r) D_prev`` with ``r = h_prev / h``. The step to
    ``sigma = 0`` returns the last denoised estimate (one evaluation per level).
    From pure noise the first step is the ``sigma_max -> infinity`` limit of the
    DDIM step, ``x = D + (sigma_1 / sigma_max) x_T``, which removes the mean offset
    of starting from zero-mean noise (``-mean * sigma_1 / sigma_max`` otherwise).
    """
    d_prev: torch.Tensor | None = None
    h_prev = 0.0
    n = t_steps.numel() - 1
    for i in range(n):
        t_cur, t_next = t_steps[i], t_steps[i + 1]
        d_cur = denoise_fn(x, t_cur, cond)
        if float(t_next) == 0.0:
            return d_cur
        h = math.log(float(t_cur)) - math.log(float(t_next))
        if d_prev is None and from_noise:
            # First step from pure noise x = sigma_max * n: the marginal at sigma_max is
            # centred on the data mean, not on 0, so the DDIM step's shrunken mean
            # (1 - t_next / t_cur) D would carry an offset of D * t_next / t_cur into the
            # sample. Its sigma_max -> infinity limit, x = D + t_next * n, has none.
            x = (t_next / t_cur) * x + d_cur
        else:
            if d_prev is None:
                d_hat = d_cur  # first step: DPM-Solver++(1) = DDIM
            else:
                r = h_prev / h
                d_hat = (1.0 + 1.0 / (2.0 * r)) * d_cur - (1.0 / (2.0 * r)) * d_prev
            x = (t_next / t_cur) * x - math.expm1(-h) * d_hat
        d_prev, h_prev = d_cur, h
    return x
