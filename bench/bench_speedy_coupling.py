#!/usr/bin/env python3
"""SPEEDY with and without precipdiff, side by side: the coupling's cost per simulated day.

Runs ``speedy_precipdiff`` alternately (``--repeats`` rounds, each round every
configuration once, so machine load hits all of them alike) for ``--days`` days from the
same restart:

* ``off``: SPEEDY alone, no output: the uncoupled model's speed (SPEEDY's own main loop);
* ``off+output``: SPEEDY alone writing the daily output (what the control runs do);
* ``diagnostic`` and ``interactive``: with precipdiff, ``--members`` members a day.

Time per simulated day is measured by the driver around each day of its time loop
(start-up, i.e. SPEEDY's initialisation and precipdiff's interpreter, imports and bundle
load, is reported separately), in wall time and in CPU time of the process. Prints the
median over rounds of each configuration's time and of its ratio to ``off`` *in the same
round* (the load of a shared machine changes between rounds: a ratio of medians taken in
different rounds can be off by a factor of 3 here). The performance goal of issue #10 is
interactive / off <= 2 at one member a day; it is judged on the CPU-time ratio, which is
what the wall-time ratio is on a core of one's own (the runs are single-threaded), while
the wall-time ratio on a shared machine also measures who else was running.

Usage::

    python bench/bench_speedy_coupling.py --bundle models/speedy-t30 --days 30 --repeats 3
    python bench/bench_speedy_coupling.py --tiny-bundle        # without the trained bundle

About 2-4 min here with the defaults (machine shared with other jobs).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def load_runner() -> ModuleType:
    path = REPO / "examples" / "speedy" / "run_speedy.py"
    spec = importlib.util.spec_from_file_location("run_speedy", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["run_speedy"] = mod
    spec.loader.exec_module(mod)
    return mod


def speedy_source(build: Path) -> Path | None:
    cache = build / "CMakeCache.txt"
    if cache.is_file():
        for line in cache.read_text().splitlines():
            if line.startswith("SPEEDY_SOURCE_DIR:"):
                return Path(line.split("=", 1)[1])
    return None


DAY_LINE = re.compile(r"^speedy_precipdiff:\s+(\d+)\s")


def run_once(
    runner: ModuleType, exe: Path, work: Path, driver: dict[str, Any], plugin: dict[str, Any] | None
) -> dict[str, float]:
    """One run; returns per-day wall and CPU seconds (loop only) and start-up seconds."""
    nml = runner.write_namelist(work / "bench.nml", driver, plugin)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = runner.run_driver(exe, work, nml, dict(os.environ, OMP_NUM_THREADS="1"), echo=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.stdout.write(proc.stdout[-3000:] + proc.stderr[-2000:])
        raise SystemExit(f"speedy_precipdiff failed (mode {driver['mode']})")
    days = []
    for line in proc.stdout.splitlines():
        if DAY_LINE.match(line):
            fields = line.split()
            days.append((float(fields[-2]), float(fields[-1])))  # wall_s, plugin_s
    n = len(days)
    loop = sum(d[0] for d in days)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # CPU time of the loop: the process's CPU time scaled by the loop's share of its wall
    # time (start-up is mostly CPU-bound as well, so this is a fair split).
    return {
        "wall_per_day": loop / n,
        "plugin_per_day": sum(d[1] for d in days) / n,
        "cpu_per_day": cpu * (loop / wall) / n,
        "startup": wall - loop,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--exe", type=Path, default=REPO / "build" / "bin" / "speedy_precipdiff")
    p.add_argument("--speedy-dir", type=Path, default=None)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--bundle", type=Path, default=REPO / "models" / "speedy-t30")
    g.add_argument("--tiny-bundle", action="store_true")
    p.add_argument(
        "--restart",
        type=Path,
        default=REPO / "out/speedy/spinup/restart_1981.nc",
        help="start state (default: after the spin-up; cold start if missing)",
    )
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--members", type=int, default=1)
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args(argv)
    runner = load_runner()
    speedy_dir = args.speedy_dir or speedy_source(REPO / "build")
    if speedy_dir is None or not args.exe.is_file():
        raise SystemExit("needs build/bin/speedy_precipdiff and the SPEEDY source (setup.sh)")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_speedy_"))
    runner.prepare_rundir(work, speedy_dir)
    bundle = runner.tiny_bundle(work / "tiny_bundle") if args.tiny_bundle else args.bundle
    if not (Path(bundle) / "manifest.json").is_file():
        raise SystemExit(f"no bundle at {bundle} (use --tiny-bundle)")
    plugin = runner.plugin_namelist(Path(bundle).resolve(), members=args.members)
    if args.restart.is_file():
        start = {"restart_in": str(args.restart.resolve())}
        ref = "1980-01-01"
        plugin["reference_time"] = f"{ref} 00:00:00"
    else:
        start, ref = {"start_date": runner.REFERENCE_DATE}, runner.REFERENCE_DATE
    base = {"ndays": args.days, "reference_date": ref, "verbose": True, **start}
    configs = {
        "off": ({**base, "mode": "off", "output_file": ""}, None),
        "off+output": ({**base, "mode": "off", "output_file": str(work / "o.nc")}, None),
        "diagnostic": ({**base, "mode": "diagnostic", "output_file": ""}, plugin),
        "interactive": ({**base, "mode": "interactive", "output_file": ""}, plugin),
    }
    results: dict[str, list[dict[str, float]]] = {k: [] for k in configs}
    print(
        f"bundle {bundle}, {args.members} member(s) a day, {args.days} days x {args.repeats} rounds"
    )
    for r in range(args.repeats):
        for name, (driver, plug) in configs.items():
            res = run_once(runner, args.exe, work, driver, plug)
            results[name].append(res)
            print(
                f"  round {r + 1} {name:12s} wall {res['wall_per_day']:.3f} s/day, cpu "
                f"{res['cpu_per_day']:.3f} s/day, in precipdiff {res['plugin_per_day']:.3f} s/day, "
                f"start-up {res['startup']:.1f} s",
                flush=True,
            )
    med = {k: {q: statistics.median(x[q] for x in v) for q in v[0]} for k, v in results.items()}
    ratio = {
        k: {
            q: statistics.median(
                x[q] / o[q] for x, o in zip(v, results["off"], strict=True) if o[q] > 0
            )
            for q in ("wall_per_day", "cpu_per_day")
        }
        for k, v in results.items()
    }
    print("\nmedian over rounds (time loop only; ratios to 'off' of the same round):")
    print(
        f"{'configuration':14s} {'wall s/day':>10s} {'cpu s/day':>10s} {'precipdiff':>10s} "
        f"{'ratio wall':>10s} {'ratio cpu':>10s} {'start-up s':>10s}"
    )
    for k, m in med.items():
        print(
            f"{k:14s} {m['wall_per_day']:10.3f} {m['cpu_per_day']:10.3f} "
            f"{m['plugin_per_day']:10.3f} {ratio[k]['wall_per_day']:10.2f} "
            f"{ratio[k]['cpu_per_day']:10.2f} {m['startup']:10.1f}"
        )
    rc = ratio["interactive"]["cpu_per_day"]
    rw = ratio["interactive"]["wall_per_day"]
    verdict = "meets" if rc <= 2.0 else "misses"
    what = f"interactive / off ({args.members} member a day), CPU time"
    print(f"\n{what}: {rc:.2f} (wall time {rw:.2f}): {verdict} the goal <= 2")
    return 0


if __name__ == "__main__":
    sys.exit(main())
