"""One device rule for every entry point (precipdiff.device), with mocked GPU counts.

The mapping is pure logic over (GPU count, local rank, setting), tested on the CPU;
test_auto_device_on_gpu exercises it on a real GPU when one is present.
"""

from __future__ import annotations

import logging

import pytest
import torch

from precipdiff import device
from precipdiff.device import auto_device, node_local_rank, resolve_device, world_rank
from precipdiff.errors import ConfigError, DeviceError


def test_resolve_device_settings() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(DeviceError, match="unknown device 'tpu0'"):
        resolve_device("tpu0")
    with pytest.raises(DeviceError, match="'meta' is not supported"):
        resolve_device("meta")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback without CUDA")
def test_resolve_device_without_cuda(caplog: pytest.LogCaptureFixture) -> None:
    assert resolve_device("auto", strict=True) == torch.device("cpu")
    with pytest.raises(DeviceError, match="'cuda' was requested but CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(DeviceError, match="'cuda:1' was requested"):
        resolve_device("cuda:1", strict=True)
    with caplog.at_level(logging.WARNING, logger="precipdiff.device"):
        assert resolve_device("cuda:0", strict=False) == torch.device("cpu")
    assert "running on the CPU" in caplog.text


def test_resolve_device_index_beyond_visible(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(DeviceError, match=r"only 2 CUDA device\(s\) are visible"):
        resolve_device("cuda:2")
    with caplog.at_level(logging.WARNING, logger="precipdiff.device"):
        assert resolve_device("cuda:2", strict=False) == torch.device("cpu")
    assert "only 2 CUDA" in caplog.text


def test_world_rank_from_launchers() -> None:
    assert world_rank({}) == 0
    assert world_rank({"OMPI_COMM_WORLD_RANK": "5"}) == 5
    assert world_rank({"PMI_RANK": "x", "SLURM_PROCID": "3"}) == 3


def test_node_local_rank_from_launchers() -> None:
    assert node_local_rank({}) is None
    assert node_local_rank({"OMPI_COMM_WORLD_LOCAL_RANK": "3"}) == 3
    assert node_local_rank({"MPI_LOCALRANKID": "2"}) == 2
    assert node_local_rank({"SLURM_LOCALID": "5"}) == 5
    # Open MPI wins over Slurm (srun + mpirun), garbage is skipped.
    assert node_local_rank({"OMPI_COMM_WORLD_LOCAL_RANK": "1", "SLURM_LOCALID": "7"}) == 1
    assert node_local_rank({"OMPI_COMM_WORLD_LOCAL_RANK": "x", "SLURM_LOCALID": "7"}) == 7


@pytest.mark.parametrize(
    ("n_devices", "local_rank", "expected"),
    [
        (0, 0, "cpu"),
        (0, 5, "cpu"),
        (1, 0, "cuda:0"),
        (1, 3, "cuda:0"),
        (4, 2, "cuda:2"),
        (4, 6, "cuda:2"),
    ],
)
def test_auto_device_maps_local_rank(n_devices: int, local_rank: int, expected: str) -> None:
    assert auto_device(n_devices, local_rank) == expected


def test_auto_device_reads_launcher_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in device.LOCAL_RANK_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_RANK", "3")
    assert auto_device(2) == "cuda:1"
    monkeypatch.delenv("OMPI_COMM_WORLD_LOCAL_RANK")
    assert auto_device(2) == "cuda:0"  # no launcher: local rank 0


def test_auto_device_rejects_negative() -> None:
    with pytest.raises(ConfigError, match="n_devices = -1"):
        auto_device(-1, 0)
    with pytest.raises(ConfigError, match="local_rank = -2"):
        auto_device(1, -2)


def test_resolve_device_auto_uses_placement(monkeypatch: pytest.MonkeyPatch) -> None:
    # Mock a node with 4 GPUs; this process is node-local rank 6 -> cuda:2.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_RANK", "6")
    assert resolve_device("auto", strict=False) == torch.device("cuda:2")
    assert resolve_device("cuda") == torch.device("cuda:2")  # a bare cuda: this rank's GPU
    assert resolve_device("auto", local_rank=1) == torch.device("cuda:1")


def test_resolve_device_auto_without_cuda_is_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_RANK", "6")
    assert resolve_device("auto", strict=False) == torch.device("cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_auto_device_on_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    n = torch.cuda.device_count()
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_RANK", str(n + 1))
    dev = resolve_device("auto", strict=True)
    assert dev == torch.device(f"cuda:{(n + 1) % n}")
    x = torch.ones(4, device=dev)
    assert float(x.sum().cpu()) == 4.0
