r"""``precipdiff evaluate``: metrics (netCDF), figures (PNG) and a Markdown report.

Examples::

    # the paper's experiment on the real Iberia data (docs/results/iberia)
    precipdiff evaluate iberia --bundle models/iberia-demo --out docs/results/iberia

    # QDM validation on the ISIMIP3BASD example (docs/results/qdm_isimip)
    precipdiff evaluate qdm-check --out docs/results/qdm_isimip

    # the SPEEDY perfect-model experiments and coupled runs (docs/speedy.md)
    precipdiff evaluate speedy --bundle models/speedy-t30 --out docs/results/speedy

    # any generated ensemble (precipdiff generate output) against observations
    precipdiff evaluate files --pred pr_generated.nc --obs EOBS_Iberia_pr.nc --out eval/
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path
from typing import Any


def _cmdline() -> str:
    return "precipdiff " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _threads(n: int | None) -> None:
    if n is not None:
        import torch

        torch.set_num_threads(n)


def _iberia(args: argparse.Namespace) -> int:
    from precipdiff.offline.evaluate.iberia import IberiaConfig, run_iberia

    _threads(args.threads)
    # options left out keep IberiaConfig's defaults (one place for them)
    given = {
        "members": args.members,
        "esm_members": args.esm_members,
        "esm_max_days": args.esm_max_days,
        "change_members": args.change_members,
        "bootstrap": args.bootstrap,
    }
    opt: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    if opt.get("esm_max_days") == 0:
        opt["esm_max_days"] = None
    cfg = IberiaConfig(
        bundle=args.bundle,
        out=args.out,
        data_dir=args.data,
        steps=args.steps,
        max_days=args.max_days,
        seed=args.seed,
        device=args.device,
        output_calibration=not args.no_output_calibration,
        **opt,
    )
    head = run_iberia(cfg, log=lambda m: print(m, file=sys.stderr), command=_cmdline())
    for k, v in head.items():
        print(f"{k:40s} {v:.4f}")
    return 0


def _years(given: list[int] | None, default: tuple[int, int]) -> tuple[int, int]:
    """Return a ``FIRST LAST`` option as a pair, or the default."""
    return default if given is None else (int(given[0]), int(given[1]))


def _speedy(args: argparse.Namespace) -> int:
    from precipdiff.offline.evaluate.speedy import PARTS, SpeedyConfig, run_speedy

    _threads(args.threads)
    cfg = SpeedyConfig(
        runs=args.runs,
        bundle=args.bundle,
        out=args.out,
        parts=tuple(args.parts) if args.parts else PARTS,
        members=args.members,
        max_days=args.max_days,
        esm_max_days=None if args.esm_max_days == 0 else args.esm_max_days,
        steps=args.steps,
        seed=args.seed,
        device=args.device,
        extra={"condensate_days": args.condensate_days, "condensate_max": args.condensate_max},
    )
    cfg = dataclasses.replace(  # checked again by __post_init__
        cfg,
        heldout_years=_years(args.heldout_years, cfg.heldout_years),
        analysis_years=_years(args.analysis_years, cfg.analysis_years),
        coupled_years=_years(args.coupled_years, cfg.coupled_years),
    )
    head = run_speedy(cfg, log=lambda m: print(m, file=sys.stderr), command=_cmdline())
    for k, v in head.items():
        print(f"{k:48s} {v:.4f}")
    return 0


def _qdm_check(args: argparse.Namespace) -> int:
    from precipdiff.offline.evaluate.qdm_check import run_qdm_check

    res = run_qdm_check(args.data, args.out, n_quantiles=args.n_quantiles, command=_cmdline())
    for k, v in res.items():
        print(f"{k:40s} {v:.4f}")
    print(f"wrote {args.out / 'README.md'}")
    return 0


def _files(args: argparse.Namespace) -> int:
    import numpy as np

    from precipdiff.errors import InputError
    from precipdiff.grids import LatLonGrid
    from precipdiff.io import import_netcdf4, import_xarray
    from precipdiff.io.readers import open_predictors
    from precipdiff.offline.evaluate.report import (
        TABLE_COLUMNS,
        Report,
        day_keys,
        evaluate_ensemble,
        figures_for,
        write_metrics_netcdf,
    )

    import_netcdf4()
    xr = import_xarray()
    with xr.open_dataset(args.pred) as ds:
        if args.pred_var not in ds:
            raise InputError(
                f"{args.pred} has no variable {args.pred_var!r} ({list(ds.data_vars)})"
            )
        da = ds[args.pred_var]
        if "member" not in da.dims:
            da = da.expand_dims("member", axis=1)
        da = da.transpose("time", "member", "lat", "lon")
        units = str(da.attrs.get("units", "mm day-1"))
        pred = np.asarray(da.values, dtype=np.float64)
        if units in ("kg m-2 s-1", "kg m**-2 s**-1"):
            pred = pred * 86400.0
        lat, lon = np.asarray(ds["lat"].values), np.asarray(ds["lon"].values)
        t_pred = ds["time"].values
    grid = LatLonGrid(lat, lon)
    obs_ds = open_predictors([args.obs], ["pr"], grid=grid)
    try:
        obs = np.asarray(obs_ds["pr"].values, dtype=np.float64)
        t_obs = obs_ds["time"].values
    finally:
        obs_ds.close()

    _, ip, io = np.intersect1d(day_keys(t_pred), day_keys(t_obs), return_indices=True)
    if ip.size == 0:
        raise InputError(f"{args.pred} and {args.obs} have no day in common")
    ev = evaluate_ensemble(pred[ip], obs[io], lat, lon, label="product")
    out: Path = args.out
    figs = figures_for(ev, obs[io], {"member 0": pred[ip][:, 0]}, lat, lon, out)
    write_metrics_netcdf(
        out / "metrics.nc",
        ev.scalars,
        ev.arrays,
        {"lat": lat, "lon": lon, **ev.coords},
        {"prediction": str(args.pred), "observations": str(args.obs)},
    )
    rep = Report(f"Evaluation of {args.pred.name}")
    rep.add_text(
        f"{ip.size} common days; {pred.shape[1]} member(s); observations {args.obs} "
        "(bilinearly regridded onto the product's grid)."
    )
    rep.add_table(TABLE_COLUMNS, ev.rows)
    for k, p in figs.items():
        rep.add_figure(p, out, k.replace("_", " "))
    rep.write(out / "README.md", _cmdline())
    print(f"wrote {out / 'README.md'}, {out / 'metrics.nc'} and {len(figs)} figures")
    return 0


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the ``evaluate`` subcommand (``iberia``, ``qdm-check``, ``files``).

    Parameters
    ----------
    subparsers
        The ``add_subparsers`` action of the top-level parser.
    """
    p = subparsers.add_parser("evaluate", help="metrics, figures and reports")
    sub = p.add_subparsers(dest="evaluate_command", metavar="EXPERIMENT", required=True)
    ib = sub.add_parser("iberia", help="the paper's experiment on the real Iberia data")
    ib.add_argument("--bundle", type=Path, required=True, help="bundle (models/iberia-demo)")
    ib.add_argument("--out", type=Path, required=True, help="output directory")
    ib.add_argument("--data", type=Path, help="shared data directory (default: ../shared/data)")
    ib.add_argument("--members", type=int, help="members of the (a) ensemble (default 16)")
    ib.add_argument("--esm-members", type=int, help="members of (b)/(c) runs (default 2)")
    ib.add_argument(
        "--change-members",
        type=int,
        help="members of the QDM-on historical/RCP8.5 runs of (c) (default 8)",
    )
    ib.add_argument(
        "--bootstrap",
        type=int,
        help="draws of the winter-block bootstrap of the (c) change signals (default 300; 0: off)",
    )
    ib.add_argument("--steps", type=int, help="sampler steps (default: the bundle's)")
    ib.add_argument("--max-days", type=int, help="at most this many validation days in (a)")
    ib.add_argument(
        "--esm-max-days",
        type=int,
        help="days generated per ESM/NCEP climatology run in (b)/(c) (default: all; "
        "0 = all); a subsample makes the change targets noisy",
    )
    ib.add_argument(
        "--no-output-calibration",
        action="store_true",
        help="skip the rows with the bundle's output calibration (when it has one)",
    )
    ib.add_argument("--seed", type=int, default=0)
    ib.add_argument("--device", default="auto")
    ib.add_argument("--threads", type=int, help="torch CPU threads")
    ib.set_defaults(func=_iberia)
    sp = sub.add_parser("speedy", help="SPEEDY perfect-model experiments and coupled runs")
    sp.add_argument("--runs", type=Path, default=Path("out/speedy"), help="run directory")
    sp.add_argument("--bundle", type=Path, default=Path("models/speedy-t30"))
    sp.add_argument("--out", type=Path, required=True, help="output directory")
    sp.add_argument(
        "--parts",
        nargs="+",
        choices=("heldout", "biased", "warming", "coupled"),
        help="default: all",
    )
    sp.add_argument("--members", type=int, default=8, help="members of the held-out ensemble")
    sp.add_argument("--max-days", type=int, help="at most this many held-out days")
    sp.add_argument(
        "--esm-max-days",
        type=int,
        default=0,
        help="days generated per biased/warming product (0: all)",
    )
    sp.add_argument("--steps", type=int, help="sampler steps (default: the bundle's)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--device", default="auto")
    sp.add_argument("--threads", type=int, help="torch CPU threads")
    sp.add_argument(
        "--condensate-days", type=float, default=1.0, help="the interactive run's setting (report)"
    )
    sp.add_argument(
        "--condensate-max",
        type=float,
        default=2.0,
        help="the interactive run's condensate_max, kg m-2 (report)",
    )
    for flag, what in (
        ("--heldout-years", "held-out years of the control (default 1991 1992)"),
        ("--analysis-years", "years of the biased and warming comparison (default 1982 1986)"),
        ("--coupled-years", "years of the coupled runs and their control (default 1981 1990)"),
    ):
        sp.add_argument(flag, type=int, nargs=2, metavar=("FIRST", "LAST"), help=what)
    sp.set_defaults(func=_speedy)
    qc = sub.add_parser("qdm-check", help="QDM validation on the ISIMIP3BASD example")
    qc.add_argument("--out", type=Path, required=True)
    qc.add_argument("--data", type=Path, help="shared data directory")
    qc.add_argument("--n-quantiles", type=int, default=50)
    qc.set_defaults(func=_qdm_check)
    fl = sub.add_parser("files", help="a generated ensemble file against observations")
    fl.add_argument("--pred", type=Path, required=True, help="precipdiff generate output")
    fl.add_argument("--obs", type=Path, required=True, help="observed precipitation file")
    fl.add_argument("--pred-var", default="pr")
    fl.add_argument("--out", type=Path, required=True)
    fl.set_defaults(func=_files)
