"""Training from a prepared store: stage data, patch loading, the data order, workers."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from era5_helpers import PREDICTORS, config, store_experiment

from precipdiff.errors import ConfigError
from precipdiff.offline.train.data import (
    ConditionInputs,
    DiffusionDataset,
    RegressionDataset,
    _Moments,
)
from precipdiff.offline.train.diffusion import prepare_diffusion
from precipdiff.offline.train.loader import BatchStream, StepPlan, patch_corner, sample_seeds
from precipdiff.offline.train.prepare import run_prepare
from precipdiff.offline.train.regression import prepare_regression
from precipdiff.offline.train.store_data import (
    PatchDiffusionDataset,
    StoreStageData,
    open_stage_data,
)
from precipdiff.transforms import PrecipTransform


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("store")
    raw = store_experiment(tmp, days=10)
    assert run_prepare(config(raw), progress=False).complete
    return raw


def test_stage_data_reads_only_the_store(experiment: dict[str, Any]) -> None:
    cfg = config(experiment)
    assert cfg.regression is not None
    transform = PrecipTransform.from_dict(cfg.transform)
    data = open_stage_data(cfg.regression.data, transform)
    assert isinstance(data, StoreStageData)
    assert data.split.train.tolist() == list(range(8)) and data.split.validation.tolist() == [8, 9]
    raw = data.read(np.array([3, 1]))
    assert "fine" not in raw._data  # type: ignore[attr-defined]  # not read unless asked for
    assert raw["coarse"].shape == (2, 8, 16) and raw["fine"].shape == (2, 32, 64)
    np.testing.assert_array_equal(raw["fine"], data.store.read_fine(np.array([3, 1])))
    # Statistics of this split from the per-day moments = a pass over the training days.
    batch = data.read(data.split.train)
    for n in PREDICTORS:
        m = _Moments()
        m.add(batch[n])
        assert data.stats.predictor_mean[n] == pytest.approx(m.result(n)[0], rel=1e-10)
        assert data.stats.predictor_std[n] == pytest.approx(m.result(n)[1], rel=1e-8)
    m = _Moments()
    m.add(transform.forward(batch["coarse"]))
    assert (data.stats.target_mean, data.stats.target_std) == pytest.approx(m.result("pr"))
    # Another transform than the store's moments: recomputed from the coarse target.
    other = PrecipTransform.from_dict({"kind": "log1p", "eps": 0.5})
    data2 = open_stage_data(cfg.regression.data, other)
    m = _Moments()
    m.add(other.forward(batch["coarse"]))
    assert (data2.stats.target_mean, data2.stats.target_std) == pytest.approx(m.result("pr"))
    # The regression dataset (normalised predictors, coarse target) works unchanged.
    ds = RegressionDataset(data, data.split.train)
    b = ds.batch(np.array([0, 5]))
    assert b["x"].shape == (2, 4, 8, 16) and b["y"].shape == (2, 1, 8, 16)


def test_store_config_rules(experiment: dict[str, Any]) -> None:
    raw = copy.deepcopy(experiment)
    raw["regression"]["data"]["predictors"][0]["path"] = "arco.zarr"
    with pytest.raises(ConfigError, match=r"variables \['hus850'\] are read from the store"):
        config(raw)
    raw = copy.deepcopy(experiment)
    raw["regression"]["data"]["crop_lat"] = [0, 8]
    with pytest.raises(ConfigError, match=r"data.crop_lat cannot be set with data.store"):
        config(raw)
    raw = copy.deepcopy(experiment)
    raw["regression"]["data"]["predictors"].append({"name": "ta850"})
    cfg = config(raw)
    assert cfg.regression is not None
    with pytest.raises(ConfigError, match=r"no predictor\(s\) \['ta850'\]; it holds"):
        open_stage_data(cfg.regression.data, PrecipTransform())
    raw = copy.deepcopy(experiment)
    raw["regression"]["data"]["coarsen_factor"] = 2
    cfg = config(raw)
    assert cfg.regression is not None
    with pytest.raises(ConfigError, match=r"coarsen_factor 2 differs from the store's 4"):
        open_stage_data(cfg.regression.data, PrecipTransform())
    raw = copy.deepcopy(experiment)
    raw["regression"]["data"]["store"] = str(Path(experiment["run_dir"]) / "nowhere.zarr")
    cfg = config(raw)
    assert cfg.regression is not None
    with pytest.raises(ConfigError, match="does not exist: run `precipdiff prepare CONFIG`"):
        open_stage_data(cfg.regression.data, PrecipTransform())


def test_patches_read_from_the_store_equal_cut_whole_fields(experiment: dict[str, Any]) -> None:
    """Each sample's patch window + its condition rows = the whole-field batch, cut; bitwise."""
    cfg = config(experiment)
    stage, data = prepare_diffusion(cfg)
    assert isinstance(stage.train_set, PatchDiffusionDataset)
    whole = DiffusionDataset(data, data.split.train)
    items = np.array([0, 7, 3, 3, 5])
    seeds = sample_seeds(0, 11, np.arange(5))
    cut = stage.train_set.seeded_batch(items, seeds)
    full = whole.batch(items)
    for i, seed in enumerate(seeds):
        g = torch.Generator().manual_seed(int(seed))
        r0, c0 = patch_corner(g, 32, 64, 16, 16, 4)
        for key in ("y", "mask", "cond", "extra"):
            torch.testing.assert_close(
                cut[key][i], full[key][i, :, r0 : r0 + 16, c0 : c0 + 16], rtol=0, atol=0
            )
    # Corners at the seam (longitude wrap) and the poles (one-sided interpolation).
    ds = stage.train_set
    for day, (r0, c0) in ((2, (0, 0)), (4, (16, 48)), (6, (16, 0)), (1, (0, 48))):
        c, cm = data.normalise_target(data.store.read_coarse(np.array([day])))
        up = data.upsampler(np.where(cm > 0, c, 0.0).astype(np.float32))[0]
        got = ds._truth_window(r0, c0, data.store.read_coarse_day(day))
        np.testing.assert_array_equal(got, up[r0 : r0 + 16, c0 : c0 + 16])
    # Hence the stage's loss is the same: the patch is drawn from the same generator state.
    model = stage.model.eval()
    with torch.no_grad():
        a = stage.loss(model, cut, seeds)
        b = stage.loss(model, full, seeds)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_step_plan_shards_days_across_ranks() -> None:
    one = StepPlan(seed=3, n_train=23, global_batch=4)
    assert one.steps_per_epoch == 5 and one.local_batch == 4
    for epoch in (0, 1):
        shard = one.shard(epoch)
        assert np.unique(shard).size == shard.size == 20
        ranks = [StepPlan(3, 23, 4, rank=r, world_size=2) for r in range(2)]
        parts = [p.shard(epoch) for p in ranks]
        assert not set(parts[0]) & set(parts[1])  # disjoint shards
        assert set(parts[0]) | set(parts[1]) == set(shard)  # together the epoch
        for step in range(epoch * 5, epoch * 5 + 5):
            whole = one.at(step)
            mine = [p.at(step) for p in ranks]
            np.testing.assert_array_equal(np.concatenate([m.items for m in mine]), whole.items)
            np.testing.assert_array_equal(np.concatenate([m.seeds for m in mine]), whole.seeds)
    with pytest.raises(ConfigError, match="not divisible by the 3 processes"):
        StepPlan(0, 23, 4, rank=0, world_size=3)
    with pytest.raises(ConfigError, match="exceeds the 3 training samples"):
        StepPlan(0, 3, 4)


@pytest.mark.slow
def test_worker_processes_deliver_the_same_batches(experiment: dict[str, Any]) -> None:
    cfg = config(experiment)
    stage, _ = prepare_diffusion(cfg)
    reg, _ = prepare_regression(cfg)
    for dataset in (stage.train_set, reg.train_set):
        plan = StepPlan(seed=5, n_train=len(dataset), global_batch=4)
        with BatchStream(dataset, plan, 2, 7) as inline:
            ref = [inline.get(s) for s in range(2, 7)]
        with BatchStream(dataset, plan, 2, 7, workers=2, prefetch=2) as ahead:
            got = [ahead.get(s) for s in range(2, 7)]
        for a, b in zip(ref, got, strict=True):
            assert a.keys() == b.keys()
            for k in a:
                torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


@pytest.mark.needs_data
@pytest.mark.slow
def test_workers_on_netcdf_sources_deliver_the_same_batches(
    tmp_path: Path, shared_data: Path
) -> None:
    """Forked workers reopen the netCDF files they read (inherited HDF5 handles are dropped)."""
    from train_helpers import tiny_config

    cfg = tiny_config(tmp_path / "run", shared_data)
    reg, _ = prepare_regression(cfg)
    plan = StepPlan(seed=1, n_train=len(reg.train_set), global_batch=8)
    reg.train_set.batch(np.arange(4))  # the parent has the files open when it forks
    with BatchStream(reg.train_set, plan, 0, 4) as inline:
        ref = [inline.get(s) for s in range(4)]
    with BatchStream(reg.train_set, plan, 0, 4, workers=2) as ahead:
        got = [ahead.get(s) for s in range(4)]
    for a, b in zip(ref, got, strict=True):
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_store_patches_with_regression_condition_features_and_statics(
    experiment: dict[str, Any],
) -> None:
    """A conditioned patch batch (given coarse field, features, statics) = the whole batch, cut."""
    cfg = config(experiment)
    _stage, data = prepare_diffusion(cfg)
    reg_cfg = cfg.regression
    assert reg_cfg is not None
    rdata = open_stage_data(reg_cfg.data, PrecipTransform(), stats=data.stats)
    rng = np.random.default_rng(3)
    n = rdata.split.times.size
    cond = ConditionInputs(
        coarse=rng.standard_normal((n, *rdata.coarse_grid.shape)).astype(np.float32),
        predictors=True,
        statics=rng.standard_normal((2, *rdata.fine_grid.shape)).astype(np.float32),
    )
    assert cfg.diffusion is not None
    patches = PatchDiffusionDataset(rdata, rdata.split.train, cfg.diffusion.patch_size, cond)
    whole = DiffusionDataset(rdata, rdata.split.train, cond)
    items = np.array([0, 7, 3])
    seeds = sample_seeds(0, 5, np.arange(3))
    cut = patches.seeded_batch(items, seeds)
    full = whole.batch(items)
    ph, pw = cfg.diffusion.patch_size
    assert full["extra"].shape[1] == len(reg_cfg.data.predictors) + 2
    for i, seed in enumerate(seeds):
        g = torch.Generator().manual_seed(int(seed))
        r0, c0 = patch_corner(g, 32, 64, ph, pw, 4)
        for key in ("y", "mask", "cond", "extra"):
            torch.testing.assert_close(
                cut[key][i], full[key][i, :, r0 : r0 + ph, c0 : c0 + pw], rtol=0, atol=1e-6
            )
