"""GPU placement logic (precipdiff.server.placement) with mocked device counts.

The mapping is pure logic over (node names, GPU counts, local ranks), tested here
on the CPU; test_auto_device_on_gpu exercises it on a real GPU when one is present.
"""

from __future__ import annotations

import pytest
import torch

from precipdiff.errors import ConfigError
from precipdiff.server import placement
from precipdiff.server.placement import auto_device, node_local_rank, plan_placement
from precipdiff.server.plugin import resolve_device


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
    for var in placement.LOCAL_RANK_VARIABLES:
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
    assert resolve_device("auto", strict=False) == "cuda:2"


def test_resolve_device_auto_without_cuda_is_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_RANK", "6")
    assert resolve_device("auto", strict=False) == "cpu"


def test_plan_root_mode() -> None:
    nodes = ["n0"] * 4 + ["n1"] * 4
    p = plan_placement(nodes, 2)
    assert p.inference_ranks == (0,)
    assert p.root == 0
    assert p.server_of == (0,) * 8
    assert p.device_of == {0: "cuda:0"}
    assert p.served_by(0) == list(range(8))
    cpu = plan_placement(nodes, 0)
    assert cpu.device_of == {0: "cpu"}


def test_plan_per_node_more_ranks_than_gpus() -> None:
    # Ranks interleaved across nodes (round-robin launch): node-local ranks follow order.
    nodes = ["a", "b", "a", "b", "a", "b", "a", "b", "a"]
    p = plan_placement(nodes, {"a": 2, "b": 1}, mode="per_node")
    # Node a: ranks 0,2,4,6,8 (local 0..4), 2 GPUs -> inference ranks 0 (cuda:0), 2 (cuda:1).
    # Node b: ranks 1,3,5,7, 1 GPU -> inference rank 1 (cuda:0).
    assert p.inference_ranks == (0, 1, 2)
    assert p.device_of == {0: "cuda:0", 2: "cuda:1", 1: "cuda:0"}
    assert p.server_of == (0, 1, 2, 1, 0, 1, 2, 1, 0)
    assert p.served_by(2) == [2, 6]
    # Every rank is served by an inference rank on its own node.
    assert all(nodes[r] == nodes[s] for r, s in enumerate(p.server_of))


def test_plan_per_node_fewer_ranks_than_gpus_and_cpu_nodes() -> None:
    p = plan_placement(["gpu", "gpu", "cpu", "cpu"], {"gpu": 4, "cpu": 0}, mode="per_node")
    assert p.inference_ranks == (0, 1, 2)
    assert p.device_of == {0: "cuda:0", 1: "cuda:1", 2: "cpu"}
    assert p.server_of == (0, 1, 2, 2)


def test_plan_rejects_bad_input() -> None:
    with pytest.raises(ConfigError, match="no ranks"):
        plan_placement([], 1)
    with pytest.raises(ConfigError, match="'everywhere'"):
        plan_placement(["a"], 1, mode="everywhere")
    with pytest.raises(ConfigError, match="node 'b'"):
        plan_placement(["a", "b"], {"a": 1}, mode="per_node")
    with pytest.raises(ConfigError, match="-1 GPUs"):
        plan_placement(["a"], -1)


def test_placement_validates_consistency() -> None:
    with pytest.raises(ConfigError, match="not inference ranks"):
        placement.Placement((0,), (0, 1), {0: "cpu"})
    with pytest.raises(ConfigError, match="exactly one device"):
        placement.Placement((0, 1), (0, 1), {0: "cpu"})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_auto_device_on_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    n = torch.cuda.device_count()
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_RANK", str(n + 1))
    dev = resolve_device("auto", strict=True)
    assert dev == f"cuda:{(n + 1) % n}"
    x = torch.ones(4, device=dev)
    assert float(x.sum().cpu()) == 4.0
