"""DDP on a training store: 2 gloo processes = 1 process; resume with another process count.

``optim.batch_size`` is the global batch, so 2 processes x 2 samples are compared with
1 process x 4 samples (the single process has the doubled per-process batch). The
2-process runs read their batches through loader worker processes, the single
process reads in-process: the batches, and so the losses, must not depend on it.
Tolerance: relative 1e-4 on losses and weights (float32 gradients summed in another
order by the all-reduce).
"""

from __future__ import annotations

import copy
import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from era5_helpers import config, store_experiment
from safetensors.torch import load_file

from precipdiff.offline.train.ddp import DistContext, setup, teardown
from precipdiff.offline.train.diffusion import train_diffusion
from precipdiff.offline.train.prepare import run_prepare
from precipdiff.offline.train.regression import train_regression

STEPS = 6
STAGES = (("regression", train_regression), ("diffusion", train_diffusion))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _with(raw: dict[str, Any], run_dir: Path, workers: int) -> dict[str, Any]:
    out = copy.deepcopy(raw)
    out["run_dir"] = str(run_dir)
    for stage in ("regression", "diffusion"):
        out[stage]["loop"]["workers"] = workers
    return out


def _worker(rank: int, world: int, port: int, jobs: list[tuple[str, int | None]], raw: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
    )
    torch.set_num_threads(1)
    ctx = setup("cpu")
    assert ctx.distributed and dist.get_backend() == "gloo"
    try:
        for run, stop_at in jobs:
            cfg = config(_with(json.loads(raw), Path(run), workers=1))
            for name, train in STAGES:
                res = train(cfg, ctx, stop_at=stop_at)
                if ctx.is_main:
                    (Path(run) / f"{name}_losses.json").write_text(json.dumps(res.train_losses))
    finally:
        teardown(ctx)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    tmp = tmp_path_factory.mktemp("ddp_store")
    raw = store_experiment(tmp, days=12, steps=STEPS, batch=4)
    assert run_prepare(config(raw), progress=False).complete
    one = DistContext(0, 1, torch.device("cpu"))
    single = {
        name: train(config(_with(raw, tmp / "single", workers=0)), one) for name, train in STAGES
    }
    jobs = [(str(tmp / "ddp"), None), (str(tmp / "ddp_stopped"), 3)]
    mp.spawn(_worker, args=(2, _free_port(), jobs, json.dumps(raw)), nprocs=2, join=True)
    # Resume the 2-process checkpoint at step 3 in one process.
    resumed = {
        name: train(config(_with(raw, tmp / "ddp_stopped", workers=0)), one)
        for name, train in STAGES
    }
    return {"tmp": tmp, "raw": raw, "single": single, "resumed": resumed}


@pytest.mark.slow
def test_two_processes_match_one_with_the_doubled_batch(runs: dict[str, Any]) -> None:
    tmp = runs["tmp"]
    for name, _ in STAGES:
        ref = runs["single"][name]
        got = json.loads((tmp / "ddp" / f"{name}_losses.json").read_text())
        assert len(got) == STEPS
        np.testing.assert_allclose(got, ref.train_losses, rtol=1e-4, atol=1e-6, err_msg=name)
        wa = load_file(tmp / "single" / name / "checkpoint" / "model.safetensors")
        wb = load_file(tmp / "ddp" / name / "checkpoint" / "model.safetensors")
        for k in wa:
            torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_two_process_checkpoint_resumes_on_one_process(runs: dict[str, Any]) -> None:
    tmp = runs["tmp"]
    for name, _ in STAGES:
        ref = runs["single"][name]
        first = json.loads((tmp / "ddp_stopped" / f"{name}_losses.json").read_text())
        res = runs["resumed"][name]
        assert len(first) == 3 and res.step == STEPS and res.finished
        np.testing.assert_allclose(
            first + res.train_losses, ref.train_losses, rtol=1e-4, atol=1e-6, err_msg=name
        )
        wa = load_file(tmp / "single" / name / "checkpoint" / "model.safetensors")
        wb = load_file(tmp / "ddp_stopped" / name / "checkpoint" / "model.safetensors")
        for k in wa:
            torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-5)
        rows = (tmp / "ddp_stopped" / name / "metrics.csv").read_text().splitlines()
        assert [int(r.split(",")[0]) for r in rows[1:]] == list(range(1, STEPS + 1))


@pytest.mark.slow
def test_torchrun_launch_matches_one_process(runs: dict[str, Any]) -> None:
    """The documented command: torchrun -m precipdiff train ... (2 CPU processes, gloo)."""
    tmp = runs["tmp"]
    path = tmp / "torchrun.yaml"
    path.write_text(yaml.safe_dump(_with(runs["raw"], tmp / "torchrun", workers=1)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "precipdiff", "train", "regression", str(path), "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "regression: finished at step 6" in done.stdout
    with (tmp / "torchrun" / "regression" / "metrics.csv").open() as fh:
        losses = [float(r["train_loss"]) for r in csv.DictReader(fh)]
    np.testing.assert_allclose(losses, runs["single"]["regression"].train_losses, rtol=1e-4)
