"""Stage 2: the conditional EDM denoiser, coarse -> 4x finer precipitation.

By default training pairs are made from the fine target alone (CorrDiff-style):
the condition is the target's block mean, upsampled back to the fine grid and
noised at ``sigma_c`` (Aich et al. 2025, Sect. 4.2). With
``diffusion.condition.source: regression`` the noised channel is instead the
regression's *out-of-fold* prediction for that day, so the denoiser learns the
distribution of the fine field given what the regression will actually say at
run time, including its large-scale error (the ensemble then carries that
error); ``condition.predictors`` and ``condition.statics`` add the regression's
inputs and static/positional channels (:mod:`precipdiff.offline.train.condition`).
Training runs on random
patches of the fine grid (aligned to whole coarse cells) so a full-resolution
model fits one GPU; the network is fully convolutional, so inference samples
the whole grid. Every random draw of a sample (patch position, EDM noise level,
EDM noise, condition noise) comes from that sample's own generator, so a
sample's loss does not depend on the batch split across processes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from precipdiff.diffusion.edm import EDMPrecond
from precipdiff.errors import ConfigError
from precipdiff.nn.unet import UNet, UNetConfig
from precipdiff.offline.train.condition import condition_inputs, static_channels
from precipdiff.offline.train.config import DataConfig, DiffusionStageConfig, TrainConfig, to_dict
from precipdiff.offline.train.data import DiffusionDataset, StageData, Stats
from precipdiff.offline.train.ddp import DistContext
from precipdiff.offline.train.loader import patch_corner
from precipdiff.offline.train.loop import FitResult, fit
from precipdiff.offline.train.regression import stage_dir, write_stage_metadata
from precipdiff.offline.train.store_data import diffusion_train_set, open_stage_data
from precipdiff.transforms import PrecipTransform

#: Quantiles of the log-normal noise-level distribution used for validation,
#: a fixed set so validation losses are comparable across steps.
VALIDATION_SIGMA_QUANTILES = (-1.5, -0.5, 0.5, 1.5)


def build_denoiser(cfg: DiffusionStageConfig, extra_channels: int = 0) -> EDMPrecond:
    """Build the EDM-preconditioned denoiser from the stage's ``model`` section.

    Parameters
    ----------
    cfg
        The stage configuration.
    extra_channels
        Condition channels besides the noised coarse field (features, statics).

    Returns
    -------
    EDMPrecond
        A freshly initialised denoiser (input: noisy field + condition).
    """
    kwargs = dict(cfg.model)
    kwargs.setdefault("noise_channels", 32)
    kwargs.update(in_channels=2 + extra_channels, out_channels=1)
    if kwargs["noise_channels"] < 1:
        raise ConfigError("diffusion.model.noise_channels must be >= 1 (EDM needs sigma)")
    return EDMPrecond(UNetConfig.from_dict(kwargs).build(), sigma_data=cfg.sigma_data)


@dataclass
class DiffusionStage:
    """The diffusion stage as the training loop sees it.

    Parameters
    ----------
    model
        The EDM denoiser.
    train_set, val_set
        Datasets of fine targets and their block means.
    cfg
        The stage configuration.
    """

    model: nn.Module
    train_set: DiffusionDataset
    val_set: DiffusionDataset
    cfg: DiffusionStageConfig
    #: Static channels by name (``(Hf, Wf)``), in channel order (stored in the bundle).
    statics: dict[str, np.ndarray] = field(default_factory=dict)

    def _pairs(
        self, batch: dict[str, torch.Tensor], gens: list[torch.Generator], patch: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Clean target, condition (noised coarse channel + extra) and mask, per-sample patches."""
        f = self.cfg.data.coarsen_factor
        y, mask, up = batch["y"], batch["mask"], batch["cond"]
        extra = batch.get("extra")
        # Missing fine cells take the smooth condition, so the network never sees an
        # artificial edge; they are masked out of the loss anyway.
        y = torch.where(mask > 0, y, up)
        if self.cfg.condition.residual:
            # the target is the residual from the clean upsampled condition (0 where
            # the fine cell is missing); the runtime adds the condition back
            y = y - up
        h, w = y.shape[-2:]
        ph, pw = (h, w) if not (patch and self.cfg.patch_size) else self.cfg.patch_size
        if ph > h or pw > w:
            raise ConfigError(f"diffusion.patch_size {[ph, pw]} exceeds the fine grid {h}x{w}")
        ys, cs, ms = [], [], []
        for i, g in enumerate(gens):
            # Patch corners on whole coarse cells, so the patch's condition is exactly
            # the upsampled field the runtime builds for the whole grid. A batch the
            # loader already cut to the patches (h, w = ph, pw) draws (0, 0) here and
            # leaves g in the same state (train.loader.patch_corner).
            r0, c0 = patch_corner(g, h, w, ph, pw, f)
            sl = (slice(r0, r0 + ph), slice(c0, c0 + pw))
            ys.append(y[i, :, sl[0], sl[1]])
            ms.append(mask[i, :, sl[0], sl[1]])
            noise_c = torch.randn((1, ph, pw), generator=g).to(up.device, up.dtype)
            c = up[i, :, sl[0], sl[1]] + self.cfg.sigma_c * noise_c
            if extra is not None and extra.shape[1]:
                c = torch.cat([c, extra[i, :, sl[0], sl[1]]], dim=0)
            cs.append(c)
        return torch.stack(ys), torch.stack(cs), torch.stack(ms)

    def _weighted(
        self,
        model: nn.Module,
        y: torch.Tensor,
        cond: torch.Tensor,
        mask: torch.Tensor,
        sigma: torch.Tensor,
        noise: torch.Tensor,
    ) -> torch.Tensor:
        # EDM loss (Karras et al. 2022, Eq. 2 with lambda(sigma) of Table 1), per sample
        # and restricted to valid cells.
        sd = self.cfg.sigma_data
        s = sigma[:, None, None, None]
        denoised = model(y + s * noise, sigma, cond)
        weight = (s**2 + sd**2) / (s * sd) ** 2
        err = mask * weight * (denoised.float() - y.float()) ** 2
        return err.flatten(1).sum(1) / mask.flatten(1).sum(1).clamp(min=1.0)

    def loss(
        self, model: nn.Module, batch: dict[str, torch.Tensor], seeds: np.ndarray
    ) -> torch.Tensor:
        """Per-sample masked EDM loss on random patches.

        Parameters
        ----------
        model
            The (possibly DDP-wrapped) denoiser.
        batch
            ``y``, ``mask``, ``cond``.
        seeds
            Per-sample seeds.

        Returns
        -------
        torch.Tensor
            ``(n,)`` losses.
        """
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        y, cond, mask = self._pairs(batch, gens, patch=True)
        rnd = torch.stack([torch.randn((), generator=g) for g in gens]).to(y.device)
        sigma = torch.exp(rnd * self.cfg.p_std + self.cfg.p_mean)
        noise = torch.stack([torch.randn(y.shape[1:], generator=g) for g in gens]).to(y.device)
        return self._weighted(model, y, cond, mask, sigma, noise)

    def validation_loss(
        self, model: nn.Module, batch: dict[str, torch.Tensor], seeds: np.ndarray
    ) -> torch.Tensor:
        """Per-sample loss on whole fields, averaged over fixed noise levels.

        Parameters
        ----------
        model
            The denoiser (EMA weights).
        batch
            ``y``, ``mask``, ``cond``.
        seeds
            Per-sample seeds (the same at every validation).

        Returns
        -------
        torch.Tensor
            ``(n,)`` losses.
        """
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        y, cond, mask = self._pairs(batch, gens, patch=False)
        total = torch.zeros(y.shape[0], device=y.device)
        for q in VALIDATION_SIGMA_QUANTILES:
            sigma = torch.full(
                (y.shape[0],), math.exp(self.cfg.p_mean + q * self.cfg.p_std), device=y.device
            )
            noise = torch.stack([torch.randn(y.shape[1:], generator=g) for g in gens]).to(y.device)
            total += self._weighted(model, y, cond, mask, sigma, noise)
        return total / len(VALIDATION_SIGMA_QUANTILES)


def regression_stats(cfg: TrainConfig) -> Stats:
    """Return the precipitation normalisation shared by both stages.

    The runtime has one precipitation normalisation: the regression's output is
    de-normalised with it and the diffusion condition is built in the same
    space. The diffusion stage therefore uses the regression's statistics (from
    ``run_dir/regression/stats.json`` when that stage has run, otherwise from
    the regression's training split).

    Parameters
    ----------
    cfg
        The experiment configuration (with a ``regression`` section).

    Returns
    -------
    Stats
        The regression's statistics.
    """
    path = stage_dir(cfg, "regression") / "stats.json"
    if path.exists():
        return Stats.from_dict(json.loads(path.read_text())["stats"])
    from precipdiff.offline.train.regression import prepare_regression

    return prepare_regression(cfg)[1].stats


def diffusion_data_config(cfg: TrainConfig) -> DataConfig:
    """Return the data section the diffusion stage reads.

    ``diffusion.data`` normally; the regression's (with its predictors and
    features) when the condition needs them (``condition.source: regression`` or
    ``condition.predictors``), after checking that both sections describe the
    same target samples.

    Parameters
    ----------
    cfg
        The experiment configuration.

    Returns
    -------
    DataConfig
        The data section.
    """
    assert cfg.diffusion is not None
    cond = cfg.diffusion.condition
    if not (cond.source == "regression" or cond.predictors):
        return cfg.diffusion.data
    assert cfg.regression is not None
    d, r = cfg.diffusion.data, cfg.regression.data
    for key in ("target", "split", "crop_lat", "crop_lon", "coarsen_factor", "store", "data_root"):
        if to_dict(getattr(d, key)) != to_dict(getattr(r, key)):
            raise ConfigError(
                f"diffusion.condition uses the regression's predictions or inputs, so "
                f"diffusion.data.{key} must equal regression.data.{key} "
                f"({to_dict(getattr(d, key))!r} != {to_dict(getattr(r, key))!r})"
            )
    return r


def prepare_diffusion(
    cfg: TrainConfig, stats: Stats | None = None
) -> tuple[DiffusionStage, StageData]:
    """Open the data and build the diffusion stage (seeded initialisation).

    Parameters
    ----------
    cfg
        The experiment configuration (needs a ``diffusion`` section).
    stats
        Normalisation statistics to reuse (computed from the training split if ``None``).

    Returns
    -------
    tuple
        The stage and its data.
    """
    if cfg.diffusion is None:
        raise ConfigError("the config has no 'diffusion' section")
    transform = PrecipTransform.from_dict(cfg.transform)
    if stats is None and cfg.regression is not None:
        stats = regression_stats(cfg)
    data_cfg = diffusion_data_config(cfg)
    data = open_stage_data(data_cfg, transform, base=cfg.source_dir, stats=stats)
    cond_cfg = cfg.diffusion.condition
    root = data_cfg.root(cfg.source_dir) if cond_cfg.static_files else None
    statics = static_channels(cond_cfg, data, root)
    cond = condition_inputs(cfg, data, statics)
    torch.manual_seed(cfg.seed)
    stage = DiffusionStage(
        build_denoiser(cfg.diffusion, cond.n_extra(len(data.features))),
        diffusion_train_set(data, cfg.diffusion, cond),
        DiffusionDataset(data, data.split.validation, cond),
        cfg.diffusion,
    )
    stage.statics = statics
    return stage, data


def train_diffusion(cfg: TrainConfig, ctx: DistContext, stop_at: int | None = None) -> FitResult:
    """Train (or resume) the diffusion stage into ``run_dir/diffusion``.

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
    stage, data = prepare_diffusion(cfg)
    assert cfg.diffusion is not None
    out = stage_dir(cfg, "diffusion")
    net = stage.model.net if isinstance(stage.model, EDMPrecond) else None
    net_cfg = net.config.to_dict() if isinstance(net, UNet) else {}
    if ctx.is_main:
        write_stage_metadata(
            out,
            cfg,
            data,
            {
                "unet": net_cfg,
                "sigma_c": cfg.diffusion.sigma_c,
                "condition": {
                    "source": cfg.diffusion.condition.source,
                    "predictors": cfg.diffusion.condition.predictors,
                    "statics": list(stage.statics),
                    "residual": cfg.diffusion.condition.residual,
                    # the denoiser's own feature channels, when it has them
                    **(
                        {"features": [f.to_dict() for f in own]}
                        if (own := stage.val_set.condition.features) is not None
                        else {}
                    ),
                },
                "features": [f.to_dict() for f in data.features],
            },
        )
        if stage.statics:
            statics: dict[str, Any] = dict(stage.statics)
            np.savez(out / "statics.npz", **statics)
    return fit(
        stage,
        cfg.diffusion.optim,
        cfg.diffusion.loop,
        out,
        cfg.seed,
        ctx,
        precision=cfg.precision,
        stop_at=stop_at,
    )
