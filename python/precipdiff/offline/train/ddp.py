"""Distributed context: one process (CPU/GPU) or torchrun's DistributedDataParallel.

Under ``torchrun`` the environment carries ``RANK``, ``LOCAL_RANK`` and
``WORLD_SIZE``; :func:`setup` then joins the process group (``nccl`` on CUDA,
``gloo`` on CPU) so that the same training code runs on one or many GPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from precipdiff.device import resolve_device


@dataclass
class DistContext:
    """Where this process sits in the job.

    Parameters
    ----------
    rank
        Global rank.
    world_size
        Number of processes.
    device
        The device this process computes on.
    initialised_here
        Whether :func:`setup` created the process group (and should destroy it).
    """

    rank: int
    world_size: int
    device: torch.device
    initialised_here: bool = False

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0 (writes files, shows progress)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether more than one process takes part."""
        return self.world_size > 1


def setup(device: str = "auto") -> DistContext:
    """Join the process group when launched by torchrun, else run single-process.

    Parameters
    ----------
    device
        ``auto``, ``cpu`` or ``cuda``.

    Returns
    -------
    DistContext
        This process's context.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank=local)
    if world > 1 and dist.is_available() and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        return DistContext(rank, world, dev, initialised_here=True)
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), dev)
    return DistContext(0, 1, dev)


def teardown(ctx: DistContext) -> None:
    """Leave the process group if :func:`setup` joined it.

    Parameters
    ----------
    ctx
        The context returned by :func:`setup`.
    """
    if ctx.initialised_here and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(value: float, ctx: DistContext) -> float:
    """Average a Python float over all processes.

    Parameters
    ----------
    value
        This process's value.
    ctx
        The distributed context.

    Returns
    -------
    float
        The mean over processes (``value`` when single-process).
    """
    if not ctx.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return float(t.item()) / ctx.world_size


def all_reduce_sum(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum a tensor over all processes.

    Parameters
    ----------
    values
        This process's tensor.
    ctx
        The distributed context.

    Returns
    -------
    torch.Tensor
        The sum (``values`` when single-process).
    """
    if not ctx.distributed:
        return values
    out = values.detach().clone().to(ctx.device)
    dist.all_reduce(out)
    return out
