"""What reduced precision does to the generated field and to the scores (Iberia validation).

The evidence behind each bundle's default ``precision`` (manifest) and the namelist
option: the bundle's generator runs on the reanalysis-driven validation split of
the paper experiment (NCEP/NCAR predictors on the validation winters, E-OBS truth
on the fine grid, sea cells excluded -- the same days as ``precipdiff evaluate
iberia`` part (a)) at float32 and at each reduced precision, with the same seeds,
and reports:

* the **field**: mean and 99.9th percentile of |member(bf16) - member(float32)|
  (mm/day), relative to the float32 ensemble spread, the change of the mean and of
  the wet-day frequency;
* the **scores** against E-OBS: CRPS (mm/day), spread-skill ratio, p99 (pooled),
  each next to float32;
* the **sampling-noise floor**: the same scores for float32 with another seed --
  a precision whose score changes stay inside this floor is as good as float32.

Usage::

    nice .venv/bin/python bench/bench_precision.py --bundle models/iberia-demo --members 8
    ... --precisions float32 bf16 fp16 --device cuda      # on a GPU

Needs ../shared/data (set PRECIPDIFF_SHARED_DATA); prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def load_validation(bundle: str, validation_start: str, max_days: int | None) -> tuple[Any, ...]:
    from precipdiff.bundle import read_manifest
    from precipdiff.io.readers import open_predictors
    from precipdiff.testing import shared_data_dir

    data = shared_data_dir()
    if data is None:
        print("SKIP: ../shared/data not found (set PRECIPDIFF_SHARED_DATA)")
        sys.exit(0)
    root = Path(data) / "climate4r_iberia"
    m = read_manifest(bundle)
    names = m.variable_names()
    files = [root / f"NCEP_Iberia_{n}.nc" for n in names]
    ds = open_predictors(files, list(m.variables), grid=m.coarse_grid_obj())
    obs_ds = open_predictors([root / "EOBS_Iberia_pr.nc"], ["pr"], grid=m.fine_grid_obj())
    try:
        t_n = ds["time"].values.astype("datetime64[D]")
        t_o = obs_ds["time"].values.astype("datetime64[D]")
        common, i_n, i_o = np.intersect1d(t_n, t_o, return_indices=True)
        keep = common >= np.datetime64(validation_start)
        i_n, i_o = i_n[keep], i_o[keep]
        if max_days is not None and i_n.size > max_days:
            sel = np.unique(np.linspace(0, i_n.size - 1, max_days).round().astype(int))
            i_n, i_o = i_n[sel], i_o[sel]
        pred = {str(k): np.asarray(ds[k].values[i_n], np.float32) for k in ds.data_vars}
        obs = np.asarray(obs_ds["pr"].values[i_o], np.float64)
    finally:
        ds.close()
        obs_ds.close()
    return pred, obs, common[keep].size if max_days is None else i_n.size


def scores(fine: np.ndarray, obs: np.ndarray) -> dict[str, float]:
    from precipdiff.offline import metrics

    land = np.isfinite(obs)
    ens = np.where(land[:, None], fine, np.nan)
    crps = metrics.crps_ensemble(ens, obs)
    ss = metrics.spread_skill(ens, obs)
    return {
        "crps": float(np.nanmean(crps)),
        "spread_skill": float(ss.ratio),
        "p99": float(metrics.quantiles(ens, (0.99,))[0]),
        "p99_obs": float(metrics.quantiles(obs, (0.99,))[0]),
        "mean": float(np.nanmean(ens)),
        "wet_freq": float(np.nanmean(ens >= 1.0)),
    }


def field_diff(a: np.ndarray, ref: np.ndarray, land: np.ndarray) -> dict[str, float]:
    d = np.abs(a - ref)[:, :, land]
    spread = float(np.std(ref, axis=1, ddof=1)[:, land].mean())
    return {
        "mean_abs_diff": float(d.mean()),
        "p999_abs_diff": float(np.quantile(d, 0.999)),
        "max_abs_diff": float(d.max()),
        "rel_to_spread": float(d.mean()) / spread if spread > 0 else float("nan"),
        "spread": spread,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--bundle", default=str(REPO / "models" / "iberia-demo"))
    ap.add_argument("--members", type=int, default=8)
    ap.add_argument("--precisions", nargs="+", default=["float32", "bf16"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--validation-start", default="1994-12-01")
    ap.add_argument("--max-days", type=int, default=None, help="subsample the validation days")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    import torch

    from precipdiff.generator import PrecipGenerator
    from precipdiff.perf.process import ProcessSettings, configure

    configure(ProcessSettings(threads=args.threads), device_type=args.device.split(":")[0])
    pred, obs, ndays = load_validation(args.bundle, args.validation_start, args.max_days)
    land = np.isfinite(obs).any(axis=0)
    print(
        f"bundle {args.bundle}: {ndays} validation days from {args.validation_start}, "
        f"{args.members} members, device {args.device}, torch {torch.__version__}",
        flush=True,
    )
    runs: dict[str, np.ndarray] = {}
    times: dict[str, float] = {}
    for prec in args.precisions:
        gen = PrecipGenerator.from_bundle(
            args.bundle, device=args.device, precision=prec, use_compiled=False
        )
        t0 = time.perf_counter()
        runs[prec] = gen.generate(pred, members=args.members, seed=args.seed).fine
        times[prec] = time.perf_counter() - t0
        print(f"  {prec}: {times[prec]:.1f} s", flush=True)
    gen32 = PrecipGenerator.from_bundle(
        args.bundle, device=args.device, precision="float32", use_compiled=False
    )
    other = gen32.generate(pred, members=args.members, seed=args.seed + 1).fine
    ref = runs["float32"] if "float32" in runs else other
    rows: dict[str, dict[str, float]] = {}
    for prec, fine in runs.items():
        rows[prec] = {**scores(fine, obs), **field_diff(fine, ref, land)}
    rows[f"float32, seed {args.seed + 1}"] = {**scores(other, obs), **field_diff(other, ref, land)}
    base = rows.get("float32", rows[f"float32, seed {args.seed + 1}"])
    print(
        "\n| run | CRPS (mm/day) | spread-skill | p99 (mm/day) | mean (mm/day) | wet days "
        "| mean abs diff to float32 (mm/day) | / ensemble spread | 99.9th pct abs diff |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for k, r in rows.items():
        print(
            f"| {k} | {r['crps']:.4f} ({r['crps'] / base['crps']:.4f}) | "
            f"{r['spread_skill']:.4f} | {r['p99']:.2f} | {r['mean']:.4f} | {r['wet_freq']:.4f} | "
            f"{r['mean_abs_diff']:.4f} | {r['rel_to_spread']:.4f} | {r['p999_abs_diff']:.3f} |"
        )
    print(f"\nE-OBS p99 {base['p99_obs']:.2f} mm/day; float32 ensemble spread {base['spread']:.3f}")
    print(
        f"(the row 'float32, seed {args.seed + 1}' is the sampling-noise floor: a different "
        "draw at the same precision)"
    )
    if args.json:
        args.json.write_text(json.dumps({"days": ndays, "rows": rows, "seconds": times}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
