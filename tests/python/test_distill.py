"""Two-evaluation student distilled from a bundle's sampler (offline.train.distill)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from precipdiff.bundle import default_sampler
from precipdiff.errors import ConfigError
from precipdiff.generator import PrecipGenerator
from precipdiff.grids import LatLonGrid, coarsen_grid
from precipdiff.offline.train.distill import (
    distill,
    student_sampler,
    teacher_draws,
    write_student_bundle,
)
from precipdiff.testing.models import DEFAULT_VARIABLES, make_tiny_bundle, random_predictors

FINE = LatLonGrid.regular(0.5, lat_min=40.25, lat_max=47.75, lon_min=0.25, lon_max=9.75)
COARSE = coarsen_grid(FINE, 4)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> tuple[Path, PrecipGenerator, np.ndarray]:
    path = make_tiny_bundle(
        tmp_path_factory.mktemp("d") / "teacher",
        coarse_grid=COARSE,
        fine_grid=FINE,
        sampler=default_sampler(),
    )
    gen = PrecipGenerator.from_bundle(path, device="cpu", use_compiled=False)
    x = random_predictors(DEFAULT_VARIABLES, COARSE, times=3, seed=1)
    return path, gen, gen.regress(x)


def test_student_sampler_is_two_evaluations():
    cfg = student_sampler(80.0, 5.0)
    assert cfg.nfe == 2
    assert cfg.name == "dpmpp2m" and cfg.start == "noise"


def test_teacher_draws_record_the_pipeline(teacher):
    # the recorded last evaluation of each member is the member the pipeline returns,
    # and the recorded start is sigma_max times the member's noise
    _, gen, y_c = teacher
    draws = teacher_draws(gen, y_c, None, members=2, seed=4)
    z = gen.sample_fine(y_c, members=2, seed=4)
    assert len(draws) == 6 and draws.sigma_max == gen.sampler.sigma_start
    np.testing.assert_allclose(draws.sample[:, 0].numpy(), z.reshape(6, *FINE.shape), atol=1e-5)
    assert 0.5 * draws.sigma_max < float(draws.x_start.std()) < 2.0 * draws.sigma_max


def test_teacher_must_be_dpmpp2m(teacher):
    _, gen, y_c = teacher
    from precipdiff.diffusion import SamplerConfig

    old = gen.sampler
    gen.sampler = SamplerConfig(name="heun", steps=2)
    try:
        with pytest.raises(ConfigError, match="dpmpp2m"):
            teacher_draws(gen, y_c, None, members=1, seed=0)
    finally:
        gen.sampler = old


def test_distilled_student_learns_and_ships_as_a_bundle(teacher, tmp_path):
    path, gen, y_c = teacher
    draws = teacher_draws(gen, y_c, None, members=4, seed=0)
    torch.manual_seed(0)
    student, losses = distill(gen.bundle.denoiser, draws, steps=100, batch_size=4, lr=3e-3)
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])  # 0.63 -> 0.17 here
    with pytest.raises(ConfigError, match="teacher draws"):
        distill(gen.bundle.denoiser, draws, steps=1, batch_size=64)
    (path / "MODEL_CARD.md").write_text("the teacher's card")
    out = write_student_bundle(path, student, tmp_path / "student", student_sampler(), "test")
    assert not (out / "MODEL_CARD.md").exists()  # the teacher's card is not the student's
    sgen = PrecipGenerator.from_bundle(out, device="cpu", use_compiled=False)
    assert sgen.sampler.nfe == 2
    assert sgen.manifest.provenance["distilled"]["note"] == "test"
    assert sgen.manifest.provenance["name"] == "student"
    # the student bundle's members are the student's two-step map of the same noise
    z = sgen.sample_fine(y_c, members=4, seed=0)
    with torch.no_grad():
        s_max, s_mid = torch.tensor(draws.sigma_max), torch.tensor(5.0)
        d0 = student(draws.x_start, s_max.expand(len(draws)), draws.cond)
        x1 = d0 + (5.0 / draws.sigma_max) * draws.x_start
        d1 = student(x1, s_mid.expand(len(draws)), draws.cond)
    np.testing.assert_allclose(d1[:, 0].numpy(), z.reshape(12, *FINE.shape), atol=1e-4)
