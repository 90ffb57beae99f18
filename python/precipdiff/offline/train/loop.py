"""The training loop shared by both stages.

AdamW with linear warm-up and cosine decay, gradient clipping, an exponential
moving average (EMA) of the weights, periodic validation with best-model
selection, a CSV metrics log, progress bars, bf16 autocast on CUDA and
DistributedDataParallel under torchrun.

Reproducibility and resume: every random choice is a pure function of
``(seed, step, sample)`` -- the epoch's sample order comes from
``numpy.random.default_rng([seed, epoch])``, per-sample noise and patches from
seeds derived from ``(seed, step, position in the global batch)``, and global
torch RNG is re-seeded from ``(seed, step)`` each step. A checkpoint therefore
only needs weights, EMA, optimiser and scheduler state (safetensors + JSON, no
pickle), and a resumed run retraces the uninterrupted one.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from precipdiff.io.atomic import publish_permissions
from precipdiff.offline.train.config import LoopConfig, OptimConfig
from precipdiff.offline.train.ddp import DistContext, all_reduce_mean, all_reduce_sum
from precipdiff.offline.train.loader import BatchSource, BatchStream, StepPlan, sample_seeds

#: Columns of ``metrics.csv``.
METRIC_COLUMNS = ("step", "epoch", "lr", "train_loss", "grad_norm", "val_loss", "elapsed_s")


def read_learning_curves(csv_path: Path) -> dict[str, list[tuple[int, float]]]:
    """Read the training and validation losses of a run's ``metrics.csv``.

    Parameters
    ----------
    csv_path
        ``RUN_DIR/<stage>/metrics.csv`` as :func:`fit` writes it.

    Returns
    -------
    dict
        ``{"train": [(step, loss), ...], "val": [(step, loss), ...]}``; a row
        without a value (validation is not run every step) is left out.
    """
    out: dict[str, list[tuple[int, float]]] = {"train": [], "val": []}
    with csv_path.open() as fh:
        for rec in csv.DictReader(fh):
            step = int(rec["step"])
            for key in ("train", "val"):
                if rec.get(f"{key}_loss"):
                    out[key].append((step, float(rec[f"{key}_loss"])))
    return out


class Stage(Protocol):
    """What the loop needs from a stage (regression or diffusion)."""

    @property
    def model(self) -> nn.Module:
        """The network being trained."""
        ...

    @property
    def train_set(self) -> BatchSource:
        """Training samples."""
        ...

    @property
    def val_set(self) -> BatchSource:
        """Validation samples."""
        ...

    def loss(
        self, model: nn.Module, batch: dict[str, torch.Tensor], seeds: np.ndarray
    ) -> torch.Tensor:
        """Per-sample training losses ``(n,)``."""
        ...

    def validation_loss(
        self, model: nn.Module, batch: dict[str, torch.Tensor], seeds: np.ndarray
    ) -> torch.Tensor:
        """Per-sample validation losses ``(n,)`` (deterministic given the seeds)."""
        ...


def lr_factor(step: int, cfg: OptimConfig) -> float:
    """Learning-rate multiplier: linear warm-up, then cosine decay to ``min_lr_ratio``.

    Parameters
    ----------
    step
        Optimiser step (0-based).
    cfg
        Optimiser configuration.

    Returns
    -------
    float
        Factor applied to ``cfg.lr``.
    """
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    span = max(cfg.steps - cfg.warmup_steps, 1)
    progress = min((step - cfg.warmup_steps) / span, 1.0)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class EMA:
    """Exponential moving average of a model's floating-point state.

    Parameters
    ----------
    model
        The model whose parameters and buffers are tracked.
    decay
        Decay per step; the effective decay warms up as ``min(decay, (1+n)/(10+n))``.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Blend the current weights into the average.

        Parameters
        ----------
        model
            The (unwrapped) model.
        step
            Number of updates done so far.
        """
        d = min(self.decay, (1 + step) / (10 + step))
        for k, v in model.state_dict().items():
            s = self.shadow[k]
            if v.is_floating_point():
                s.mul_(d).add_(v.detach().float(), alpha=1 - d)
            else:
                s.copy_(v)

    def copy_to(self, model: nn.Module) -> None:
        """Load the averaged weights into ``model``.

        Parameters
        ----------
        model
            A model of the same architecture.
        """
        model.load_state_dict(
            {k: v.to(model.state_dict()[k].dtype) for k, v in self.shadow.items()}
        )


@dataclass
class FitResult:
    """Outcome of :func:`fit`.

    Parameters
    ----------
    step
        Steps completed.
    best_val_loss
        Best validation loss seen (EMA weights).
    best_step
        Step of the best validation loss.
    train_losses
        Mean training loss of every step done in this call (for tests).
    finished
        Whether ``optim.steps`` were reached.
    """

    step: int
    best_val_loss: float
    best_step: int
    train_losses: list[float]
    finished: bool


def _optimizer_to_safetensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], Any]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, float]] = {}
    for pid, st in sd["state"].items():
        for name, val in st.items():
            if isinstance(val, torch.Tensor) and val.ndim > 0:
                tensors[f"{pid}.{name}"] = val.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[name] = float(val)
    groups = [
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
        for g in sd["param_groups"]
    ]
    return tensors, {"scalars": scalars, "param_groups": groups}


def _optimizer_from_safetensors(
    opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: Any
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, val in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = val
    for pid, sc in meta["scalars"].items():
        for name, val in sc.items():
            state.setdefault(int(pid), {})[name] = torch.tensor(val, dtype=torch.float32)
    groups = [
        {k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]
    ]
    opt.load_state_dict({"state": state, "param_groups": groups})


def save_checkpoint(
    path: Path,
    model: nn.Module,
    ema: EMA | None,
    opt: torch.optim.Optimizer,
    state: dict[str, Any],
) -> None:
    """Write a resumable checkpoint directory atomically (safetensors + JSON).

    Parameters
    ----------
    path
        Checkpoint directory (replaced).
    model
        The unwrapped model.
    ema
        The EMA, if any.
    opt
        The optimiser.
    state
        JSON-serialisable loop state (step, best loss, ...).
    """
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        tmp / "model.safetensors",
    )
    if ema is not None:
        save_file({k: v.contiguous() for k, v in ema.shadow.items()}, tmp / "ema.safetensors")
    tensors, meta = _optimizer_to_safetensors(opt)
    save_file(tensors, tmp / "optimizer.safetensors")
    (tmp / "state.json").write_text(json.dumps({**state, "optimizer": meta}, indent=1))
    for f in tmp.glob("*.safetensors"):  # safetensors writes 0600 whatever the umask
        publish_permissions(f)
    old = path.with_name(path.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def _trim_metrics(csv_path: Path, step: int) -> None:
    """Drop metric rows written after the checkpoint a run resumes from."""
    if not csv_path.exists():
        return
    with csv_path.open() as fh:
        rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= step]
    with csv_path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=METRIC_COLUMNS)
        w.writeheader()
        w.writerows(rows)


def _autocast(device: torch.device, precision: str) -> Any:
    use_bf16 = device.type == "cuda" and precision in ("auto", "bf16")
    if precision == "bf16" and device.type != "cuda":
        # bf16 autocast on CPU is slow and changes numerics; CPU trains in fp32.
        use_bf16 = False
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16)


def fit(
    stage: Stage,
    optim_cfg: OptimConfig,
    loop_cfg: LoopConfig,
    run_dir: Path,
    seed: int,
    ctx: DistContext,
    precision: str = "auto",
    stop_at: int | None = None,
    on_best: Callable[[nn.Module, int, float], None] | None = None,
) -> FitResult:
    """Train ``stage.model``, resuming from ``run_dir/checkpoint`` when present.

    Parameters
    ----------
    stage
        The stage (model, datasets, losses).
    optim_cfg
        Optimiser, schedule, clipping and EMA settings.
    loop_cfg
        Validation/checkpoint/log cadence.
    run_dir
        Output directory: ``checkpoint/``, ``best.safetensors`` (EMA weights of the
        best validation), ``metrics.csv``.
    seed
        Run seed.
    ctx
        Distributed context.
    precision
        ``auto``, ``fp32`` or ``bf16``.
    stop_at
        Stop (after checkpointing) once this step is reached, as an interrupted
        run would; ``None`` runs to ``optim_cfg.steps``.
    on_best
        Called on rank 0 with (EMA model, step, val loss) when validation improves.

    Returns
    -------
    FitResult
        Summary of the run.
    """
    from tqdm.auto import tqdm

    run_dir.mkdir(parents=True, exist_ok=True)
    # The data order: which samples (days) each rank reads at each step (train.loader).
    plan = StepPlan(seed, len(stage.train_set), optim_cfg.batch_size, ctx.rank, ctx.world_size)
    local_batch = plan.local_batch

    model = stage.model.to(ctx.device)
    trained: nn.Module = model
    if ctx.distributed:
        trained = nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None
        )
    opt = torch.optim.AdamW(
        model.parameters(), lr=optim_cfg.lr, weight_decay=optim_cfg.weight_decay
    )
    ema = EMA(model, optim_cfg.ema_decay) if optim_cfg.ema_decay > 0 else None
    eval_model = copy.deepcopy(model).eval()

    step = 0
    best_val = math.inf
    best_step = -1
    ckpt = run_dir / "checkpoint"
    csv_path = run_dir / "metrics.csv"
    if (ckpt / "state.json").exists():
        meta = json.loads((ckpt / "state.json").read_text())
        model.load_state_dict(load_file(ckpt / "model.safetensors", device=str(ctx.device)))
        if ema is not None and (ckpt / "ema.safetensors").exists():
            ema.shadow = load_file(ckpt / "ema.safetensors", device=str(ctx.device))
        _optimizer_from_safetensors(
            opt,
            load_file(ckpt / "optimizer.safetensors", device=str(ctx.device)),
            meta["optimizer"],
        )
        step = int(meta["step"])
        best_val = float(meta["best_val_loss"])
        best_step = int(meta["best_step"])
        if ctx.is_main:
            _trim_metrics(csv_path, step)
    if ctx.is_main and not csv_path.exists():
        with csv_path.open("w", newline="") as fh:
            csv.DictWriter(fh, fieldnames=METRIC_COLUMNS).writeheader()

    def set_lr(s: int) -> float:
        lr = optim_cfg.lr * lr_factor(s, optim_cfg)
        for g in opt.param_groups:
            g["lr"] = lr
        return lr

    def validate() -> float:
        src = ema if ema is not None else None
        if src is not None:
            src.copy_to(eval_model)
        else:
            eval_model.load_state_dict(model.state_dict())
        n_val = len(stage.val_set)
        if loop_cfg.max_validation_samples:
            n_val = min(n_val, loop_cfg.max_validation_samples)
        items = np.arange(n_val)[ctx.rank :: ctx.world_size]
        total = torch.zeros(2, dtype=torch.float64, device=ctx.device)
        with torch.no_grad(), _autocast(ctx.device, precision):
            for start in range(0, items.size, local_batch):
                it = items[start : start + local_batch]
                batch = {k: v.to(ctx.device) for k, v in stage.val_set.batch(it).items()}
                losses = stage.validation_loss(eval_model, batch, sample_seeds(seed, -1, it))
                total[0] += losses.double().sum()
                total[1] += losses.numel()
        total = all_reduce_sum(total, ctx)
        return float(total[0] / total[1])

    losses_this_call: list[float] = []
    end = optim_cfg.steps if stop_at is None else min(stop_at, optim_cfg.steps)
    bar = tqdm(
        total=optim_cfg.steps,
        initial=step,
        # None: tqdm shows the bar only on a terminal (no carriage returns in a log file)
        disable=None if (loop_cfg.progress and ctx.is_main) else True,
        desc=run_dir.name,
        dynamic_ncols=True,
    )
    t0 = time.perf_counter()
    window: list[float] = []
    trained.train()
    # Batches are read ahead by loop_cfg.workers processes (the same batches as in-process;
    # on an exception the DataLoader iterator stops its workers when it is collected).
    batches = BatchStream(
        stage.train_set,
        plan,
        step,
        end,
        workers=loop_cfg.workers,
        prefetch=loop_cfg.prefetch,
        pin_memory=ctx.device.type == "cuda",
    )
    while step < end:
        sb = plan.at(step)
        epoch = sb.epoch
        torch.manual_seed(seed * 1_000_003 + step)
        batch = {k: v.to(ctx.device, non_blocking=True) for k, v in batches.get(step).items()}
        lr = set_lr(step)
        with _autocast(ctx.device, precision):
            per_sample = stage.loss(trained, batch, sb.seeds)
        loss = per_sample.float().mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = optim_cfg.grad_clip if optim_cfg.grad_clip > 0 else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
        opt.step()
        if ema is not None:
            ema.update(model, step)
        step += 1
        loss_value = all_reduce_mean(float(loss.detach()), ctx)
        losses_this_call.append(loss_value)
        window.append(loss_value)
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")

        val = math.nan
        if step % loop_cfg.validate_every == 0 or step == optim_cfg.steps:
            was_training = trained.training
            val = validate()
            trained.train(was_training)
            improved = val < best_val
            if improved:
                best_val, best_step = val, step
            # "best": the lowest validation loss picks the shipped weights; "last": the
            # validation split is only reported, the final EMA weights are shipped.
            if improved if loop_cfg.select == "best" else step == optim_cfg.steps:
                if ctx.is_main:
                    weights = ema.shadow if ema is not None else model.state_dict()
                    save_file(
                        {k: v.detach().cpu().contiguous() for k, v in weights.items()},
                        run_dir / "best.safetensors",
                    )
                    publish_permissions(run_dir / "best.safetensors")
                    if on_best is not None:
                        on_best(eval_model, step, val)
        if ctx.is_main and (step % loop_cfg.log_every == 0 or not math.isnan(val) or step == end):
            with csv_path.open("a", newline="") as fh:
                csv.DictWriter(fh, fieldnames=METRIC_COLUMNS).writerow(
                    {
                        "step": step,
                        "epoch": epoch,
                        "lr": f"{lr:.6g}",
                        "train_loss": f"{np.mean(window):.6g}",
                        "grad_norm": f"{grad_norm:.6g}",
                        "val_loss": "" if math.isnan(val) else f"{val:.6g}",
                        "elapsed_s": f"{time.perf_counter() - t0:.2f}",
                    }
                )
            window = []
        if ctx.is_main and (step % loop_cfg.checkpoint_every == 0 or step == end):
            save_checkpoint(
                ckpt,
                model,
                ema,
                opt,
                {"step": step, "best_val_loss": best_val, "best_step": best_step, "seed": seed},
            )
        if ctx.distributed:
            torch.distributed.barrier()
    batches.close()
    bar.close()
    return FitResult(step, best_val, best_step, losses_this_call, step >= optim_cfg.steps)
