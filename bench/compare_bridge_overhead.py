"""Per-call bridge overhead of two trees side by side: before/after a change.

Runs part 1 of ``bench_bridge_overhead.py`` (no-op plugin: Fortran -> C -> Python ->
Fortran per call, and the same calls into ``capi.Bridge`` from Python) alternately for a
base tree and this tree, ``--rounds`` times, each in a fresh process, and prints the
minimum per side (the least disturbed by other jobs on a shared machine) and the ratio
this/base. The measuring code is this tree's for both sides; only the native build and
the ``precipdiff`` package differ.

Usage (base = the commit before the change, built once)::

    git worktree add /tmp/base <commit> && (cd /tmp/base && cmake -S . -B build \\
        -DCMAKE_BUILD_TYPE=Release -DPython3_EXECUTABLE=$PWD/.venv/bin/python && \\
        cmake --build build -j 2)
    .venv/bin/python bench/compare_bridge_overhead.py --base /tmp/base --rounds 6
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(build: Path, python_dir: Path | None) -> dict[str, dict[str, float]]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)
    if python_dir is not None:
        env["PYTHONPATH"] = str(python_dir)
    cmd = [sys.executable, str(REPO / "bench" / "bench_bridge_overhead.py"), "--json",
           "--build-dir", str(build), "--repeat", "3"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, required=True, help="base tree (with build/)")
    ap.add_argument("--build-dir", type=Path, default=REPO / "build", help="this tree's build")
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    sides = {
        "base": (args.base.resolve() / "build", args.base.resolve() / "python"),
        "this": (args.build_dir.resolve(), None),
    }
    best: dict[str, dict[str, dict[str, float]]] = {s: {} for s in sides}
    order = list(sides)
    for i in range(args.rounds):
        # Alternate, and swap who goes first every round: drifting load hits both alike.
        for side in order if i % 2 == 0 else order[::-1]:
            build, py = sides[side]
            for grid, r in run(build, py).items():
                cur = best[side].setdefault(grid, {k: float("inf") for k in r})
                for k, v in r.items():
                    cur[k] = min(cur[k], v)
    print(f"per-call overhead, no-op plugin, min of {args.rounds} alternating rounds (us/call)")
    print(f"{'grid':>8} {'path':>22} {'base':>8} {'this':>8} {'this/base':>10}")
    for grid in best["base"]:
        for key, label in (
            ("fortran_us", "Fortran->C->Python"),
            ("python_us", "Python->capi.Bridge"),
        ):
            b, t = best["base"][grid][key], best["this"][grid][key]
            print(f"{grid:>8} {label:>22} {b:8.2f} {t:8.2f} {t / b:10.3f}")


if __name__ == "__main__":
    main()
