import numpy as np
import pytest
import torch

from precipdiff.diffusion import SamplerConfig, member_generators, sample, sigma_steps
from precipdiff.errors import ConfigError


def _gaussian_denoiser(sd: float, mean: float = 0.0):
    """The exact denoiser E[x0 | x] for x0 ~ N(mean, sd^2) per pixel."""
    calls = []

    def fn(x, sigma, cond):
        calls.append(float(sigma))
        s2 = float(sigma) ** 2
        return mean + (x - mean) * sd**2 / (s2 + sd**2)

    return fn, calls


def test_schedule_matches_edm_eq5():
    cfg = SamplerConfig(steps=18)
    t = sigma_steps(cfg)
    assert len(t) == 19 and t[-1] == 0.0
    assert t[0] == pytest.approx(80.0) and t[-2] == pytest.approx(0.002)
    assert np.all(np.diff(t) < 0)
    i = 5
    expected = (80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert t[i] == pytest.approx(expected)
    sd = sigma_steps(SamplerConfig(steps=3, start="sdedit", sdedit_sigma=1.5))
    assert sd[0] == pytest.approx(1.5)
    assert list(sigma_steps(SamplerConfig(steps=1))) == [80.0, 0.0]


@pytest.mark.parametrize(
    ("name", "steps", "nfe"), [("heun", 18, 35), ("heun", 4, 7), ("euler", 8, 8)]
)
def test_network_evaluations(name, steps, nfe):
    cfg = SamplerConfig(name=name, steps=steps)
    assert cfg.nfe == nfe
    fn, calls = _gaussian_denoiser(1.0)
    cond = torch.zeros(2, 1, 3, 3)
    sample(fn, cond, cfg, member_generators(0, [0, 0], [0, 1], "cpu"))
    assert len(calls) == nfe


def test_default_is_few_step():
    from precipdiff.bundle import default_sampler

    assert default_sampler().nfe <= 8


@pytest.mark.parametrize(
    "cfg",
    [
        SamplerConfig(name="heun", steps=18),
        SamplerConfig(name="heun", steps=32, s_churn=10.0, s_tmin=0.05, s_tmax=50.0),
        SamplerConfig(name="euler", steps=64),
    ],
)
def test_recovers_gaussian_distribution(cfg):
    # With the exact denoiser of N(2, 0.5^2) the sampler must produce that distribution.
    fn, _ = _gaussian_denoiser(0.5, mean=2.0)
    cond = torch.zeros(4, 1, 32, 32)
    x = sample(fn, cond, cfg, member_generators(3, [0] * 4, range(4), "cpu"))
    assert float(x.mean()) == pytest.approx(2.0, abs=0.05)
    assert float(x.std()) == pytest.approx(0.5, rel=0.08)


def test_sdedit_keeps_large_scales_of_start():
    fn, _ = _gaussian_denoiser(1.0)
    x_init = torch.full((1, 1, 16, 16), 3.0)
    cfg = SamplerConfig(steps=4, start="sdedit", sdedit_sigma=0.3)
    x = sample(fn, torch.zeros(1, 1, 16, 16), cfg, member_generators(0, [0], [0], "cpu"), x_init)
    # starting at low noise the sample stays near the start field (shrunk towards the prior)
    assert float(x.mean()) == pytest.approx(3.0 / (1 + 0.3**2), abs=0.2)
    with pytest.raises(ConfigError, match="x_init"):
        sample(fn, torch.zeros(1, 1, 4, 4), cfg, member_generators(0, [0], [0], "cpu"))


def test_member_independent_of_batch_and_stochastic_reproducible():
    fn, _ = _gaussian_denoiser(1.0)
    cfg = SamplerConfig(steps=5, s_churn=20.0)
    cond = torch.zeros(3, 1, 6, 7)
    batch = sample(fn, cond, cfg, member_generators(11, [4, 4, 4], [0, 1, 2], "cpu"))
    alone = sample(fn, cond[:1], cfg, member_generators(11, [4], [1], "cpu"))
    torch.testing.assert_close(batch[1:2], alone, rtol=0, atol=0)
    again = sample(fn, cond, cfg, member_generators(11, [4, 4, 4], [0, 1, 2], "cpu"))
    torch.testing.assert_close(batch, again, rtol=0, atol=0)
    other = sample(fn, cond[:1], cfg, member_generators(12, [4], [1], "cpu"))
    assert not torch.equal(other, alone)
    t_other = sample(fn, cond[:1], cfg, member_generators(11, [5], [1], "cpu"))
    assert not torch.equal(t_other, alone)


def test_config_validation():
    with pytest.raises(ConfigError, match="name"):
        SamplerConfig(name="dpm")
    with pytest.raises(ConfigError, match="steps"):
        SamplerConfig(steps=0)
    with pytest.raises(ConfigError, match="sdedit_sigma"):
        SamplerConfig(start="sdedit")
    with pytest.raises(ConfigError, match="sigma_min"):
        SamplerConfig(sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ConfigError, match="unknown key"):
        SamplerConfig.from_dict({"steps": 3, "order": 2})
    cfg = SamplerConfig(steps=3)
    assert SamplerConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.replace(steps=5).steps == 5
    with pytest.raises(ConfigError, match="seed"):
        member_generators(-1, [0], [0], "cpu")
