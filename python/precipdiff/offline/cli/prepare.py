"""``precipdiff prepare``: raw ERA5 -> the chunked daily training store, once.

Reads the ``prepare`` section of a training config: ERA5 from a Zarr store in
the ARCO-ERA5 layout or from yearly/monthly CDS netCDF files, through the same
variable mapping and unit conversion as every other reader; hourly fields
become daily means (accumulations: mm/day), predictors are regridded onto the
coarse grid, precipitation stays on the fine grid; per-day moments give the
normalisation statistics. The training stages then read only the store
(``data.store``). Interrupted runs resume when the same command is repeated::

    precipdiff prepare configs/era5_global_paper.yaml --workers 16
"""

from __future__ import annotations

import argparse


def _run(args: argparse.Namespace) -> int:
    from precipdiff.offline.train.config import load_config
    from precipdiff.offline.train.prepare import run_prepare

    cfg = load_config(args.config)
    result = run_prepare(
        cfg,
        out=args.out,
        workers=args.workers,
        progress=False if args.no_progress else None,
        max_tasks=args.max_tasks,
    )
    return 0 if result.complete or args.max_tasks is not None else 1


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the ``prepare`` subcommand.

    Parameters
    ----------
    subparsers
        The ``add_subparsers`` action of the top-level parser.
    """
    p = subparsers.add_parser(
        "prepare",
        help="write the daily training store from raw (hourly) ERA5, once (resumable)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", help="training config with a 'prepare' section")
    p.add_argument("--out", help="store directory (default: prepare.out of the config)")
    p.add_argument(
        "--workers", type=int, help="worker processes (default: prepare.workers; 0: in-process)"
    )
    p.add_argument(
        "--max-tasks",
        type=int,
        help="stop after this many units of work (rerun to continue, e.g. in several batch jobs)",
    )
    p.add_argument("--no-progress", action="store_true", help="print nothing but errors")
    p.set_defaults(func=_run)
