"""Diffusion conditioned on the regression's out-of-fold output, features and statics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from train_helpers import tiny_config

from precipdiff.errors import ConfigError
from precipdiff.offline.cli.main import main
from precipdiff.offline.train.config import (
    ConditionConfig,
    StaticFile,
    TrainConfig,
    from_dict,
    to_dict,
)
from precipdiff.offline.train.regression import cross_fit_blocks


def test_cross_fit_blocks_are_contiguous_and_partition() -> None:
    train = np.array([9, 1, 2, 3, 4, 5, 6, 7, 8, 0])
    blocks = cross_fit_blocks(train, 3)
    assert [b.tolist() for b in blocks] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]


def _conditioned(tmp_path: Path, data_root: Path, steps: int = 6) -> TrainConfig:
    cfg = tiny_config(tmp_path / "run", data_root, steps=steps)
    assert cfg.regression is not None and cfg.diffusion is not None
    cfg.regression.cross_fit_folds = 2
    cfg.regression.data.features = ["rh850", "psl"]
    cfg.diffusion.patch_size = None
    cfg.diffusion.condition = ConditionConfig(
        source="regression",
        predictors=True,
        statics=["lat_ramp", "lon_ramp", "target_climatology", "valid_fraction"],
        static_files=[StaticFile("tas_climatology", "climate4r_iberia/EOBS_Iberia_tas.nc", "tg")],
    )
    return cfg


def test_condition_config_is_checked(tmp_path: Path) -> None:
    cfg = to_dict(tiny_config(tmp_path / "run", tmp_path))
    cfg["regression"]["cross_fit_folds"] = 0
    cfg["diffusion"]["condition"] = {"source": "regression"}
    with pytest.raises(ConfigError, match="cross_fit_folds"):
        from_dict(TrainConfig, cfg)
    cfg["diffusion"]["condition"] = {"source": "oracle"}
    with pytest.raises(ConfigError, match=r"condition\.source"):
        from_dict(TrainConfig, cfg)
    cfg["diffusion"]["condition"] = {"statics": ["orography"]}
    with pytest.raises(ConfigError, match="orography"):
        from_dict(TrainConfig, cfg)
    cfg["diffusion"]["condition"] = {}
    cfg["regression"]["cross_fit_folds"] = 1
    with pytest.raises(ConfigError, match="cross_fit_folds"):
        from_dict(TrainConfig, cfg)
    cfg["regression"]["cross_fit_folds"] = 0
    cfg["regression"]["data"]["features"] = ["rh500"]
    with pytest.raises(ConfigError, match="hus500"):
        from_dict(TrainConfig, cfg)


def test_condition_features_config_is_checked(tmp_path: Path) -> None:
    # the denoiser's own feature channels: only with predictors, from the regression's
    # predictors, and never a regression feature's name for another quantity
    cfg = to_dict(tiny_config(tmp_path / "run", tmp_path))
    cfg["regression"]["data"]["features"] = ["rh850", "psl"]
    cond = cfg["diffusion"]["condition"]
    cond.update(predictors=True, features=["rh850", "psl", "hus850"])
    assert from_dict(TrainConfig, cfg).diffusion.condition.features == ["rh850", "psl", "hus850"]
    cond.update(predictors=False)
    with pytest.raises(ConfigError, match="predictors: true"):
        from_dict(TrainConfig, cfg)
    cond.update(predictors=True, features=[])
    with pytest.raises(ConfigError, match="empty"):
        from_dict(TrainConfig, cfg)
    cond.update(features=["ua850"])
    with pytest.raises(ConfigError, match=r"ua850.*regression\.data\.predictors"):
        from_dict(TrainConfig, cfg)
    cond.update(features=[{"name": "psl", "op": "identity", "inputs": ["hus850"]}])
    with pytest.raises(ConfigError, match=r"psl.*computed differently"):
        from_dict(TrainConfig, cfg)
    cond.update(features=[{"name": "x", "op": "cube", "inputs": ["hus850"]}])
    with pytest.raises(ConfigError, match="cube"):
        from_dict(TrainConfig, cfg)


@pytest.mark.needs_data
@pytest.mark.slow
def test_regression_conditioned_denoiser_end_to_end(tmp_path: Path, shared_data: Path) -> None:
    cfg = _conditioned(tmp_path, shared_data)
    path = tmp_path / "cond.yaml"
    path.write_text(yaml.safe_dump(to_dict(cfg)))
    assert main(["train", "all", str(path), "--threads", "1", "--no-progress"]) == 0
    run = tmp_path / "run"

    # every training day predicted by a model that never saw it; folds are time blocks
    with np.load(run / "regression" / "condition.npz") as z:
        oof, fold, cond = z["out_of_fold"], z["fold"], z["condition"]
    from precipdiff.offline.train.diffusion import prepare_diffusion

    stage, data = prepare_diffusion(cfg)
    train, val = data.split.train, data.split.validation
    assert oof[train].all() and not oof[val].any()
    assert set(fold[train]) == {0, 1} and np.all(np.diff(fold[np.sort(train)]) >= 0)
    assert (run / "regression" / "fold0" / "best.safetensors").is_file()

    from precipdiff.generator import PrecipGenerator

    bundle = run / "bundle"
    gen = PrecipGenerator.from_bundle(bundle, device="cpu", use_compiled=False)
    man = gen.manifest
    assert man.variable_names() == ["hus850", "psl", "ta850"]
    assert [f.name for f in man.feature_specs()] == ["rh850", "psl"]
    assert man.condition == {"source": "regression", "predictors": True}
    assert man.static_fields["fine"] == [
        "lat_ramp",
        "lon_ramp",
        "target_climatology",
        "valid_fraction",
        "tas_climatology",
    ]

    # The runtime rebuilds the training condition exactly (validation days): the noised
    # channel's source (the main regression), the upsampled features, the statics.
    items = np.arange(3)
    batch = stage.val_set.batch(items)
    raw = data.read(val[items])
    preds = {n: raw[n] for n in ("hus850", "psl", "ta850")}
    x_feat = gen.features_normalised(preds)
    np.testing.assert_allclose(x_feat, data.normalise_predictors(raw), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gen.regress(preds), cond[val[items]], rtol=1e-4, atol=1e-4)
    extra = batch["extra"].numpy()
    n_feat = 2
    np.testing.assert_allclose(extra[:, :n_feat], gen._upsample(x_feat), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        extra[:, n_feat:],
        np.broadcast_to(gen.bundle.statics_fine, extra[:, n_feat:].shape),
        rtol=1e-6,
        atol=1e-6,
    )
    res = gen.generate(preds, members=2, seed=0)
    assert res.fine.shape == (3, 2, 16, 28) and np.all(res.fine >= 0)
    with pytest.raises(ConfigError, match="x_feat"):
        gen.sample_fine(gen.regress(preds), None)

    # `precipdiff train distill`: a two-evaluation student of this bundle, trained on
    # its training days with its own pipeline (the teacher must use dpmpp2m)
    from precipdiff.bundle import default_sampler
    from precipdiff.offline.train.bundle import set_default_sampler

    assert main(["train", "distill", str(path), "--distill-steps", "2"]) != 0  # heun teacher
    assert not (run / "bundle-distilled").exists()
    set_default_sampler(bundle, default_sampler().to_dict(), reason="test: default teacher")
    args = ["train", "distill", str(path), "--distill-steps", "3", "--distill-members", "1"]
    assert main(args) == 0
    student = PrecipGenerator.from_bundle(run / "bundle-distilled", use_compiled=False)
    assert student.sampler.nfe == 2
    assert "3 Adam steps" in student.manifest.provenance["distilled"]["note"]
    assert student.manifest.condition == man.condition
    res = student.generate(preds, members=2, seed=0)
    assert res.fine.shape == (3, 2, 16, 28) and np.all(np.isfinite(res.fine))


def test_residual_target_is_fine_minus_clean_condition(tmp_path: Path) -> None:
    # condition.residual: the denoiser's target is z_fine - up(z_coarse) (0 where the
    # fine cell is missing); the condition channel is still the noised upsampled field.
    import torch
    from torch import nn

    from precipdiff.offline.train.diffusion import DiffusionStage

    cfg = tiny_config(tmp_path / "run", tmp_path)
    assert cfg.diffusion is not None
    cfg.diffusion.patch_size = None
    g = torch.Generator().manual_seed(0)
    batch = {
        "y": torch.randn((2, 1, 8, 12), generator=g),
        "mask": (torch.rand((2, 1, 8, 12), generator=g) > 0.2).float(),
        "cond": torch.randn((2, 1, 8, 12), generator=g),
    }
    outs = {}
    for residual in (False, True):
        cfg.diffusion.condition = ConditionConfig(residual=residual)
        stage = DiffusionStage(nn.Identity(), None, None, cfg.diffusion)  # type: ignore[arg-type]
        gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
        outs[residual] = stage._pairs(batch, gens, patch=False)
    (y0, c0, m0), (y1, c1, m1) = outs[False], outs[True]
    torch.testing.assert_close(c1, c0)  # the same noised condition
    torch.testing.assert_close(m1, m0)
    torch.testing.assert_close(y1, y0 - batch["cond"])
    assert torch.all(y1[m1 == 0] == 0)
    assert from_dict(TrainConfig, to_dict(cfg)).diffusion.condition.residual  # type: ignore[union-attr]


@pytest.mark.needs_data
@pytest.mark.slow
def test_denoiser_own_features_end_to_end(tmp_path: Path, shared_data: Path) -> None:
    # `diffusion.condition.features`: the denoiser reads absolute humidity besides the
    # regression's relative humidity; its statistics come from the training split only,
    # the bundle records both, and the runtime rebuilds the training condition exactly.
    cfg = _conditioned(tmp_path, shared_data, steps=3)
    assert cfg.diffusion is not None
    cfg.diffusion.condition.features = ["rh850", "psl", "hus850"]
    path = tmp_path / "cond.yaml"
    path.write_text(yaml.safe_dump(to_dict(cfg)))
    assert main(["train", "all", str(path), "--threads", "1", "--no-progress"]) == 0

    from precipdiff.generator import PrecipGenerator
    from precipdiff.offline.train.diffusion import prepare_diffusion

    stage, data = prepare_diffusion(cfg)
    gen = PrecipGenerator.from_bundle(tmp_path / "run" / "bundle", device="cpu", use_compiled=False)
    man = gen.manifest
    assert [f.name for f in man.feature_specs()] == ["rh850", "psl"]
    assert [f["name"] for f in man.condition["features"]] == ["rh850", "psl", "hus850"]
    assert gen.bundle.denoiser.net.config.in_channels == 2 + 3 + 5
    train_hus = data.read(data.split.train)["hus850"].astype(np.float64)
    norm = man.normalisation["predictors"]["hus850"]
    np.testing.assert_allclose(norm["mean"], train_hus.mean(), rtol=1e-5)
    np.testing.assert_allclose(norm["std"], train_hus.std(), rtol=1e-3)

    items = np.arange(3)
    batch = stage.val_set.batch(items)
    raw = data.read(data.split.validation[items])
    preds = {n: raw[n] for n in ("hus850", "psl", "ta850")}
    x_cond = gen.condition_features_normalised(preds)
    assert x_cond is not None and x_cond.shape[1] == 3
    extra = batch["extra"].numpy()
    np.testing.assert_allclose(extra[:, :3], gen._upsample(x_cond), rtol=1e-5, atol=1e-5)
    res = gen.generate(preds, members=2, seed=0)
    assert res.fine.shape == (3, 2, 16, 28) and np.all(res.fine >= 0)
