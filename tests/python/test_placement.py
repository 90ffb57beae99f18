"""Inference-rank placement logic (precipdiff.server.placement) with mocked GPU counts.

The mapping is pure logic over (node names, GPU counts, local ranks), tested on the CPU.
"""

from __future__ import annotations

import pytest

from precipdiff.errors import ConfigError
from precipdiff.server import placement
from precipdiff.server.placement import plan_placement


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
