#!/usr/bin/env python3
"""The host's side of the process set-up: host model step times with the plugin present.

The embedded server sets the process up for inference (torch threads, a caching
allocator for torch's tensors, optionally flushing denormals inside inference). This
measures whether that disturbs the host model itself: the time per simulated day the
host spends *outside* precipdiff calls (the driver's wall time minus its time inside
``precipdiff_*`` calls), for

* ``off``: the host alone, no plugin;
* ``idle``: the plugin present, initialised with the shipped bundle and fed every
  step, but with an averaging window longer than the run, so it never runs the
  networks (``window_s`` = 30 days); process set-up at its defaults;
* ``idle, torch allocator``: the same with ``torch_allocator = 'default'``;
* ``active``: a window closes every day and the networks run (a tiny bundle for the
  toy model, so that the run stays short), with ``flush_denormals = .true.``: the
  host's time between inferences, after the plugin has run.

Hosts: the toy ESM (``build/bin/toy_esm``, 1° global, 48 steps a day) and, when built,
SPEEDY (``build/bin/speedy_precipdiff``, T30, diagnostic coupling). Rounds alternate the
configurations (fresh process each), medians over rounds; ratios to ``off``.

Usage::

    nice .venv/bin/python bench/bench_host_idle.py [--days 3] [--rounds 3] [--hosts toy speedy]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
IDLE_WINDOW_S = 30 * 86400.0


def _module(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


TOY_TOTAL = re.compile(
    r"toy_esm: wall time\s+([\d.]+) s,\s+([\d.]+) s per simulated day "
    r"\(plugin incl\. start-up\s+([\d.]+) s per day\)"
)


def run_toy(exe: Path, work: Path, days: int, plugin: dict[str, Any] | None) -> float:
    """Host seconds per simulated day outside precipdiff (wall time, start-up excluded)."""
    toy = _module(REPO / "examples" / "toy_esm" / "run_toy_esm.py", "run_toy_esm")
    nml = work / "toy.nml"
    toy_cfg = {
        "ndays": days,
        "nlon": 360,
        "nlat": 180,
        "dt": 1800.0,
        "use_plugin": plugin is not None,
        "write_fine": False,
        "output_file": str(work / "toy_out.nc"),
        "start_date": "2000-01-01 00:00:00",
    }
    toy.write_namelist(nml, toy_cfg, plugin)
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(
        [str(exe), str(nml)], capture_output=True, text=True, cwd=work, env=env, check=False
    )
    m = TOY_TOTAL.search(proc.stdout)
    if proc.returncode or m is None:
        raise SystemExit(f"toy_esm failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    _total, per_day, plugin_per_day = (float(g) for g in m.groups())
    # the plugin's share includes its start-up; the host's share is the rest
    return per_day - plugin_per_day


SPEEDY_DAY = re.compile(r"^speedy_precipdiff:\s+\d+\s")


def run_speedy(exe: Path, work: Path, days: int, plugin: dict[str, Any] | None) -> float:
    runner = _module(REPO / "examples" / "speedy" / "run_speedy.py", "run_speedy")
    mode = "off" if plugin is None else "diagnostic"
    driver = {"ndays": days, "mode": mode, "output_file": "", "verbose": True}
    driver["start_date"] = runner.REFERENCE_DATE
    driver["reference_date"] = runner.REFERENCE_DATE
    nml = runner.write_namelist(work / "speedy.nml", driver, plugin)
    proc = runner.run_driver(exe, work, nml, {**os.environ, "OMP_NUM_THREADS": "2"}, echo=False)
    if proc.returncode:
        raise SystemExit(f"speedy_precipdiff failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    host = []
    for line in proc.stdout.splitlines():
        if SPEEDY_DAY.match(line):
            f = line.split()
            host.append(float(f[-2]) - float(f[-1]))  # wall_s - plugin_s of the day
    return statistics.median(host)


def _measure(args: argparse.Namespace, work: Path) -> None:
    """Run every host and configuration in ``work``; print the tables."""
    global_bundle = str(REPO / "models" / "era5-global-shape")
    for host in args.hosts:
        if host == "toy":
            exe = args.build_dir / "bin" / "toy_esm"
            toy = _module(REPO / "examples" / "toy_esm" / "run_toy_esm.py", "run_toy_esm")
            tiny = str(toy.tiny_bundle(work / "toy_tiny"))
            run = run_toy
            base = {
                "device": "cpu",
                "members": 1,
                "output_units": "kg m-2 s-1",
                "reference_time": "2000-01-01 00:00:00",
                "torch_threads": 2,
            }
            idle = {**base, "bundle_path": global_bundle, "window_s": IDLE_WINDOW_S}
            active = {**base, "bundle_path": tiny, "window_s": 86400.0}
        else:
            exe = args.build_dir / "bin" / "speedy_precipdiff"
            runner = _module(REPO / "examples" / "speedy" / "run_speedy.py", "run_speedy")
            speedy_dir = None
            cache = args.build_dir / "CMakeCache.txt"
            for line in cache.read_text().splitlines() if cache.is_file() else []:
                if line.startswith("SPEEDY_SOURCE_DIR:") and line.split("=", 1)[1]:
                    speedy_dir = Path(line.split("=", 1)[1])
            if not exe.is_file() or speedy_dir is None:
                print("speedy: not built (SPEEDY_SOURCE_DIR); skipped")
                continue
            runner.prepare_rundir(work, speedy_dir)
            tiny = str(runner.tiny_bundle(work / "speedy_tiny"))
            run = run_speedy
            idle = runner.plugin_namelist(Path(tiny), threads=2, window_s=IDLE_WINDOW_S)
            active = runner.plugin_namelist(Path(tiny), threads=2)
        if not exe.is_file():
            print(f"{host}: {exe} not built; skipped")
            continue
        configs: dict[str, dict[str, Any] | None] = {
            "off": None,
            "idle": idle,
            "idle, torch allocator": {**idle, "torch_allocator": "default"},
            "active, flush_denormals": {**active, "flush_denormals": True},
        }
        res: dict[str, list[float]] = {k: [] for k in configs}
        for r in range(args.rounds):
            for name, plugin in configs.items():
                res[name].append(run(exe, work, args.days, plugin))
                print(
                    f"  {host} round {r + 1} {name:26s} host {res[name][-1]:.3f} s/day", flush=True
                )
        off = statistics.median(res["off"])
        print(f"\n{host}: host time per simulated day outside precipdiff, median of {args.rounds}")
        print(f"{'configuration':26s} {'host s/day':>10s} {'ratio to off':>12s}")
        for name, v in res.items():
            med = statistics.median(v)
            print(f"{name:26s} {med:10.3f} {med / off:12.3f}")
        print()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--days", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--hosts", nargs="+", default=["toy", "speedy"], choices=("toy", "speedy"))
    p.add_argument("--build-dir", type=Path, default=REPO / "build")
    args = p.parse_args(argv)
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(f"load average {' / '.join(load)} on {os.cpu_count()} CPU(s)", flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench_host_"))
    try:
        _measure(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(f"load average {' / '.join(load)} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
