"""DistributedDataParallel on CPU (gloo, 2 processes) matches single-process training."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file
from train_helpers import tiny_config

from precipdiff.offline.train.ddp import DistContext, setup, teardown
from precipdiff.offline.train.diffusion import train_diffusion
from precipdiff.offline.train.regression import train_regression

STEPS = 6
BATCH = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(run: Path, data: Path):
    # The regression cross-fits (2 folds) under DDP; the denoiser takes the paper's
    # condition so that its comparison is not amplified through the folds' rounding.
    return tiny_config(run, data, steps=STEPS, batch=BATCH, paper_condition=True)


def _worker(rank: int, world: int, port: int, run: str, data: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
    )
    torch.set_num_threads(1)
    ctx = setup("cpu")
    assert ctx.distributed and ctx.world_size == world and dist.get_backend() == "gloo"
    try:
        for stage, train in (("regression", train_regression), ("diffusion", train_diffusion)):
            res = train(_config(Path(run), Path(data)), ctx)
            if ctx.is_main:
                (Path(run) / f"{stage}_losses.json").write_text(
                    json.dumps({"losses": res.train_losses, "best": res.best_val_loss})
                )
    finally:
        teardown(ctx)


@pytest.mark.needs_data
@pytest.mark.slow
def test_two_process_gloo_matches_single_process(tmp_path: Path, shared_data: Path) -> None:
    """Both stages, one spawn (start-up dominates the cost): same global batch of 8."""
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    single_run = tmp_path / "single"
    cpu = DistContext(0, 1, torch.device("cpu"))
    single = {
        "regression": train_regression(_config(single_run, shared_data), cpu),
        "diffusion": train_diffusion(_config(single_run, shared_data), cpu),
    }
    ddp_run = tmp_path / "ddp"
    ddp_run.mkdir()
    mp.spawn(_worker, args=(2, _free_port(), str(ddp_run), str(shared_data)), nprocs=2, join=True)
    for stage, ref in single.items():
        got = json.loads((ddp_run / f"{stage}_losses.json").read_text())
        np.testing.assert_allclose(got["losses"], ref.train_losses, rtol=1e-4, atol=1e-6)
        assert got["best"] == pytest.approx(ref.best_val_loss, rel=1e-4)
        wa = load_file(single_run / stage / "checkpoint" / "model.safetensors")
        wb = load_file(ddp_run / stage / "checkpoint" / "model.safetensors")
        for k in wa:
            torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-5)
    # the cross-fitted regressions (the denoiser's out-of-fold condition) agree too
    ca = np.load(single_run / "regression" / "condition.npz")
    cb = np.load(ddp_run / "regression" / "condition.npz")
    np.testing.assert_array_equal(ca["fold"], cb["fold"])
    np.testing.assert_allclose(cb["condition"], ca["condition"], rtol=1e-4, atol=1e-4)
