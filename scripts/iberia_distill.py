#!/usr/bin/env python
"""Distil the Iberia demo's sampler into two evaluations per member, on the inner split.

Issue 13's stretch goal: a sampler at 1-2 network evaluations per member with the same
calibration and a CRPS within 5 % of the reference (the bundle's default,
DPM-Solver++(2M) with 8 evaluations). Everything happens on training winters only:

1. the teacher is the inner-split bundle of ``scripts/iberia_selection.py`` (the
   shipped config trained on DJF 1982/83-1990/91, output-calibrated as shipped;
   ``--variant``), which that script must have trained and calibrated first;
2. :func:`precipdiff.offline.train.distill.distill_bundle` (what ``precipdiff train
   distill`` runs): teacher draws from its own pipeline (regression, condition noise,
   statics, 8-evaluation sampler) on every inner *training* day, ``--draw-members``
   each; the student, a copy of the teacher's denoiser, trained on them for
   ``--steps`` Adam steps (the settings are ``DEFAULT_SETTINGS``, fixed before any
   score was seen; no choice is made on the scores) and written as a bundle beside
   the teacher's, with the teacher's output calibration;
4. both bundles generate the inner validation winters (DJF 1991/92-1993/94) with the
   same members and seeds, scored with and without the output calibration by the
   metrics of ``precipdiff evaluate iberia`` (a). (Speed: ``bench/bench_sampler_quality.py``.)

Usage (about 30 minutes on one core of the development machine)::

    PRECIPDIFF_SHARED_DATA=../shared/data .venv/bin/python scripts/iberia_distill.py \
        [--variant shipped] [--steps 1500]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from precipdiff.offline.train.distill import DEFAULT_SETTINGS, distill_bundle

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

KEYS = (
    ("crps", "CRPS", "{:.3f}"),
    ("spread_skill", "spread-skill", "{:.2f}"),
    ("p99_ratio", "p99 / E-OBS", "{:.2f}"),
    ("wet_ratio", "wet days / E-OBS", "{:.2f}"),
    ("band_ratio", "1-2 deg power / E-OBS", "{:.2f}"),
    ("mean_bias", "mean bias", "{:+.2f}"),
)


def main() -> int:
    """Distil, score and print the comparison."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variant", default="shipped")
    ap.add_argument("--out", default=str(REPO / "out" / "selection"))
    ap.add_argument("--draw-members", type=int, default=DEFAULT_SETTINGS["members"])
    ap.add_argument("--steps", type=int, default=DEFAULT_SETTINGS["steps"])
    ap.add_argument("--batch-size", type=int, default=DEFAULT_SETTINGS["batch_size"])
    ap.add_argument("--lr", type=float, default=DEFAULT_SETTINGS["lr"])
    ap.add_argument("--members", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--write-docs", action="store_true", help="write the table to selection.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    from precipdiff.testing import shared_data_dir

    if shared_data_dir() is None:
        print("SKIP: ../shared/data not found (set PRECIPDIFF_SHARED_DATA)")
        return 0
    import iberia_selection as sel
    from precipdiff.generator import PrecipGenerator

    cfg = sel.variant_config(args.variant, Path(args.out))
    teacher_path = Path(cfg.run_dir) / "calibrated_bundle"
    if not (teacher_path / "manifest.json").is_file():
        print(
            f"{teacher_path} missing: run scripts/iberia_selection.py --predictor-sets "
            f"--variants --calibrated {args.variant!r} first",
            file=sys.stderr,
        )
        return 2
    teacher = PrecipGenerator.from_bundle(teacher_path, device="cpu", use_compiled=False)
    student_path = Path(cfg.run_dir) / f"distilled_{args.steps}"
    if not (student_path / "manifest.json").is_file():
        t0 = time.perf_counter()
        distill_bundle(
            cfg,
            student_path,
            teacher_path,
            log=lambda msg: print(f"  {msg}", flush=True),
            members=args.draw_members,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
        )
        print(f"teacher draws and distillation: {time.perf_counter() - t0:.0f} s")
    student_gen = PrecipGenerator.from_bundle(student_path, device="cpu", use_compiled=False)
    labels = (f"teacher: {args.variant}, dpmpp2m 8", "student: distilled, 2 evaluations")
    cache = student_path / "scores.json"
    rows = []
    if cache.is_file():  # the bundles' scores (same members, seeds and days)
        stored = json.loads(cache.read_text())
        for label, gen in zip(labels, (teacher, student_gen), strict=True):
            c = stored[label]
            rows.append((label, gen.sampler.nfe, c["calibrated"], c["uncalibrated"]))
    else:
        periods = sel.esm_periods(teacher)
        for label, gen in zip(labels, (teacher, student_gen), strict=True):
            (cal, uncal), _ = sel.score_settings(
                cfg, gen, args.members, (True, False), periods=periods
            )
            rows.append((label, gen.sampler.nfe, cal, uncal))
    ref = rows[0][2]["crps"]
    head = [
        "product",
        "NFE",
        *(k[1] for k in KEYS),
        "CRPS / teacher",
        "CRPS uncalibrated",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, nfe, cal, uncal in rows:
        cells = [label, str(nfe), *(f.format(cal[k]) for k, _, f in KEYS)]
        cells += [f"{cal['crps'] / ref:.3f}", f"{uncal['crps']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    print("\n".join(lines))
    cache.write_text(
        json.dumps({label: {"calibrated": c, "uncalibrated": u} for label, _, c, u in rows})
    )
    if args.write_docs:
        path = REPO / "docs" / "results" / "iberia" / "selection.md"
        cmd = shlex.join(["scripts/iberia_distill.py", *sys.argv[1:]])
        path.write_text(sel.replace_block(path.read_text(), "distilled", "\n".join(lines), cmd))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
