"""Training loop: loss goes down on real data, resume retraces the run, seeds reproduce."""

from __future__ import annotations

import csv
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from train_helpers import tiny_config

from precipdiff.offline.train.config import OptimConfig
from precipdiff.offline.train.ddp import DistContext
from precipdiff.offline.train.diffusion import train_diffusion
from precipdiff.offline.train.loop import lr_factor
from precipdiff.offline.train.regression import masked_mse, train_regression

CPU = DistContext(0, 1, torch.device("cpu"))


def test_lr_schedule_warmup_then_cosine() -> None:
    cfg = OptimConfig(steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(10, cfg) == pytest.approx(1.0)
    assert lr_factor(55, cfg) == pytest.approx(0.55)
    assert lr_factor(100, cfg) == pytest.approx(0.1)
    vals = [lr_factor(s, cfg) for s in range(10, 100)]
    assert all(a >= b for a, b in itertools.pairwise(vals))


def test_masked_mse_ignores_missing_cells() -> None:
    pred = torch.zeros(2, 1, 3, 3)
    target = torch.zeros(2, 1, 3, 3)
    target[0, 0, 0, 0] = 1e6  # a "sea" cell with a huge error
    mask = torch.ones_like(target)
    mask[0, 0, 0, 0] = 0
    loss = masked_mse(pred, target, mask)
    assert torch.equal(loss, torch.zeros(2))
    target[1, 0, 1, 1] = 3.0
    assert masked_mse(pred, target, mask)[1].item() == pytest.approx(9.0 / 9.0)


@pytest.mark.needs_data
def test_regression_loss_decreases_on_real_data(tmp_path: Path, shared_data: Path) -> None:
    cfg = tiny_config(tmp_path / "run", shared_data, steps=40, batch=16, paper_condition=True)
    res = train_regression(cfg, CPU)
    assert res.finished and res.step == 40
    first, last = np.mean(res.train_losses[:5]), np.mean(res.train_losses[-5:])
    assert last < 0.8 * first, (first, last)
    assert math.isfinite(res.best_val_loss)
    out = tmp_path / "run" / "regression"
    assert (out / "best.safetensors").exists() and (out / "stats.json").exists()
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == list(range(1, 41))
    assert sum(1 for r in rows if r["val_loss"]) == 2
    # the public reader gives the same losses
    from precipdiff.offline.train.loop import read_learning_curves

    curves = read_learning_curves(out / "metrics.csv")
    assert [s for s, _ in curves["train"]] == list(range(1, 41))
    assert [v for _, v in curves["val"]] == [float(r["val_loss"]) for r in rows if r["val_loss"]]


@pytest.mark.needs_data
def test_diffusion_loss_decreases_on_real_data(tmp_path: Path, shared_data: Path) -> None:
    cfg = tiny_config(tmp_path / "run", shared_data, steps=40, batch=16, paper_condition=True)
    res = train_diffusion(cfg, CPU)
    first, last = np.mean(res.train_losses[:5]), np.mean(res.train_losses[-5:])
    assert last < 0.8 * first, (first, last)


def _weights(run: Path, stage: str) -> dict[str, torch.Tensor]:
    return load_file(run / stage / "checkpoint" / "model.safetensors")


@pytest.mark.needs_data
@pytest.mark.parametrize("stage", ["regression", "diffusion"])
def test_resume_retraces_uninterrupted_run(tmp_path: Path, shared_data: Path, stage: str) -> None:
    train = train_regression if stage == "regression" else train_diffusion
    straight = tiny_config(tmp_path / "a", shared_data, steps=10, paper_condition=True)
    full = train(straight, CPU)

    resumed_cfg = tiny_config(tmp_path / "b", shared_data, steps=10, paper_condition=True)
    part1 = train(resumed_cfg, CPU, stop_at=4)
    assert not part1.finished and part1.step == 4
    # A fresh process would rebuild everything from the config: do the same.
    part2 = train(tiny_config(tmp_path / "b", shared_data, steps=10, paper_condition=True), CPU)
    assert part2.finished and part2.step == 10
    np.testing.assert_allclose(
        part1.train_losses + part2.train_losses, full.train_losses, rtol=1e-5, atol=1e-6
    )
    wa, wb = _weights(tmp_path / "a", stage), _weights(tmp_path / "b", stage)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)
    assert part2.best_val_loss == pytest.approx(full.best_val_loss, rel=1e-5)
    # The metrics log of the resumed run has each step exactly once.
    rows = list(csv.DictReader((tmp_path / "b" / stage / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == list(range(1, 11))
    # Checkpoints are safetensors + JSON only (no pickle).
    files = {p.suffix for p in (tmp_path / "b" / stage / "checkpoint").iterdir()}
    assert files == {".safetensors", ".json"}


@pytest.mark.needs_data
def test_seed_reproduces_and_changes_run(tmp_path: Path, shared_data: Path) -> None:
    a = train_diffusion(
        tiny_config(tmp_path / "a", shared_data, steps=4, paper_condition=True), CPU
    )
    b = train_diffusion(
        tiny_config(tmp_path / "b", shared_data, steps=4, paper_condition=True), CPU
    )
    assert a.train_losses == b.train_losses
    cfg = tiny_config(tmp_path / "c", shared_data, steps=4, paper_condition=True)
    cfg.seed = 1
    c = train_diffusion(cfg, CPU)
    assert c.train_losses != a.train_losses


@pytest.mark.gpu
@pytest.mark.needs_data
def test_cuda_bf16_training_reduces_loss(tmp_path: Path, shared_data: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    cfg = tiny_config(tmp_path / "run", shared_data, steps=40, batch=16, paper_condition=True)
    cfg.device = "cuda"
    cfg.precision = "bf16"
    from precipdiff.offline.train.ddp import setup

    res = train_diffusion(cfg, setup("cuda"))
    assert np.mean(res.train_losses[-5:]) < 0.8 * np.mean(res.train_losses[:5])


def test_cuda_requested_without_gpu_names_problem() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    from precipdiff.errors import DeviceError
    from precipdiff.offline.train.ddp import setup

    with pytest.raises(DeviceError, match="CUDA"):
        setup("cuda")
