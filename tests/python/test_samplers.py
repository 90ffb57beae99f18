from pathlib import Path

import numpy as np
import pytest
import torch

from precipdiff.bundle import default_sampler
from precipdiff.diffusion import SamplerConfig, member_generators, sample, sigma_steps
from precipdiff.errors import ConfigError
from precipdiff.testing.analytic import (
    REFERENCE_TARGETS,
    GaussianMixture,
    GaussianRandomField,
    sampler_moment_errors,
)

REPO = Path(__file__).resolve().parents[2]


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
    ("name", "steps", "nfe"),
    [("heun", 18, 35), ("heun", 4, 7), ("euler", 8, 8), ("dpmpp2m", 8, 8)],
)
def test_network_evaluations(name, steps, nfe):
    cfg = SamplerConfig(name=name, steps=steps)
    if name == "dpmpp2m":
        cfg = cfg.replace(schedule="loglinear", sigma_jump=4.0)
    assert cfg.nfe == nfe
    fn, calls = _gaussian_denoiser(1.0)
    cond = torch.zeros(2, 1, 3, 3)
    sample(fn, cond, cfg, member_generators(0, [0, 0], [0, 1], "cpu"))
    assert len(calls) == nfe


def test_default_is_few_step():
    from precipdiff.bundle import default_sampler

    assert default_sampler().nfe <= 8


def _run_errors(cfg: SamplerConfig, target, shape=(8, 1, 128, 128)):
    def fn(denoise, cond):
        gens = member_generators(5, [0] * cond.shape[0], range(cond.shape[0]), "cpu")
        return sample(denoise, cond, cfg, gens)

    return sampler_moment_errors(fn, target, shape)


#: Targets with a standard deviation up to the networks' data scale (sigma_data = 1, the
#: normalised precipitation); the wider ones of REFERENCE_TARGETS are in the bench table.
NARROW_TARGETS = {k: t for k, t in REFERENCE_TARGETS.items() if t.std <= 1.0}

#: Systematic error budget of a shipped default sampler (fraction of the target's std).
SYSTEMATIC_BUDGET = 0.03


def _shipped_samplers() -> list[tuple[str, SamplerConfig]]:
    from precipdiff.bundle import default_sampler, read_manifest

    out = [("default_sampler()", default_sampler())]
    for manifest in sorted((REPO / "models").glob("*/manifest.json")):
        m = read_manifest(manifest.parent)
        if "distilled" in m.provenance:
            continue  # a student's sampler belongs to its own network: test_shipped_students
        out.append((manifest.parent.name, m.sampler_config()))
    return out


def _shipped_students() -> list[str]:
    from precipdiff.bundle import read_manifest

    return [
        p.parent.name
        for p in sorted((REPO / "models").glob("*/manifest.json"))
        if "distilled" in read_manifest(p.parent).provenance
    ]


@pytest.mark.parametrize("name", _shipped_students())
def test_shipped_students(name):
    # A shipped distilled student (precipdiff train distill) is its teacher's bundle with
    # its own denoiser and a two-evaluation sampler; the teacher ships beside it and its
    # default sampler is checked against the analytic targets above.
    from precipdiff.bundle import read_manifest

    student = read_manifest(REPO / "models" / name)
    teacher_dir = REPO / "models" / Path(student.provenance["distilled"]["teacher"]).name
    teacher = read_manifest(teacher_dir)
    assert student.sampler_config().nfe <= 2
    assert student.files["regression.safetensors"] == teacher.files["regression.safetensors"]
    assert student.files["denoiser.safetensors"] != teacher.files["denoiser.safetensors"]
    assert student.provenance["distilled"]["teacher_sampler"] == teacher.sampler
    assert (REPO / "models" / name / "MODEL_CARD.md").is_file()


@pytest.mark.parametrize(("label", "cfg"), _shipped_samplers())
@pytest.mark.parametrize("target_name", sorted(NARROW_TARGETS))
def test_shipped_default_samplers_match_analytic_targets(label, cfg, target_name):
    # Every shipped default sampler, driven by the exact denoiser of a known target,
    # reproduces its mean and std within the systematic budget plus three standard
    # errors of the estimate (n = 131072 draws: SE ~ 0.2 % of the std), at <= 8
    # network evaluations. EDM Euler 8 fails this by -33 % (test below).
    target = NARROW_TARGETS[target_name]
    assert cfg.nfe <= 8, f"{label}: {cfg.nfe} network evaluations"
    m_err, s_err, se = _run_errors(cfg, target)
    tol_std = SYSTEMATIC_BUDGET + 3 * se
    tol_mean = SYSTEMATIC_BUDGET + 3 / np.sqrt(8 * 128 * 128)
    assert abs(s_err) < tol_std, f"{label} on {target_name}: std off by {s_err:+.3%}"
    assert abs(m_err) < tol_mean, f"{label} on {target_name}: mean off by {m_err:+.3%} of std"


def _field_power(cfg: SamplerConfig, target: GaussianRandomField, band, members=16):
    cond = torch.zeros((members, 1, *target.size))
    gens = member_generators(3, [0] * members, range(members), "cpu")
    return target.band_power_ratio(sample(target.denoiser(), cond, cfg, gens), band)


def test_random_field_target_is_exact():
    # The target's own draws have its spectrum (the check the sampler tests rely on).
    t = GaussianRandomField((64, 64))
    x = t.sample(16, torch.Generator().manual_seed(0))
    for band in ((2, 4), (4, 8)):
        ratio, se = t.band_power_ratio(x, band)
        assert abs(ratio - 1.0) < 4 * se, band
    with pytest.raises(ValueError, match="no Fourier mode"):
        t.band_power_ratio(x, (100, 200))


@pytest.mark.parametrize(("label", "cfg"), _shipped_samplers())
@pytest.mark.parametrize("band", [(2, 4), (4, 8)])
def test_shipped_default_samplers_keep_small_scale_power(label, cfg, band):
    # A stationary Gaussian field with the per-mode amplitudes of E-OBS winter
    # precipitation in the networks' space (0.27 at the Nyquist wavenumber, power ~
    # k^-3; GaussianRandomField's defaults) and its exact (Wiener) denoiser: the
    # sampler must return the power at 1-2 and 2-4 degree wavelengths (2-4 and 4-8
    # cells of 0.5 deg) within twice the 3 % std budget plus three standard errors.
    # The power the Iberia networks miss at 1-2 degrees is therefore not the
    # sampler's (docs/generator.md, "Small scales").
    ratio, se = _field_power(cfg, GaussianRandomField((64, 64)), band)
    assert abs(ratio - 1.0) < 2 * SYSTEMATIC_BUDGET + 3 * se, f"{label}: power x{ratio:.3f}"


def test_default_sampler_loses_power_of_weak_small_scales():
    # The documented limit: modes narrower than about 0.1 (normalised units) lose
    # spread in the final denoising at sigma_min = 0.03 -- a field 5x weaker at small
    # scales than E-OBS loses ~20 % of its 1-2 degree power; a many-step reference
    # does not. Bounds pin the sign and size, not noise.
    weak = GaussianRandomField((64, 64), small_std=0.05)
    ratio, _ = _field_power(default_sampler(), weak, (2, 4))
    assert 0.70 < ratio < 0.88
    ratio, se = _field_power(SamplerConfig(name="heun", steps=96), weak, (2, 4))
    assert abs(ratio - 1.0) < 0.03 + 3 * se


@pytest.mark.parametrize(
    ("cfg", "lo", "hi"),
    [
        (SamplerConfig(name="euler", steps=8), -0.40, -0.25),
        (SamplerConfig(name="heun", steps=4), 1.0, 5.0),
        (SamplerConfig(name="heun", steps=18), 0.03, 0.08),
    ],
)
def test_edm_samplers_on_rho7_schedule_are_biased_at_few_steps(cfg, lo, hi):
    # The known answer that motivated dpmpp2m: on N(2, 0.5^2) EDM Euler 8 loses a
    # third of the spread, Heun 4 explodes and even Heun 18 (35 evaluations) is ~5 %
    # too wide. Bounds are wide on purpose: they pin the sign and size, not noise.
    _, s_err, _ = _run_errors(cfg, REFERENCE_TARGETS["N(2, 0.5^2)"], (4, 1, 64, 64))
    assert lo < s_err < hi


@pytest.mark.parametrize(
    "cfg",
    [
        SamplerConfig(name="heun", steps=96),
        SamplerConfig(name="euler", steps=256),
        SamplerConfig(name="dpmpp2m", steps=24, schedule="loglinear", sigma_jump=8.0),
    ],
)
def test_many_step_samplers_converge(cfg):
    # With many steps every sampler converges to the target distribution.
    m_err, s_err, _ = _run_errors(cfg, REFERENCE_TARGETS["N(2, 0.5^2)"], (4, 1, 64, 64))
    assert abs(m_err) < 0.03
    assert abs(s_err) < 0.03


def test_dpmpp2m_first_step_removes_start_offset():
    # From zero-mean noise at sigma_max the plain DDIM first step keeps an offset of
    # -mean * sigma_1 / sigma_max in the sample mean; the limit step does not.
    cfg = SamplerConfig(
        name="dpmpp2m", steps=8, schedule="loglinear", sigma_max=10.0, sigma_jump=4.0
    )
    target = GaussianMixture.gaussian(5.0, 0.5)
    m_err, _, _ = _run_errors(cfg, target, (4, 1, 64, 64))
    # The DDIM first step would leave -mean / sigma_max = -0.5 (in units of the std); what
    # remains here is the denoiser's own response at sigma_max = 10 (s^2 / sigma_max^2).
    assert abs(m_err) < 0.05


def test_dpmpp2m_schedule_and_validation():
    cfg = SamplerConfig(
        name="dpmpp2m",
        steps=5,
        schedule="loglinear",
        sigma_max=80.0,
        sigma_jump=4.0,
        sigma_min=0.01,
    )
    t = sigma_steps(cfg)
    assert t[0] == pytest.approx(80.0) and t[1] == pytest.approx(4.0)
    assert t[-2] == pytest.approx(0.01) and t[-1] == 0.0
    assert np.allclose(np.diff(np.log(t[1:-1])), np.log(0.01 / 4.0) / 3)
    plain = sigma_steps(cfg.replace(sigma_jump=None))
    assert np.allclose(np.diff(np.log(plain[:-1])), np.log(0.01 / 80.0) / 4)
    with pytest.raises(ConfigError, match="s_churn"):
        SamplerConfig(name="dpmpp2m", s_churn=1.0)
    with pytest.raises(ConfigError, match="loglinear"):
        SamplerConfig(name="euler", sigma_jump=4.0)
    with pytest.raises(ConfigError, match="sigma_jump"):
        SamplerConfig(name="dpmpp2m", schedule="loglinear", sigma_jump=100.0)
    with pytest.raises(ConfigError, match="schedule"):
        SamplerConfig(schedule="cosine")


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
