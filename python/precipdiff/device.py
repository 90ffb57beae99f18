"""Which torch device this process uses, from a setting and the launcher's environment.

One rule for every entry point (the generator, the embedded server, training,
the CLI): :func:`resolve_device` turns ``"auto" | "cpu" | "cuda" | "cuda:N"`` into a
:class:`torch.device`. ``"auto"`` and a bare ``"cuda"`` take the GPU of the
process's node-local rank (:func:`auto_device`: ``cuda:(local_rank mod visible
GPUs)``), so ranks sharing a node spread over its GPUs; ``"auto"`` falls back to
the CPU without CUDA, an explicit CUDA request raises (``strict``) or warns and
falls back. The rank helpers read the launcher's environment only, so the logic
is testable anywhere with mocked values. torch is imported on first use, so that
importing the server (which the C ABI does before any plugin exists) stays light.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from precipdiff.errors import ConfigError, DeviceError

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import torch

__all__ = [
    "LOCAL_RANK_VARIABLES",
    "WORLD_RANK_VARIABLES",
    "auto_device",
    "cuda_device_count",
    "node_local_rank",
    "resolve_device",
    "world_rank",
]

#: Environment variables holding the node-local rank, in the order they are tried:
#: Open MPI, MPICH/Hydra, Intel MPI/PMI, Slurm, torchrun.
LOCAL_RANK_VARIABLES: tuple[str, ...] = (
    "OMPI_COMM_WORLD_LOCAL_RANK",
    "MPI_LOCALRANKID",
    "PMI_LOCAL_RANK",
    "SLURM_LOCALID",
    "LOCAL_RANK",
)

#: Environment variables holding the global rank: Open MPI, MPICH/PMI, PMIx, Slurm.
WORLD_RANK_VARIABLES: tuple[str, ...] = (
    "OMPI_COMM_WORLD_RANK",
    "PMI_RANK",
    "PMIX_RANK",
    "SLURM_PROCID",
)


def _first_rank(variables: tuple[str, ...], environ: Mapping[str, str] | None) -> int | None:
    env = os.environ if environ is None else environ
    for var in variables:
        val = env.get(var, "").strip()
        if val.isdigit():
            return int(val)
    return None


def node_local_rank(environ: Mapping[str, str] | None = None) -> int | None:
    """Return this process's rank among the ranks of its node, from the launcher.

    Parameters
    ----------
    environ : Mapping[str, str], optional
        Environment to read (default ``os.environ``).

    Returns
    -------
    int or None
        The first valid value of :data:`LOCAL_RANK_VARIABLES`, or None when the
        process was not started by a known launcher.
    """
    return _first_rank(LOCAL_RANK_VARIABLES, environ)


def world_rank(environ: Mapping[str, str] | None = None) -> int:
    """Return this process's global MPI rank from the launcher's environment (0 if none).

    Parameters
    ----------
    environ : Mapping[str, str], optional
        Environment to read (default ``os.environ``).

    Returns
    -------
    int
        The first valid value of :data:`WORLD_RANK_VARIABLES`, else 0.
    """
    rank = _first_rank(WORLD_RANK_VARIABLES, environ)
    return 0 if rank is None else rank


def cuda_device_count() -> int:
    """Return the number of CUDA devices this process can use (0 without CUDA).

    Returns
    -------
    int
        ``torch.cuda.device_count()`` when CUDA is available, else 0.
    """
    import torch

    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def auto_device(n_devices: int | None = None, local_rank: int | None = None) -> str:
    """Return the device ``device = 'auto'`` stands for in this process.

    Parameters
    ----------
    n_devices : int, optional
        Visible CUDA devices (default: :func:`cuda_device_count`).
    local_rank : int, optional
        Node-local rank (default: :func:`node_local_rank`, 0 when unknown).

    Returns
    -------
    str
        ``"cpu"`` when no GPU is visible, else ``"cuda:k"`` with
        ``k = local_rank % n_devices`` (ranks beyond the GPU count share).

    Raises
    ------
    ConfigError
        When ``n_devices`` or ``local_rank`` is negative.
    """
    n = cuda_device_count() if n_devices is None else int(n_devices)
    if n < 0:
        raise ConfigError(f"placement: n_devices = {n} must be >= 0")
    if local_rank is None:
        local_rank = node_local_rank() or 0
    if local_rank < 0:
        raise ConfigError(f"placement: local_rank = {local_rank} must be >= 0")
    if n == 0:
        return "cpu"
    return f"cuda:{local_rank % n}"


def resolve_device(
    device: str | torch.device = "auto",
    *,
    strict: bool = True,
    local_rank: int | None = None,
) -> torch.device:
    """Turn a device setting into the :class:`torch.device` this process uses.

    Parameters
    ----------
    device : str or torch.device
        ``"auto"`` (a GPU when one is visible, else the CPU), ``"cpu"``, ``"cuda"``
        (a GPU, required) or ``"cuda:N"``.
    strict : bool
        When CUDA is asked for explicitly but unavailable (or ``N`` is beyond the
        visible devices): raise (True) or warn and use the CPU (False).
    local_rank : int, optional
        Node-local rank choosing the GPU for ``"auto"``/``"cuda"`` (default: from
        the launcher's environment, :func:`node_local_rank`; 0 when unknown).

    Returns
    -------
    torch.device
        ``cpu`` or ``cuda:k``.

    Raises
    ------
    DeviceError
        For an unknown device, or an unavailable CUDA device with ``strict``.
    """
    import torch

    name = str(device)
    if name == "auto":
        return torch.device(auto_device(local_rank=local_rank))
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise DeviceError(
            f"unknown device {name!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'"
        ) from exc
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type != "cuda":
        raise DeviceError(f"device {name!r} is not supported; use 'auto', 'cpu' or 'cuda'")
    count = cuda_device_count()
    if dev.index is None and count > 0:
        return torch.device(auto_device(count, local_rank))
    if dev.index is not None and dev.index < count:
        return dev
    why = (
        f"CUDA is not available (torch {torch.__version__}, no CUDA device visible)"
        if count == 0
        else f"only {count} CUDA device(s) are visible (CUDA_VISIBLE_DEVICES)"
    )
    if strict:
        raise DeviceError(f"device {name!r} was requested but {why}")
    log.warning("device %r was requested but %s; running on the CPU", name, why)
    return torch.device("cpu")
