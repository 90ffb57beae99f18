"""Tiny training configs built from the shipped demo config (shared by test_train_*)."""

from __future__ import annotations

from pathlib import Path

from precipdiff.offline.train.config import ConditionConfig, TrainConfig, load_config

REPO = Path(__file__).resolve().parents[2]


def tiny_config(
    run_dir: Path,
    data_root: Path,
    steps: int = 12,
    batch: int = 8,
    paper_condition: bool = False,
) -> TrainConfig:
    """The demo experiment shrunk to a few steps of base-8 networks, no dropout.

    It keeps the demo's conditioning of the denoiser (out-of-fold regression output,
    features, statics) with 2 cross-fitting folds; ``paper_condition=True`` switches
    to the paper's condition (the target's block mean only), for tests of the
    training loop that train the diffusion stage without a regression.
    """
    cfg = load_config(REPO / "configs" / "iberia_demo.yaml")
    cfg.run_dir = str(run_dir)
    cfg.device = "cpu"
    assert cfg.regression is not None and cfg.diffusion is not None and cfg.bundle is not None
    for stage in (cfg.regression, cfg.diffusion):
        stage.data.data_root = str(data_root)
        stage.optim.steps = steps
        stage.optim.batch_size = batch
        stage.optim.warmup_steps = 2
        stage.loop.validate_every = max(steps // 2, 1)
        stage.loop.checkpoint_every = max(steps // 2, 1)
        stage.loop.log_every = 1
        stage.loop.max_validation_samples = 16
        stage.loop.progress = False
    cfg.regression.model = {"base_channels": 8, "channel_mult": [1, 2], "num_blocks": 1}
    # The tests' expectations (e.g. the loss falls by 20 % in 40 steps) were set with the
    # transformed-space MSE; the demo config's mm/day loss is tested in test_train_regression_loss.
    cfg.regression.loss = "mse_transformed"
    cfg.diffusion.model = {
        "base_channels": 8,
        "channel_mult": [1, 2],
        "num_blocks": 1,
        "noise_channels": 8,
    }
    cfg.regression.cross_fit_folds = 2
    if paper_condition:
        cfg.diffusion.condition = ConditionConfig()
    cfg.bundle.out = str(run_dir / "bundle")
    cfg.bundle.members = 2
    cfg.bundle.max_eval_samples = 6
    cfg.bundle.sampler = {"name": "heun", "steps": 2}
    if cfg.bundle.output_calibration is not None:  # the demo's, made cheap
        cfg.bundle.output_calibration.members = 1
        cfg.bundle.output_calibration.n_quantiles = 20
    return cfg
