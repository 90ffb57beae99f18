"""From raw hourly ERA5 in a Zarr store to a bundle: the documented commands, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from era5_helpers import PREDICTORS, store_experiment

from precipdiff.offline.cli.main import main


@pytest.mark.slow
def test_prepare_train_bundle_from_an_arco_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = store_experiment(tmp_path, days=10, steps=4, batch=4, workers=1)
    path = tmp_path / "era5_tiny.yaml"
    path.write_text(yaml.safe_dump(raw))

    assert main(["prepare", str(path)]) == 0
    out = capsys.readouterr().out
    assert "4 predictors on (8, 16), pr on (32, 64)" in out and "store complete" in out
    assert main(["train", "all", str(path), "--threads", "1", "--no-progress"]) == 0

    from precipdiff.generator import PrecipGenerator

    bundle = tmp_path / "bundle"
    gen = PrecipGenerator.from_bundle(bundle, device="cpu", use_compiled=False)
    man = gen.manifest
    assert man.variable_names() == list(PREDICTORS)
    assert gen.coarse_grid.shape == (8, 16) and gen.fine_grid.shape == (32, 64)
    stats = json.loads((tmp_path / "run" / "regression" / "stats.json").read_text())
    store_stats = json.loads((tmp_path / "store.zarr" / ".zattrs").read_text())
    store_stats = store_stats["precipdiff_store"]["stats"]
    # Same split as prepare's: the stage's statistics are the store's.
    assert stats["stats"]["target_mean"] == pytest.approx(store_stats["target_mean"], rel=1e-12)
    assert stats["train_period"][0].startswith("2000-01-01")
    assert stats["validation_period"][1].startswith("2000-01-10")
    assert man.provenance["data"]["regression"]["n_train"] == 8
    rng = np.random.default_rng(0)
    pred = {
        "hus850": 0.006 + 0.001 * rng.standard_normal((2, 8, 16)),
        "ua850": 5 * rng.standard_normal((2, 8, 16)),
        "va850": 5 * rng.standard_normal((2, 8, 16)),
        "psl": 101300 + 500 * rng.standard_normal((2, 8, 16)),
    }
    res = gen.generate(pred, members=2, seed=0)
    assert res.fine.shape == (2, 2, 32, 64) and np.all(res.fine >= 0)
    ev = json.loads((bundle / "evaluation.json").read_text())
    assert np.isfinite(ev["regression"]["regression"]["mae"])
    assert np.isfinite(ev["diffusion_given_truth"]["crps_ensemble"])


@pytest.mark.gpu
@pytest.mark.slow
def test_cuda_bf16_training_from_a_store(tmp_path: Path) -> None:
    """GPU path: bf16 autocast, pinned batches from loader workers (skips without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    from era5_helpers import config

    from precipdiff.offline.train.ddp import setup
    from precipdiff.offline.train.diffusion import train_diffusion
    from precipdiff.offline.train.prepare import run_prepare
    from precipdiff.offline.train.regression import train_regression

    raw = store_experiment(tmp_path, days=10, steps=8, batch=4, workers=2)
    raw["device"] = "cuda"
    cfg = config(raw)
    assert run_prepare(cfg, progress=False).complete
    ctx = setup("cuda")
    for train in (train_regression, train_diffusion):
        res = train(cfg, ctx)
        assert res.finished and np.all(np.isfinite(res.train_losses))
