"""``precipdiff info``: report the installation (versions, devices, native build)."""

from __future__ import annotations

import argparse
import json
import platform
from typing import Any


def collect_info() -> dict[str, Any]:
    """Collect versions of precipdiff and its key dependencies and the devices seen.

    Returns
    -------
    dict
        JSON-serialisable description of the environment.
    """
    import numpy
    import torch

    from precipdiff import __version__

    cuda = torch.cuda.is_available()
    return {
        "precipdiff": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "cuda_available": cuda,
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if cuda
        else [],
        "torch_threads": torch.get_num_threads(),
    }


def _run(args: argparse.Namespace) -> int:
    info = collect_info()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key:16s} {value}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the ``info`` subcommand.

    Parameters
    ----------
    subparsers
        The ``add_subparsers`` action of the top-level parser.
    """
    p = subparsers.add_parser("info", help="show versions, devices and build information")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_run)
