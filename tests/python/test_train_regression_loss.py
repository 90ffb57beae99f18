"""Regression losses: ``mse_physical`` is mean-seeking, ``mse_transformed`` is not.

Fitting a single constant (in the network's normalised transformed space) to
skewed synthetic "precipitation" shows what each loss estimates: the old
transformed-space MSE lands near the geometric mean of ``P + eps`` (the dry bias
of the demo regression), the physical MSE on the arithmetic mean.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from precipdiff.errors import ConfigError
from precipdiff.offline.train.config import RegressionStageConfig, from_dict, load_config
from precipdiff.offline.train.regression import RegressionLoss, masked_mse
from precipdiff.transforms import PrecipTransform

EPS = 0.1


def _skewed_sample(n: int = 4000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    wet = rng.random(n) < 0.4
    return np.where(wet, rng.gamma(0.7, 8.0, n), 0.0).astype(np.float32)


def _fit_constant(kind: str, p: np.ndarray, weight: float = 0.1) -> float:
    """Fit one constant to the targets with the given loss; return it in mm/day."""
    tf = PrecipTransform("log1p", eps=EPS)
    z = tf.forward(p)
    mean, std = float(z.mean()), float(z.std())
    crit = RegressionLoss(kind, tf, mean, std, physical_weight=weight)
    target = torch.from_numpy((z - mean) / std).reshape(1, 1, -1, 1)
    mask = torch.ones_like(target)
    c = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([c], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = crit(c.expand_as(target), target, mask).mean()
        loss.backward()
        return loss

    for _ in range(5):
        opt.step(closure)
    return float(crit.to_physical(c.detach())[0])


def test_physical_loss_fits_the_arithmetic_mean() -> None:
    p = _skewed_sample()
    arith = float(p.mean())
    geo = float(np.exp(np.log(p + EPS).mean()) - EPS)
    assert geo < 0.5 * arith  # the sample is skewed enough to tell them apart
    assert _fit_constant("mse_physical", p) == pytest.approx(arith, rel=1e-3)
    old = _fit_constant("mse_transformed", p)
    assert old == pytest.approx(geo, rel=1e-3)  # the old loss: geometric mean of P + eps
    mixed = _fit_constant("mixed", p)
    assert geo < mixed < arith


def test_physical_loss_ignores_missing_cells_and_has_gradient_when_dry() -> None:
    tf = PrecipTransform("log1p", eps=EPS)
    crit = RegressionLoss("mse_physical", tf, 0.5, 1.2)
    target = torch.zeros(2, 1, 3, 3)
    mask = torch.ones_like(target)
    target[0, 0, 0, 0] = 1e6  # a "sea" cell: would overflow exp and dominate
    mask[0, 0, 0, 0] = 0
    pred = torch.full_like(target, -3.0, requires_grad=True)  # below P = 0
    loss = crit(pred, torch.where(mask > 0, target, 0.0), mask)
    assert torch.isfinite(loss).all()
    target2 = torch.ones_like(target)  # wetter than the prediction
    loss2 = crit(pred, target2, mask).sum()
    loss2.backward()
    assert pred.grad is not None and (pred.grad[mask > 0] < 0).all()


def test_transformed_loss_is_the_old_masked_mse() -> None:
    g = torch.Generator().manual_seed(1)
    pred, target = torch.randn(3, 1, 4, 5, generator=g), torch.randn(3, 1, 4, 5, generator=g)
    mask = (torch.rand(3, 1, 4, 5, generator=g) > 0.3).float()
    crit = RegressionLoss("mse_transformed", PrecipTransform("log1p", eps=EPS), 0.3, 1.1)
    assert torch.equal(crit(pred, target, mask), masked_mse(pred, target, mask))
    mixed = RegressionLoss("mixed", PrecipTransform("log1p", eps=EPS), 0.3, 1.1, 0.25)
    phys = RegressionLoss("mse_physical", PrecipTransform("log1p", eps=EPS), 0.3, 1.1)
    torch.testing.assert_close(
        mixed(pred, target, mask),
        masked_mse(pred, target, mask) + 0.25 * phys(pred, target, mask),
    )


def test_config_loss_default_and_validation() -> None:
    data = {
        "target": {"name": "pr", "path": "x.nc"},
        "predictors": [{"name": "psl", "path": "p"}],
        "split": {"validation_start": "2000-01-01", "validation_end": "2000-12-31"},
    }
    cfg = from_dict(RegressionStageConfig, {"data": data})
    assert cfg.loss == "mse_transformed"  # old configs keep their meaning
    with pytest.raises(ConfigError, match=r"regression\.loss='mae'"):
        from_dict(RegressionStageConfig, {"data": data, "loss": "mae"})
    with pytest.raises(ConfigError, match="physical_weight"):
        from_dict(RegressionStageConfig, {"data": data, "loss": "mixed", "physical_weight": 0.0})
    with pytest.raises(ConfigError, match="not supported"):
        RegressionLoss("huber", PrecipTransform("log1p", eps=EPS), 0.0, 1.0)
    assert math.isfinite(cfg.physical_weight)


def test_demo_config_uses_a_mean_seeking_loss() -> None:
    repo = Path(__file__).resolve().parents[2]
    cfg = load_config(repo / "configs" / "iberia_demo.yaml")
    assert cfg.regression is not None and cfg.regression.loss in ("mse_physical", "mixed")


@pytest.mark.needs_data
def test_mse_physical_trains_on_real_data(tmp_path: Path, shared_data: Path) -> None:
    from train_helpers import tiny_config

    from precipdiff.offline.train.ddp import DistContext
    from precipdiff.offline.train.regression import prepare_regression, train_regression

    cfg = tiny_config(tmp_path / "run", shared_data, steps=30, batch=16)
    assert cfg.regression is not None
    cfg.regression.loss = "mse_physical"
    stage, _ = prepare_regression(cfg)
    assert stage.criterion is not None and stage.criterion.kind == "mse_physical"
    res = train_regression(cfg, DistContext(0, 1, torch.device("cpu")))
    assert res.finished and math.isfinite(res.best_val_loss)
    # the loss is in (mm/day)^2: far above the transformed-space values (~1)
    assert np.mean(res.train_losses[-5:]) < np.mean(res.train_losses[:5])
    assert np.mean(res.train_losses[:5]) > 2.0
