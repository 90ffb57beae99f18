"""Where inference runs: GPU placement for MPI-decomposed ESM runs.

Two questions, answered from facts that are cheap to obtain on every rank (the
launcher's environment and the CUDA device count), so that the logic can be
tested anywhere with mocked values:

1. Which device does ``device = 'auto'`` mean for *this* process?
   :func:`precipdiff.device.auto_device`: the node-local rank modulo the number of
   visible GPUs (``cuda:k``), or ``"cpu"`` when none is visible. With one GPU per
   rank made visible by the launcher (``CUDA_VISIBLE_DEVICES`` per rank) this is
   ``cuda:0``. In the per-node mode the inference ranks of a node are numbered
   among themselves (:func:`node_inference_rank`).
2. Which ranks run inference and which rank serves which?
   :func:`plan_placement`: ``mode="root"`` (default of the Fortran MPI layer):
   one inference rank, rank 0, serving every rank. ``mode="per_node"``: on a node
   with ``g`` GPUs the lowest ``min(g, k)`` of its ``k`` ranks are inference
   ranks, one per GPU, and the node's other ranks share them round-robin; a node
   without a GPU gets one CPU inference rank (its lowest rank).

The Fortran layer (``module precipdiff_mpi``, docs/scaling.md) gathers to a single
inference rank (``inference_rank``, default 0); :func:`plan_placement` tells a
host which rank that should be (the first inference rank of the plan) and which
device it gets. In the per-node mode the ensemble is split across the inference
ranks in contiguous member blocks (:func:`member_block`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from precipdiff.device import auto_device
from precipdiff.errors import ConfigError

__all__ = ["Placement", "member_block", "node_inference_rank", "plan_placement"]


@dataclass(frozen=True)
class Placement:
    """Inference ranks, who serves whom, and their devices.

    Parameters
    ----------
    inference_ranks : tuple of int
        Ranks that run the plugin, ascending.
    server_of : tuple of int
        ``server_of[r]`` is the inference rank that rank ``r``'s fields go to.
    device_of : dict of int to str
        Device (``"cpu"`` or ``"cuda:k"``, node-local index) of each inference rank.
    """

    inference_ranks: tuple[int, ...]
    server_of: tuple[int, ...]
    device_of: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.inference_ranks:
            raise ConfigError("placement: at least one inference rank is needed")
        missing = sorted(set(self.server_of) - set(self.inference_ranks))
        if missing:
            raise ConfigError(
                f"placement: ranks {missing} serve others but are not inference ranks"
            )
        if set(self.device_of) != set(self.inference_ranks):
            raise ConfigError("placement: every inference rank needs exactly one device")

    @property
    def root(self) -> int:
        """The first inference rank (what the Fortran layer's ``inference_rank`` should be)."""
        return self.inference_ranks[0]

    def served_by(self, inference_rank: int) -> list[int]:
        """Return the ranks whose fields go to ``inference_rank``.

        Parameters
        ----------
        inference_rank : int
            One of :attr:`inference_ranks`.

        Returns
        -------
        list of int
            Ranks served (including the inference rank itself when it serves itself).
        """
        return [r for r, s in enumerate(self.server_of) if s == inference_rank]


def plan_placement(
    nodes: Sequence[str],
    gpus_per_node: int | Mapping[str, int],
    mode: str = "root",
) -> Placement:
    """Plan inference ranks and devices for a run.

    Parameters
    ----------
    nodes : sequence of str
        Node name of every rank, indexed by rank (e.g. gathered
        ``MPI_Get_processor_name`` values).
    gpus_per_node : int or mapping of str to int
        GPUs visible on each node (one number for all nodes, or per node name).
    mode : str
        ``"root"``: rank 0 runs inference for all ranks. ``"per_node"``: one
        inference rank per GPU on every node (node-local ranks ``0..g-1``), the
        node's other ranks shared round-robin; one CPU inference rank on nodes
        without a GPU.

    Returns
    -------
    Placement
        The plan.

    Raises
    ------
    ConfigError
        For an empty rank list, an unknown mode, a node missing from
        ``gpus_per_node`` or a negative GPU count.
    """
    if not nodes:
        raise ConfigError("placement: no ranks given")
    if mode not in ("root", "per_node"):
        raise ConfigError(f"placement: mode = {mode!r} is not 'root' or 'per_node'")

    def gpus(node: str) -> int:
        if isinstance(gpus_per_node, int):
            n = gpus_per_node
        elif node in gpus_per_node:
            n = int(gpus_per_node[node])
        else:
            raise ConfigError(f"placement: no GPU count given for node {node!r}")
        if n < 0:
            raise ConfigError(f"placement: node {node!r} has {n} GPUs; expected >= 0")
        return n

    # Node-local rank of each rank: its position among the ranks of its node.
    local: list[int] = []
    members: dict[str, list[int]] = {}
    for rank, node in enumerate(nodes):
        members.setdefault(node, []).append(rank)
        local.append(len(members[node]) - 1)

    if mode == "root":
        root = 0
        device = auto_device(gpus(nodes[root]), local[root])
        return Placement((root,), tuple(root for _ in nodes), {root: device})

    server_of = [0] * len(nodes)
    device_of: dict[int, str] = {}
    for node, ranks in members.items():
        g = gpus(node)
        servers = ranks[: max(1, min(g, len(ranks)))]
        for r in servers:
            device_of[r] = auto_device(g, local[r])
        for r in ranks:
            server_of[r] = servers[local[r] % len(servers)]
    return Placement(tuple(sorted(device_of)), tuple(server_of), device_of)


def node_inference_rank(member_comm: Any) -> int:
    """Return this inference rank's index among the inference ranks of its node.

    Collective over ``member_comm`` (``MPI_Comm_split_type`` SHARED). In the per-node
    MPI mode it is the ``local_rank`` that picks the GPU for ``device = 'auto'``
    (:func:`precipdiff.device.resolve_device`), so inference ranks forced onto one
    node use different GPUs.

    Parameters
    ----------
    member_comm : mpi4py.MPI.Comm
        Communicator of the inference ranks.

    Returns
    -------
    int
        0, 1, ... in rank order within the node.
    """
    from mpi4py import MPI

    node = member_comm.Split_type(MPI.COMM_TYPE_SHARED, key=member_comm.Get_rank())
    try:
        return int(node.Get_rank())
    finally:
        node.Free()


def member_block(members: int, parts: int, index: int) -> tuple[int, int]:
    """Contiguous block ``[lo, hi)`` of ``members`` that part ``index`` of ``parts`` generates.

    Parameters
    ----------
    members : int
        Ensemble size.
    parts : int
        Number of inference ranks sharing the ensemble.
    index : int
        0-based index of this rank among them.

    Returns
    -------
    tuple of int
        ``(lo, hi)``; the first ``members % parts`` parts get one member more, and the
        blocks in index order cover ``0..members-1`` (some are empty when
        ``parts > members``).
    """
    base, extra = divmod(members, parts)
    lo = index * base + min(index, extra)
    return lo, lo + base + (1 if index < extra else 0)
