"""Stage 1: the UNet regression from large-scale predictors to coarse precipitation.

The network sees normalised predictors regridded onto the coarse grid and
predicts the normalised, ``log1p``-transformed coarse precipitation (the block
mean of the fine target). The loss (``regression.loss``) is a mean squared error
over valid cells only (E-OBS is NaN over sea), normalised per sample so that a
sample's weight does not depend on how much of it is land -- and so that
splitting a batch across processes does not change the loss:

* ``mse_transformed``: in normalised transformed space. For a skewed variable
  this estimates something near the conditional *geometric* mean (median-like),
  below the conditional mean: the prediction is dry in mm/day.
* ``mse_physical``: on the inverse-transformed prediction in mm/day, which
  estimates the conditional *arithmetic* mean (mean-seeking). The network output
  is unchanged (a transformed value), so at run time the prediction still goes
  through the clamped inverse and is never negative.
* ``mixed``: ``mse_transformed + physical_weight * mse_physical``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from precipdiff.nn.unet import UNet, UNetConfig
from precipdiff.offline.train.config import RegressionStageConfig, TrainConfig, to_dict
from precipdiff.offline.train.data import RegressionDataset, StageData, Stats
from precipdiff.offline.train.ddp import DistContext
from precipdiff.offline.train.loop import FitResult, fit
from precipdiff.offline.train.store_data import open_stage_data
from precipdiff.transforms import PrecipTransform


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared error over valid cells.

    Parameters
    ----------
    pred, target
        ``(n, 1, H, W)``.
    mask
        ``(n, 1, H, W)``, 1 where the target is valid.

    Returns
    -------
    torch.Tensor
        ``(n,)`` losses (0 for a sample without valid cells).
    """
    err = mask * (pred.float() - target.float()) ** 2
    return err.flatten(1).sum(1) / mask.flatten(1).sum(1).clamp(min=1.0)


class RegressionLoss:
    """The configured regression loss, per sample, over valid cells.

    Parameters
    ----------
    kind
        ``mse_transformed``, ``mse_physical`` or ``mixed``
        (:data:`precipdiff.offline.train.config.REGRESSION_LOSSES`).
    transform
        The precipitation transform (maps mm/day to the network's space).
    target_mean, target_std
        Normalisation of the transformed target (training-split statistics).
    physical_weight
        Weight of the mm/day term in ``mixed``.
    """

    def __init__(
        self,
        kind: str,
        transform: PrecipTransform,
        target_mean: float,
        target_std: float,
        physical_weight: float = 0.1,
    ) -> None:
        from precipdiff.errors import ConfigError
        from precipdiff.offline.train.config import REGRESSION_LOSSES

        if kind not in REGRESSION_LOSSES:
            raise ConfigError(
                f"regression loss {kind!r} is not supported; expected one of "
                f"{list(REGRESSION_LOSSES)}"
            )
        self.kind = kind
        self.transform = transform
        self.target_mean = float(target_mean)
        self.target_std = float(target_std)
        self.physical_weight = float(physical_weight)

    def to_physical(self, z: torch.Tensor) -> torch.Tensor:
        """Map a normalised transformed field to mm/day, differentiably.

        Unlike :meth:`PrecipTransform.inverse`, values below zero are not clamped
        (``log1p`` gives at least ``-eps``), so the gradient never vanishes for a
        prediction that is too dry; the top is capped at ``max_rate`` so it stays
        finite.

        Parameters
        ----------
        z
            Normalised transformed field.

        Returns
        -------
        torch.Tensor
            Precipitation in mm/day (float32).
        """
        t = self.transform
        zz = z.float() * self.target_std + self.target_mean
        if t.kind == "log1p":
            z_max = math.log1p(t.max_rate / t.eps)
            return t.eps * torch.expm1(torch.clamp(zz, max=z_max))
        return torch.clamp(zz, max=t.max_rate)

    def __call__(
        self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Per-sample loss.

        Parameters
        ----------
        pred, target
            ``(n, 1, H, W)`` normalised transformed fields.
        mask
            ``(n, 1, H, W)``, 1 where the target is valid.

        Returns
        -------
        torch.Tensor
            ``(n,)`` losses.
        """
        if self.kind == "mse_transformed":
            return masked_mse(pred, target, mask)
        valid = mask > 0
        p_pred = torch.where(valid, self.to_physical(pred), 0.0)
        p_true = torch.where(valid, self.to_physical(target), 0.0)
        phys = masked_mse(p_pred, p_true, mask)
        if self.kind == "mse_physical":
            return phys
        return masked_mse(pred, target, mask) + self.physical_weight * phys


def build_regression_net(cfg: RegressionStageConfig, in_channels: int) -> UNet:
    """Build the regression UNet from the stage's ``model`` section.

    Parameters
    ----------
    cfg
        The stage configuration.
    in_channels
        Number of predictors.

    Returns
    -------
    UNet
        A freshly initialised network.
    """
    kwargs = dict(cfg.model)
    kwargs.update(in_channels=in_channels, out_channels=1, noise_channels=0)
    return UNetConfig.from_dict(kwargs).build()


@dataclass
class RegressionStage:
    """The regression stage as the training loop sees it.

    Parameters
    ----------
    model
        The regression UNet.
    train_set, val_set
        Training and validation datasets.
    """

    model: nn.Module
    train_set: RegressionDataset
    val_set: RegressionDataset
    criterion: RegressionLoss | None = None

    def loss(
        self, model: nn.Module, batch: dict[str, torch.Tensor], seeds: np.ndarray
    ) -> torch.Tensor:
        """Per-sample configured loss (no randomness in the regression; ``seeds`` unused).

        Parameters
        ----------
        model
            The (possibly DDP-wrapped) network.
        batch
            ``x``, ``y``, ``mask``.
        seeds
            Per-sample seeds.

        Returns
        -------
        torch.Tensor
            ``(n,)`` losses.
        """
        if self.criterion is None:
            return masked_mse(model(batch["x"]), batch["y"], batch["mask"])
        return self.criterion(model(batch["x"]), batch["y"], batch["mask"])

    def validation_loss(
        self, model: nn.Module, batch: dict[str, torch.Tensor], seeds: np.ndarray
    ) -> torch.Tensor:
        """Per-sample validation loss (same as training).

        Parameters
        ----------
        model
            The network (EMA weights).
        batch
            ``x``, ``y``, ``mask``.
        seeds
            Per-sample seeds.

        Returns
        -------
        torch.Tensor
            ``(n,)`` losses.
        """
        return self.loss(model, batch, seeds)


def prepare_regression(
    cfg: TrainConfig, stats: Stats | None = None
) -> tuple[RegressionStage, StageData]:
    """Open the data and build the regression stage (seeded initialisation).

    Parameters
    ----------
    cfg
        The experiment configuration (needs a ``regression`` section).
    stats
        Normalisation statistics to reuse (computed from the training split if ``None``).

    Returns
    -------
    tuple
        The stage and its data.
    """
    from precipdiff.errors import ConfigError

    if cfg.regression is None:
        raise ConfigError("the config has no 'regression' section")
    transform = PrecipTransform.from_dict(cfg.transform)
    data = open_stage_data(cfg.regression.data, transform, base=cfg.source_dir, stats=stats)
    torch.manual_seed(cfg.seed)
    net = build_regression_net(cfg.regression, len(data.features))
    stage = RegressionStage(
        net,
        RegressionDataset(data, data.split.train),
        RegressionDataset(data, data.split.validation),
        RegressionLoss(
            cfg.regression.loss,
            transform,
            data.stats.target_mean,
            data.stats.target_std,
            cfg.regression.physical_weight,
        ),
    )
    return stage, data


def stage_dir(cfg: TrainConfig, name: str) -> Path:
    """Output directory of one stage.

    Parameters
    ----------
    cfg
        The experiment configuration.
    name
        ``regression`` or ``diffusion``.

    Returns
    -------
    pathlib.Path
        ``run_dir/name``.
    """
    return Path(cfg.run_dir) / name


def write_stage_metadata(
    out: Path, cfg: TrainConfig, data: StageData, extra: dict[str, Any]
) -> None:
    """Write ``stats.json`` and ``config.json`` describing a stage's run.

    Parameters
    ----------
    out
        Stage directory.
    cfg
        The experiment configuration.
    data
        The stage data (statistics, grids, split).
    extra
        Stage-specific entries (e.g. the network configuration).
    """
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "stats": data.stats.to_dict(),
        "fine_grid": data.fine_grid.to_dict(),
        "coarse_grid": data.coarse_grid.to_dict(),
        "predictors": [p.source.name for p in data.predictors],
        "n_train": int(data.split.train.size),
        "n_validation": int(data.split.validation.size),
        "train_period": [
            str(data.split.times[data.split.train].min()),
            str(data.split.times[data.split.train].max()),
        ],
        "validation_period": [
            str(data.split.times[data.split.validation].min()),
            str(data.split.times[data.split.validation].max()),
        ],
        **extra,
    }
    (out / "stats.json").write_text(json.dumps(meta, indent=1))
    (out / "config.json").write_text(json.dumps(to_dict(cfg), indent=1))


def train_regression(cfg: TrainConfig, ctx: DistContext, stop_at: int | None = None) -> FitResult:
    """Train (or resume) the regression stage into ``run_dir/regression``.

    Parameters
    ----------
    cfg
        The experiment configuration.
    ctx
        Distributed context.
    stop_at
        Stop early at this step (checkpointed, resumable).

    Returns
    -------
    FitResult
        Summary of the run.
    """
    stage, data = prepare_regression(cfg)
    out = stage_dir(cfg, "regression")
    assert cfg.regression is not None
    net_cfg = stage.model.config.to_dict() if isinstance(stage.model, UNet) else {}
    if ctx.is_main:
        write_stage_metadata(
            out,
            cfg,
            data,
            {"unet": net_cfg, "features": [f.to_dict() for f in data.features]},
        )
    result = fit(
        stage,
        cfg.regression.optim,
        cfg.regression.loop,
        out,
        cfg.seed,
        ctx,
        precision=cfg.precision,
        stop_at=stop_at,
    )
    if result.finished and cfg.regression.cross_fit_folds >= 2:
        cross_fit(cfg, ctx, stage, data)
    return result


def cross_fit_blocks(train: np.ndarray, folds: int) -> list[np.ndarray]:
    """Split training positions into contiguous blocks of days (one held out per fold).

    Contiguous blocks keep the days of one season or year together, so a held-out
    day's neighbours (correlated weather) are held out with it.

    Parameters
    ----------
    train
        Positions of the training samples.
    folds
        Number of blocks.

    Returns
    -------
    list of numpy.ndarray
        The blocks, in time order.
    """
    return [np.asarray(b) for b in np.array_split(np.sort(np.asarray(train)), folds)]


@torch.no_grad()
def predict_positions(
    net: nn.Module, data: StageData, positions: np.ndarray, device: torch.device, chunk: int = 64
) -> np.ndarray:
    """Run a regression network on aligned positions (normalised transformed output).

    Parameters
    ----------
    net
        The network (eval mode).
    data
        The stage data.
    positions
        Positions into ``data.split.times``.
    device
        Device of ``net``.
    chunk
        Samples per network call.

    Returns
    -------
    numpy.ndarray
        ``(n, Hc, Wc)`` float32.
    """
    ds = RegressionDataset(data, positions)
    out = []
    for start in range(0, len(ds), chunk):
        items = np.arange(start, min(start + chunk, len(ds)))
        x = ds.batch(items)["x"].to(device)
        out.append(net(x)[:, 0].float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, *data.coarse_grid.shape), np.float32)


#: File of the regression's predictions that the diffusion stage trains on.
CONDITION_FILE = "condition.npz"


def cross_fit(cfg: TrainConfig, ctx: DistContext, stage: RegressionStage, data: StageData) -> Path:
    """Out-of-fold regression predictions for every training day (``condition.npz``).

    Trains ``regression.cross_fit_folds`` models, each on the training split minus
    one contiguous block of days (same architecture, optimiser, step count and
    ``loop.select`` rule as the main model; seeds ``seed + 1 + k``; validated on
    their held-out block; resumable in ``regression/fold<k>/``), and predicts the
    held-out block with it. Validation days are predicted by the main model, as at
    run time.

    Parameters
    ----------
    cfg
        The experiment configuration.
    ctx
        Distributed context.
    stage
        The trained main stage (its data and loss).
    data
        The stage data.

    Returns
    -------
    pathlib.Path
        The written file: ``times`` (datetime64[s] as int64 seconds), ``condition``
        ``(n, Hc, Wc)`` float32 normalised transformed coarse precipitation,
        ``out_of_fold`` (bool per time), ``fold`` (int per time, -1 = main model).
    """
    from safetensors.torch import load_file

    assert cfg.regression is not None
    out = stage_dir(cfg, "regression")
    rc = cfg.regression
    n = data.split.times.size
    condition = np.zeros((n, *data.coarse_grid.shape), np.float32)
    fold_of = np.full(n, -1, np.int64)
    main = build_regression_net(rc, len(data.features)).to(ctx.device)
    main.load_state_dict(load_file(out / "best.safetensors", device=str(ctx.device)))
    main.eval()
    others = np.setdiff1d(np.arange(n), data.split.train)
    condition[others] = predict_positions(main, data, others, ctx.device)
    for k, block in enumerate(cross_fit_blocks(data.split.train, rc.cross_fit_folds)):
        keep = np.setdiff1d(data.split.train, block)
        torch.manual_seed(cfg.seed + 1 + k)
        # A fold's validation set is its held-out block: its loss curve is the
        # out-of-fold error, and the outer validation split is not touched.
        fold_stage = RegressionStage(
            build_regression_net(rc, len(data.features)),
            RegressionDataset(data, keep),
            RegressionDataset(data, block),
            stage.criterion,
        )
        fold_dir = out / f"fold{k}"
        fit(fold_stage, rc.optim, rc.loop, fold_dir, cfg.seed + 1 + k, ctx, precision=cfg.precision)
        net = build_regression_net(rc, len(data.features)).to(ctx.device)
        net.load_state_dict(load_file(fold_dir / "best.safetensors", device=str(ctx.device)))
        net.eval()
        condition[block] = predict_positions(net, data, block, ctx.device)
        fold_of[block] = k
    path = out / CONDITION_FILE
    if ctx.is_main:
        tmp = out / ("tmp-" + CONDITION_FILE)
        np.savez(
            tmp,
            times=data.split.times.astype("datetime64[s]").astype(np.int64),
            condition=condition,
            out_of_fold=fold_of >= 0,
            fold=fold_of,
        )
        tmp.replace(path)
    if ctx.distributed:
        torch.distributed.barrier()
    return path
