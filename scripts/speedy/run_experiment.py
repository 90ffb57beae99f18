#!/usr/bin/env python3
"""Run the SPEEDY experiments of docs/speedy.md, one year per process, resumable.

Every experiment is a chain of one-year segments of ``build/bin/speedy_precipdiff``
joined by restarts (SPEEDY's, and precipdiff's for coupled runs), writing
``OUT/<experiment>/speedy_YYYY.nc`` (daily CF output) and ``restart_YYYY.nc``. A year
whose output and restart exist is skipped, so an interrupted job continues where it
stopped when the same command is run again.

Experiments (all start from the state at 1981-01-01 00 UTC after a one-year spin-up
from rest, so their years are directly comparable; reference date 1980-01-01):

==============  =========  =============================================================
name            years      what
==============  =========  =============================================================
spinup          1980       SPEEDY from rest, climatological SST (no output kept)
control         1981-1992  SPEEDY alone: the perfect-model truth (training 1981-1990,
                           held-out 1991-1992) and the control of the coupled runs
biased          1981-1986  "a biased ESM": the ESM-like SST error pattern (sst_bias)
sst+2k          1981-1986  SST + 2 K over open sea
sst+4k          1981-1986  SST + 4 K over open sea
diagnostic      1981-1990  precipdiff one-way (models/speedy-t30, 1 member a day)
interactive     1981-1990  precipdiff two-way (models/speedy-t30, 1 member a day)
==============  =========  =============================================================

Wall time on the 2-core development machine shared with other jobs (``nice``): about
4-5 min per simulated year for SPEEDY alone with daily output, 6-8 min coupled; the
log of each experiment records it (``OUT/<experiment>/run.log``).

Usage::

    python scripts/speedy/run_experiment.py spinup control        # the perfect-model data
    python scripts/speedy/run_experiment.py biased sst+4k sst+2k
    python scripts/speedy/run_experiment.py diagnostic interactive --bundle models/speedy-t30
"""

from __future__ import annotations

import argparse
import calendar
import importlib.util
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[2]
REFERENCE_DATE = "1980-01-01"


def load_runner() -> ModuleType:
    """examples/speedy/run_speedy.py (namelists, run directory, driver invocation)."""
    path = REPO / "examples" / "speedy" / "run_speedy.py"
    spec = importlib.util.spec_from_file_location("run_speedy", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["run_speedy"] = mod
    spec.loader.exec_module(mod)
    return mod


@dataclass(frozen=True)
class Experiment:
    """One chain of yearly segments."""

    name: str
    first: int
    last: int
    mode: str = "off"
    start_from: str | None = "spinup"  # experiment whose restart at `first` starts this one
    driver: dict[str, Any] = field(default_factory=dict)
    keep_output: bool = True


EXPERIMENTS = {
    e.name: e
    for e in [
        Experiment("spinup", 1980, 1980, start_from=None, keep_output=False),
        Experiment("control", 1981, 1992),
        Experiment("biased", 1981, 1986, driver={"sst_bias": "esm_like"}),
        Experiment("sst+2k", 1981, 1986, driver={"sst_offset_k": 2.0}),
        Experiment("sst+4k", 1981, 1986, driver={"sst_offset_k": 4.0}),
        Experiment("diagnostic", 1981, 1990, mode="diagnostic"),
        Experiment("interactive", 1981, 1990, mode="interactive"),
    ]
}


def speedy_source(build: Path) -> Path | None:
    """SPEEDY_SOURCE_DIR from the CMake cache."""
    cache = build / "CMakeCache.txt"
    if cache.is_file():
        for line in cache.read_text().splitlines():
            if line.startswith("SPEEDY_SOURCE_DIR:"):
                p = Path(line.split("=", 1)[1])
                if p.is_dir():
                    return p
    return None


def days_written(nc: Path) -> int:
    """Daily records in a (possibly unfinished) output file; 0 when unreadable."""
    try:
        import netCDF4

        with netCDF4.Dataset(nc) as ds:
            return int(ds.dimensions["time"].size)
    except (OSError, KeyError, ImportError):
        return 0


def log(path: Path, text: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    line = f"[{stamp}] {text}"
    print(line, flush=True)
    with path.open("a") as f:
        f.write(line + "\n")


def run_experiment(
    exp: Experiment,
    args: argparse.Namespace,
    runner: ModuleType,
) -> None:
    """Run (or continue) one experiment."""
    out = (args.out / exp.name).resolve()
    runner.prepare_rundir(out, args.speedy_dir)
    logf = out / "run.log"
    last = min(exp.last, args.last_year) if args.last_year else exp.last
    plugin = None
    if exp.mode != "off":
        if args.bundle is None or not (args.bundle / "manifest.json").is_file():
            raise SystemExit(f"{exp.name}: --bundle must name a bundle (got {args.bundle})")
        plugin = runner.plugin_namelist(
            args.bundle.resolve(),
            members=args.members,
            seed=args.seed,
            threads=args.threads,
            reference_date=REFERENCE_DATE,
        )
    t_all = time.perf_counter()
    for year in range(exp.first, last + 1):
        nc = out / f"speedy_{year}.nc"
        rst = out / f"restart_{year + 1}.nc"
        prst = out / f"restart_precipdiff_{year + 1}.nc"
        if rst.is_file() and (nc.is_file() or not exp.keep_output):
            continue
        if year == exp.first:
            if exp.start_from is None:
                rin, pin = "", ""
            else:
                rin = str((args.out / exp.start_from / f"restart_{year}.nc").resolve())
                if not Path(rin).is_file():
                    raise SystemExit(f"{exp.name}: needs {rin}: run '{exp.start_from}' first")
                pin = ""
        else:
            rin = str(out / f"restart_{year}.nc")
            pin = str(out / f"restart_precipdiff_{year}.nc") if plugin else ""
        ndays = 366 if calendar.isleap(year) else 365
        driver: dict[str, Any] = {
            "mode": exp.mode,
            "ndays": ndays,
            "start_date": f"{year}-01-01",
            "reference_date": REFERENCE_DATE,
            "output_file": str(nc) if exp.keep_output else "",
            "restart_in": rin,
            "restart_out": str(rst),
            # one budget line per day in speedy_YYYY.log: a failed year shows its last day
            "verbose": True,
            **exp.driver,
        }
        if plugin is not None:
            driver["precipdiff_restart_in"] = pin
            driver["precipdiff_restart_out"] = str(prst)
        nml = runner.write_namelist(out / f"speedy_{year}.nml", driver, plugin)
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        t0 = time.perf_counter()
        proc = runner.run_driver(args.exe, out, nml, env, echo=False)
        wall = time.perf_counter() - t0
        (out / f"speedy_{year}.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            errors = [ln for ln in proc.stdout.splitlines() if "error:" in ln]
            log(
                logf,
                f"{exp.name} {year}: FAILED (status {proc.returncode}) after "
                f"{days_written(nc)} complete days; {errors[-1] if errors else ''} "
                f"(see speedy_{year}.log)",
            )
            raise SystemExit(1)
        summary = [ln.split(": ", 1)[-1] for ln in proc.stdout.splitlines() if "wall time" in ln]
        log(logf, f"{exp.name} {year}: {wall:.0f} s ({summary[-1] if summary else ''})")
    log(logf, f"{exp.name}: done ({time.perf_counter() - t_all:.0f} s this invocation)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("experiments", nargs="+", choices=sorted(EXPERIMENTS))
    p.add_argument("--exe", type=Path, default=REPO / "build" / "bin" / "speedy_precipdiff")
    p.add_argument("--speedy-dir", type=Path, default=None, help="default: the build's")
    p.add_argument("--out", type=Path, default=REPO / "out" / "speedy")
    p.add_argument("--bundle", type=Path, default=REPO / "models" / "speedy-t30")
    p.add_argument("--members", type=int, default=1)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--last-year", type=int, default=None, help="stop earlier (quick tries)")
    args = p.parse_args(argv)
    if args.speedy_dir is None:
        args.speedy_dir = speedy_source(REPO / "build")
    if args.speedy_dir is None or not args.exe.is_file():
        raise SystemExit("build/bin/speedy_precipdiff and the SPEEDY source are needed (setup.sh)")
    args.out = args.out.resolve()
    runner = load_runner()
    for name in args.experiments:
        run_experiment(EXPERIMENTS[name], args, runner)
    return 0


if __name__ == "__main__":
    sys.exit(main())
