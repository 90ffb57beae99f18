"""Samplers with a trained bundle on real held-out data: few-step defaults vs the reference.

The companion of ``bench/bench_sampler_analytic.py`` (which measures each
sampler's own error with the exact denoiser of known targets): here the
denoiser is a shipped bundle's, driven exactly as at run time -- the bundle's
regression on the validation split's predictors, its condition noise, features
and static channels (:meth:`precipdiff.generator.PrecipGenerator.sample_fine`) --
and every sampler draws from the same conditions with the same seeds. Reported
per sampler, against the truth of the validation split (land cells, mm/day):

* network evaluations per member (NFE) and wall time relative to the reference
  (Heun 18 on the EDM schedule, 35 evaluations);
* CRPS of the ensemble and its ratio to the reference's;
* spread-skill ratio (1 = calibrated), p99 and wet-day frequency relative to
  the truth's, power at 1-2 grid-cell-pairs wavelengths (Hann window, largest
  all-land box) relative to the truth's, mean bias.

Usage::

    .venv/bin/python bench/bench_sampler_quality.py [--bundle models/iberia-demo]
        [--config configs/iberia_demo.yaml] [--members 8] [--days 120] [--markdown]
        [--student models/iberia-demo-distilled]

With ``--student`` a distilled student of the bundle (``precipdiff train distill``)
runs last, with its own two-evaluation sampler, on the same conditions and seeds.

Needs the training config's data (``../shared/data`` for the Iberia demo; skips
with a message otherwise). The numbers in the model card come from this command.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from precipdiff.bundle import REGRESSION_FILE, default_sampler
from precipdiff.diffusion import SamplerConfig
from precipdiff.offline import metrics

REPO = Path(__file__).resolve().parents[1]


def candidates() -> dict[str, SamplerConfig]:
    """Samplers compared; the first is the reference."""
    return {
        "reference: heun 18 (EDM rho=7)": SamplerConfig(name="heun", steps=18),
        "default: dpmpp2m 8 (log-linear, jump)": default_sampler(),
        "dpmpp2m 16 (log-linear, jump)": default_sampler().replace(steps=16),
        "dpmpp2m 6 (log-linear, jump)": default_sampler().replace(steps=6),
        "euler 8 (EDM rho=7)": SamplerConfig(name="euler", steps=8),
        "heun 4 (EDM rho=7)": SamplerConfig(name="heun", steps=4),
    }


def main() -> int:
    """Run every candidate on the same conditions and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", default=str(REPO / "models" / "iberia-demo"))
    ap.add_argument("--config", default=str(REPO / "configs" / "iberia_demo.yaml"))
    ap.add_argument("--members", type=int, default=8)
    ap.add_argument("--days", type=int, default=120, help="validation days (evenly spaced)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument(
        "--student",
        help="also a distilled student bundle of --bundle (precipdiff train distill), with its "
        "own two-evaluation sampler, on the same conditions and seeds",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from precipdiff.generator import PrecipGenerator
    from precipdiff.offline.train.config import load_config
    from precipdiff.offline.train.store_data import open_stage_data
    from precipdiff.testing import shared_data_dir

    cfg = load_config(args.config)
    if cfg.regression is None:
        print(f"SKIP: {args.config} has no regression section")
        return 0
    if cfg.regression.data.data_root is None and shared_data_dir() is None:
        print("SKIP: ../shared/data not found (set PRECIPDIFF_SHARED_DATA)")
        return 0
    gen = PrecipGenerator.from_bundle(args.bundle, device="cpu", use_compiled=False)
    data = open_stage_data(cfg.regression.data, gen.transform, base=cfg.source_dir)
    val = data.split.validation
    pick = val[
        np.unique(np.linspace(0, val.size - 1, min(args.days, val.size)).round().astype(int))
    ]
    pick = pick.astype(np.int64)
    raw = data.read(pick)
    names = gen.manifest.variable_names()
    x_feat = gen.condition_features_normalised({n: raw[n] for n in names})
    y_c = gen.regress({n: raw[n] for n in names})
    obs = np.asarray(raw["fine"], np.float64)
    land = np.isfinite(obs).all(axis=0)
    box = metrics.land_box(land)
    dx = float(abs(gen.fine_grid.lon[1] - gen.fine_grid.lon[0]))
    band = (2 * dx, 4 * dx)
    obs_p99 = float(metrics.quantiles(obs, (0.99,))[0])
    obs_wet = float(np.nanmean(metrics.wet_day_frequency(obs)))
    print(
        f"bundle {args.bundle}; {pick.size} validation days of {args.config} from "
        f"{data.split.times[pick[0]]}; {args.members} members; fine grid {gen.fine_grid.shape}"
    )
    rows = []
    ref_crps = ref_time = float("nan")
    runs: list[tuple[str, PrecipGenerator, SamplerConfig]] = [
        (label, gen, sampler) for label, sampler in candidates().items()
    ]
    if args.student:
        student = PrecipGenerator.from_bundle(args.student, device="cpu", use_compiled=False)
        same = student.manifest.files[REGRESSION_FILE] == gen.manifest.files.get(REGRESSION_FILE)
        if "distilled" not in student.manifest.provenance or not same:
            print(f"{args.student} is not a distilled student of {args.bundle}", file=sys.stderr)
            return 2
        label = f"distilled student: dpmpp2m {student.sampler.nfe} (its own network)"
        runs.append((label, student, student.sampler))
    for label, g, sampler in runs:
        t0 = time.perf_counter()
        z = g.sample_fine(y_c, x_feat, members=args.members, seed=0, sampler=sampler)
        dt = time.perf_counter() - t0
        ens = np.where(np.isfinite(obs)[:, None], gen.to_precip(z), np.nan)
        crps = float(np.nanmean(metrics.crps_ensemble(ens, obs)))
        if label.startswith("reference"):
            ref_crps, ref_time = crps, dt
        row = {
            "sampler": label,
            "NFE": sampler.nfe,
            "CRPS": crps,
            "CRPS / ref": crps / ref_crps,
            "spread-skill": metrics.spread_skill(ens, obs).ratio,
            "p99 / obs": float(metrics.quantiles(ens, (0.99,))[0]) / obs_p99,
            "wet days / obs": float(np.nanmean(metrics.wet_day_frequency(ens))) / obs_wet,
            "small-scale power / obs": metrics.band_power_ratio(
                ens[..., box[0], box[1]], obs[..., box[0], box[1]], band, dx=dx
            ),
            "mean bias": metrics.mean_bias(ens, obs),
            "time / ref": dt / ref_time,
        }
        rows.append(row)
        print(
            "  ".join(
                f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
            )
        )
    if args.markdown:
        keys = list(rows[0])
        print("\n| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
        for r in rows:
            cells = [f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for k in keys]
            print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
