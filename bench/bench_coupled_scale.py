"""Coupled runs at scale: soak, plugin cost per simulated day, overlap, MPI ranks.

Every part measures side by side in one run and prints ratios.

``soak``
    The toy ESM (examples/toy_esm) coupled to the plugin for N simulated days (365 on
    the full 4-degree grid by default): no NaN, precipitation within physical bounds,
    water budget closed every day, column water non-negative, resident memory flat
    (growth after the first day below 2 %), wall time per simulated day printed, and a
    PNG of the global water budget over time. tests/python/test_soak_toy.py runs the
    same function on a reduced grid for 30 days.
``cost``
    Toy ESM (1 process) uncoupled vs coupled in sync and lagged inference: plugin wall
    time per simulated day as a fraction of the toy ESM's own time, and how much of
    the inference time the lagged mode hides (1 - extra_lagged / extra_sync).
``overlap``
    The decomposed driver on 1 rank with a synthetic model workload comparable to the
    inference time (``--work``), sync vs lagged: the fraction of the plugin time the
    lagged mode hides. (The toy ESM itself is much cheaper than inference, so ``cost``
    can hide at most the toy's own time.)
``mpi``
    The decomposed driver (tests/mpi/pd_mpi_driver) on 1 and 4 ranks with a synthetic
    per-step model workload: plugin time per simulated day as a fraction of the
    model's own step time, and gather + scatter time vs the inference rank's Python
    (inference) time.

Usage:
    .venv/bin/python bench/bench_coupled_scale.py soak [--days 365] [--nlon 90 --nlat 45]
    .venv/bin/python bench/bench_coupled_scale.py cost [--days 10]
    .venv/bin/python bench/bench_coupled_scale.py mpi  [--days 5] [--work 20]
    .venv/bin/python bench/bench_coupled_scale.py overlap [--days 5] [--work 100]
    bench/bench_coupled_scale.sh     (all parts, logs and PNG under out/bench_coupled_scale/)
Needs the CMake build (``--build-dir``, default build/; toy_esm and tests/mpi). Uses 1
torch thread per process. Numbers on a shared 2-core machine are noisy (+-20 %).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MPI_ENV = {
    "OMP_NUM_THREADS": "1",
    "OMPI_MCA_rmaps_base_oversubscribe": "1",
    "OMPI_ALLOW_RUN_AS_ROOT": "1",
    "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
}
#: Physical bound of a daily precipitation rate anywhere (kg m-2 s-1): 2000 mm/day,
#: above the world record daily total (1825 mm, La Reunion 1966).
PR_MAX = 2000.0 / 86400.0
DAY_LINE = re.compile(r"^toy_esm:\s+(\d+)\s")


# ----------------------------------------------------------------------------- helpers
def tiny_bundle(path: Path, nlon: int, nlat: int) -> Path:
    """Tiny u10/v10/msl bundle on the toy grid's pole-to-pole grid, 4x finer fine grid."""
    from precipdiff.grids import LatLonGrid
    from precipdiff.testing.models import make_tiny_bundle

    dlon = 360.0 / nlon
    coarse = LatLonGrid(lat=np.linspace(-90.0, 90.0, nlat + 1), lon=np.arange(nlon) * dlon)
    fine = LatLonGrid(
        lat=np.linspace(-90.0, 90.0, 4 * nlat + 1), lon=np.arange(4 * nlon) * (dlon / 4)
    )
    return make_tiny_bundle(
        path, coarse_grid=coarse, fine_grid=fine, variables=["u10", "v10", "msl"], overwrite=True
    )


def fortran_value(value: object) -> str:
    """Format a Python value for a Fortran namelist."""
    if isinstance(value, bool):
        return ".true." if value else ".false."
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return repr(value) if isinstance(value, float) else str(value)


def write_nml(path: Path, groups: dict[str, dict[str, object]]) -> Path:
    """Write namelist groups to one file."""
    lines: list[str] = []
    for name, keys in groups.items():
        lines.append(f"&{name}")
        lines += [f"  {k} = {fortran_value(v)}" for k, v in keys.items()]
        lines.append("/")
    path.write_text("\n".join(lines) + "\n")
    return path


def plugin_keys(bundle: Path, **extra: object) -> dict[str, object]:
    """&precipdiff_nml for the benchmarks: CPU, 1 member, 2 sampler steps, 1 thread."""
    keys: dict[str, object] = {
        "bundle_path": str(bundle),
        "device": "cpu",
        "members": 1,
        "sampler_steps": 2,
        "seed": 1,
        "output_units": "kg m-2 s-1",
        "reference_time": "2000-01-01 00:00:00",
        "torch_threads": 1,
    }
    keys.update(extra)
    return keys


def rss_kib(pid: int) -> int:
    """Resident set size of a process in KiB (0 when it has exited)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class ToyRun:
    """Outcome of one toy ESM run."""

    returncode: int
    wall_s: float
    day_wall_s: list[float] = field(default_factory=list)
    rss_kib: list[int] = field(default_factory=list)
    stdout: str = ""


def run_toy(exe: Path, nml: Path, cwd: Path) -> ToyRun:
    """Run toy_esm, sampling its RSS each time it prints a day's budget line."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [str(exe), str(nml)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    run = ToyRun(returncode=0, wall_s=0.0)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if DAY_LINE.match(line):
            run.rss_kib.append(rss_kib(proc.pid))
            run.day_wall_s.append(float(line.split()[-1]))
    run.returncode = proc.wait()
    run.wall_s = time.perf_counter() - t0
    run.stdout = "".join(lines)
    return run


def toy_namelist(
    work: Path, name: str, days: int, nlon: int, nlat: int, plugin: dict[str, object] | None
) -> Path:
    toy: dict[str, object] = {
        "ndays": days,
        "nlon": nlon,
        "nlat": nlat,
        "dt": 1800.0,
        "use_plugin": plugin is not None,
        "write_fine": False,
        "output_file": str(work / f"{name}.nc"),
    }
    groups: dict[str, dict[str, object]] = {"toy_esm_nml": toy}
    if plugin is not None:
        groups["precipdiff_nml"] = plugin
    return write_nml(work / f"{name}.nml", groups)


# -------------------------------------------------------------------------------- soak
@dataclass
class SoakResult:
    """Soak measurements and the checks that failed (empty: all passed).

    Memory: RSS is sampled at the end of every simulated day; the late level is the
    median of the last tenth of the run (robust to the transient peaks of a
    sample taken during an allocation). ``host_rss_growth_mib`` is the same
    growth of the toy ESM run uncoupled (its own netCDF output etc.);
    ``plugin_rss_growth`` = (coupled growth - uncoupled growth) / coupled day-1 RSS
    is what the plugin adds and must stay below 2 %.
    """

    days: int
    wall_s: float
    wall_per_day_s: float
    uncoupled_wall_per_day_s: float
    rss_day1_mib: float
    rss_late_mib: float
    rss_growth: float
    host_rss_growth_mib: float
    plugin_rss_growth: float
    pr_max: float
    prw_range: tuple[float, float]
    budget_residual_max: float
    failures: list[str]
    plot: str


def late_growth_mib(rss_kib: list[int]) -> tuple[float, float, float]:
    """(day-1 RSS, late RSS, growth) in MiB from per-day samples (0 = process gone)."""
    rss = np.array([x for x in rss_kib if x > 0], dtype=np.float64) / 1024.0
    if rss.size < 2:
        return float("nan"), float("nan"), float("nan")
    late = float(np.median(rss[-max(3, rss.size // 10) :]))
    return float(rss[0]), late, late - float(rss[0])


def run_soak(
    exe: Path, work: Path, days: int, nlon: int, nlat: int, bundle: Path | None = None
) -> SoakResult:
    """Couple the toy ESM for ``days`` days and check the long-run properties.

    Also runs the toy ESM uncoupled for the same days, to separate the host's own
    memory growth from the plugin's.
    """
    import netCDF4

    work.mkdir(parents=True, exist_ok=True)
    bundle = bundle or tiny_bundle(work / "tiny_bundle", nlon, nlat)
    nml = toy_namelist(work, "soak", days, nlon, nlat, plugin_keys(bundle))
    out = work / "soak.nc"
    out.unlink(missing_ok=True)
    run = run_toy(exe, nml, work)
    host = run_toy(exe, toy_namelist(work, "soak_uncoupled", days, nlon, nlat, None), work)
    failures: list[str] = []
    for name, r in (("coupled", run), ("uncoupled", host)):
        if r.returncode != 0:
            failures.append(
                f"toy_esm ({name}) exited with status {r.returncode}:\n{r.stdout[-3000:]}"
            )
    if failures:
        nan = float("nan")
        return SoakResult(
            days, run.wall_s, nan, nan, nan, nan, nan, nan, nan, nan, (nan, nan), nan, failures, ""
        )
    if len(run.rss_kib) != days:
        failures.append(f"expected {days} daily lines, got {len(run.rss_kib)}")
    with netCDF4.Dataset(out) as ds:
        ds.set_auto_mask(False)
        pr = np.asarray(ds.variables["pr"][:], dtype=np.float64)
        prw = np.asarray(ds.variables["global_prw"][:], dtype=np.float64)
        evap = np.asarray(ds.variables["global_evap"][:], dtype=np.float64)
        gpr = np.asarray(ds.variables["global_pr"][:], dtype=np.float64)
        resid = np.asarray(ds.variables["budget_residual"][:], dtype=np.float64)
        wmin = np.asarray(ds.variables["prw_min"][:], dtype=np.float64)
        nan_count = np.asarray(ds.variables["nan_count"][:])
    if pr.shape[0] != days:
        failures.append(f"output has {pr.shape[0]} records, expected {days}")
    if not np.isfinite(pr).all() or int(nan_count.sum()) != 0:
        failures.append(
            f"NaN/Inf: {int((~np.isfinite(pr)).sum())} in pr, nan_count {int(nan_count.sum())}"
        )
    if (pr < 0).any() or pr.max() > PR_MAX:
        failures.append(
            f"precipitation outside [0, {PR_MAX:.4g}] kg m-2 s-1: [{pr.min():.3g}, {pr.max():.3g}]"
        )
    if (wmin < 0).any() or not np.isfinite(prw).all():
        failures.append(f"negative or non-finite column water on {int((wmin < 0).sum())} days")
    scale = max(float(np.abs(prw).max()), 1.0)
    if np.abs(resid).max() > 1e-10 * scale:
        failures.append(
            f"daily water budget residual {np.abs(resid).max():.3g} > 1e-10 x {scale:.3g} kg m-2"
        )
    if (gpr <= 0).all():
        failures.append("the plugin never rained")
    day1, late, grown = late_growth_mib(run.rss_kib)
    _, _, host_grown = late_growth_mib(host.rss_kib)
    plugin_growth = (grown - host_grown) / day1
    if not plugin_growth < 0.02:
        failures.append(
            f"resident memory grew {grown:.1f} MiB after day 1 ({day1:.1f} -> {late:.1f} MiB), "
            f"{host_grown:.1f} MiB of it also uncoupled: the plugin adds "
            f"{100 * plugin_growth:.2f} % (limit 2 %)"
        )
    png = work / "soak_water_budget.png"
    rss = np.array([x for x in run.rss_kib if x > 0], dtype=np.float64) / 1024.0
    rss_host = np.array([x for x in host.rss_kib if x > 0], dtype=np.float64) / 1024.0
    plot_budget(png, prw, evap, gpr, rss, rss_host, run.day_wall_s)
    return SoakResult(
        days=days,
        wall_s=run.wall_s,
        wall_per_day_s=float(np.median(run.day_wall_s)),
        uncoupled_wall_per_day_s=float(np.median(host.day_wall_s)),
        rss_day1_mib=day1,
        rss_late_mib=late,
        rss_growth=grown / day1,
        host_rss_growth_mib=host_grown,
        plugin_rss_growth=plugin_growth,
        pr_max=float(pr.max()),
        prw_range=(float(prw.min()), float(prw.max())),
        budget_residual_max=float(np.abs(resid).max()),
        failures=failures,
        plot=str(png),
    )


def plot_budget(
    png: Path,
    prw: np.ndarray,
    evap: np.ndarray,
    pr: np.ndarray,
    rss_mib: np.ndarray,
    rss_host_mib: np.ndarray,
    day_wall: list[float],
) -> None:
    """Global water budget (column water, evaporation, precipitation), RSS and wall per day."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    days = np.arange(1, prw.size + 1)
    fig, axes = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
    axes[0].plot(days, prw, label="global mean column water")
    axes[0].set_ylabel("kg m-2")
    axes[0].legend()
    axes[1].plot(days, evap, label="evaporation")
    axes[1].plot(days, pr, label="precipitation (plugin)")
    axes[1].plot(days, np.cumsum(evap - pr), label="cumulative E - P")
    axes[1].set_ylabel("kg m-2 per day")
    axes[1].legend()
    axes[2].plot(days[: rss_mib.size], rss_mib, label="RSS coupled (MiB)")
    axes[2].plot(
        days[: rss_host_mib.size], rss_host_mib + (rss_mib[0] - rss_host_mib[0]),
        label="RSS uncoupled toy, shifted to the same day 1",
    )  # fmt: skip
    ax2 = axes[2].twinx()
    ax2.plot(days[: len(day_wall)], day_wall, color="tab:green", label="wall s / day")
    axes[2].set_ylabel("MiB")
    ax2.set_ylabel("s")
    axes[2].set_xlabel("simulated day")
    axes[2].legend(loc="upper left")
    ax2.legend(loc="upper right")
    fig.suptitle("toy ESM + precipdiff: global water budget over the soak")
    fig.tight_layout()
    fig.savefig(png, dpi=80)
    plt.close(fig)


# -------------------------------------------------------------------------------- cost
def run_cost(exe: Path, work: Path, days: int, nlon: int, nlat: int) -> dict[str, float]:
    """Toy ESM uncoupled, coupled sync and coupled lagged: per-day walls and ratios."""
    work.mkdir(parents=True, exist_ok=True)
    bundle = tiny_bundle(work / "tiny_bundle", nlon, nlat)
    walls: dict[str, float] = {}
    for name, plugin in (
        ("uncoupled", None),
        ("sync", plugin_keys(bundle, inference="sync")),
        ("lagged", plugin_keys(bundle, inference="lagged")),
    ):
        run = run_toy(exe, toy_namelist(work, name, days, nlon, nlat, plugin), work)
        if run.returncode != 0:
            raise RuntimeError(f"toy_esm ({name}) failed:\n{run.stdout[-3000:]}")
        # Day 1 carries start-up (interpreter, bundle); use the later days.
        walls[name] = float(np.mean(run.day_wall_s[1:]))
    extra_sync = walls["sync"] - walls["uncoupled"]
    extra_lag = walls["lagged"] - walls["uncoupled"]
    return {
        "esm_s_per_day": walls["uncoupled"],
        "sync_s_per_day": walls["sync"],
        "lagged_s_per_day": walls["lagged"],
        "plugin_fraction_sync": extra_sync / walls["uncoupled"],
        "plugin_fraction_lagged": extra_lag / walls["uncoupled"],
        "inference_hidden_fraction": 1.0 - extra_lag / extra_sync
        if extra_sync > 0
        else float("nan"),
    }


# --------------------------------------------------------------------------------- mpi
def run_mpi(
    driver: Path, work: Path, days: int, nlon: int, nlat: int, work_sweeps: int
) -> dict[str, dict[str, float]]:
    """pd_mpi_driver on 1 and 4 ranks: plugin vs model time, gather/scatter vs inference."""
    work.mkdir(parents=True, exist_ok=True)
    bundle = tiny_bundle(work / "tiny_bundle", nlon, nlat)
    nml = write_nml(
        work / "mpi.nml", {"precipdiff_nml": plugin_keys(bundle, output_units="mm/day")}
    )
    mpiexec = shutil.which("mpiexec") or shutil.which("mpirun")
    if mpiexec is None:
        raise RuntimeError("mpiexec not found")
    dt = 1800.0
    steps = int(days * 86400 / dt)
    results: dict[str, dict[str, float]] = {}
    for nranks in (1, 4):
        cmd = [
            mpiexec, "-n", str(nranks), str(driver), f"nml={nml}", f"nlon={nlon}", f"nlat={nlat}",
            "first=1", f"last={steps}", f"dt={dt}", f"work={work_sweeps}",
        ]  # fmt: skip
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=dict(os.environ, **MPI_ENV), timeout=3600
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
        rows = [ln.split()[1:] for ln in proc.stdout.splitlines() if ln.startswith("TIMING ")]
        t = np.array(
            [[float(x) for x in r[1:7]] for r in rows]
        )  # esm plugin gather python scatter wait
        ranks = [int(r[0]) for r in rows]
        root = t[ranks.index(0)]
        results[f"np{nranks}"] = {
            "esm_s_per_day": float(t[:, 0].max()) / days,
            "plugin_s_per_day": float(t[:, 1].max()) / days,
            "plugin_fraction": float(t[:, 1].max() / t[:, 0].max()),
            "gather_s_per_day_root": float(root[2]) / days,
            "scatter_s_per_day_root": float(root[4]) / days,
            "python_s_per_day_root": float(root[3]) / days,
            "gather_scatter_over_python": float((root[2] + root[4]) / root[3]),
        }
    return results


# ----------------------------------------------------------------------------- overlap
def run_overlap(
    driver: Path, work: Path, days: int, nlon: int, nlat: int, work_sweeps: int
) -> dict[str, float]:
    """pd_mpi_driver on 1 rank, sync vs lagged, with model work comparable to inference.

    ``hidden_fraction = 1 - (T_lagged - E) / (T_sync - E)`` with ``T`` the stepping
    loop's wall time (model work + plugin calls) and ``E`` the model work of the sync
    run (measured with no inference running beside it).
    """
    work.mkdir(parents=True, exist_ok=True)
    bundle = tiny_bundle(work / "tiny_bundle", nlon, nlat)
    mpiexec = shutil.which("mpiexec") or shutil.which("mpirun")
    if mpiexec is None:
        raise RuntimeError("mpiexec not found")
    dt = 1800.0
    steps = int(days * 86400 / dt)
    t: dict[str, tuple[float, float]] = {}
    for mode in ("sync", "lagged"):
        keys = plugin_keys(bundle, output_units="mm/day", inference=mode)
        nml = write_nml(work / f"{mode}.nml", {"precipdiff_nml": keys})
        cmd = [
            mpiexec, "-n", "1", str(driver), f"nml={nml}", f"nlon={nlon}", f"nlat={nlat}",
            "first=1", f"last={steps}", f"dt={dt}", f"work={work_sweeps}",
        ]  # fmt: skip
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=dict(os.environ, **MPI_ENV), timeout=3600
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
        row = next(ln.split() for ln in proc.stdout.splitlines() if ln.startswith("TIMING "))
        t[mode] = (float(row[2]), float(row[3]))  # model work, plugin calls
    esm = t["sync"][0]
    total_sync = sum(t["sync"])
    total_lag = sum(t["lagged"])
    return {
        "model_s_per_day": esm / days,
        "sync_loop_s_per_day": total_sync / days,
        "lagged_loop_s_per_day": total_lag / days,
        "plugin_fraction_sync": (total_sync - esm) / esm,
        "plugin_fraction_lagged": (total_lag - esm) / esm,
        "hidden_fraction": 1.0 - (total_lag - esm) / (total_sync - esm),
    }


# -------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("part", choices=["soak", "cost", "mpi", "overlap"])
    p.add_argument(
        "--build-dir",
        type=Path,
        default=Path(os.environ.get("PRECIPDIFF_BUILD_DIR", REPO / "build")),
    )
    p.add_argument("--workdir", type=Path, default=REPO / "out" / "bench_coupled_scale")
    p.add_argument(
        "--days", type=int, default=None, help="simulated days (soak 365, cost 10, mpi 5)"
    )
    p.add_argument("--nlon", type=int, default=90)
    p.add_argument("--nlat", type=int, default=45)
    p.add_argument("--bundle", type=Path, default=None, help="soak: an existing u10/v10/msl bundle")
    p.add_argument("--work", type=int, default=20, help="mpi: synthetic model sweeps per step")
    args = p.parse_args(argv)
    work = args.workdir.resolve() / args.part
    toy = args.build_dir / "bin" / "toy_esm"
    if args.part == "soak":
        days = args.days or 365
        res = run_soak(toy, work, days, args.nlon, args.nlat, args.bundle)
        print(json.dumps(asdict(res), indent=2))
        print(
            f"soak {days} days on {args.nlon}x{args.nlat}: {res.wall_per_day_s:.3f} s wall per "
            f"simulated day (uncoupled {res.uncoupled_wall_per_day_s:.3f}), RSS "
            f"{res.rss_day1_mib:.1f} MiB after day 1 -> {res.rss_late_mib:.1f} MiB late "
            f"({100 * res.rss_growth:+.2f} %; uncoupled toy alone "
            f"{res.host_rss_growth_mib:+.1f} MiB; "
            f"plugin {100 * res.plugin_rss_growth:+.2f} %), global mean column water "
            f"{res.prw_range[0]:.1f}..{res.prw_range[1]:.1f} kg m-2, plot {res.plot}"
        )
        for f in res.failures:
            print(f"FAIL: {f}")
        return 1 if res.failures else 0
    if args.part == "cost":
        r = run_cost(toy, work, args.days or 10, args.nlon, args.nlat)
        print(json.dumps(r, indent=2))
        print(
            f"plugin time / toy ESM time per simulated day: sync {r['plugin_fraction_sync']:.2f}, "
            f"lagged {r['plugin_fraction_lagged']:.2f}; lagged mode hides "
            f"{100 * r['inference_hidden_fraction']:.0f} % of the sync plugin time"
        )
        return 0
    driver = args.build_dir / "tests" / "mpi" / "pd_mpi_driver"
    if args.part == "overlap":
        r3 = run_overlap(driver, work, args.days or 5, args.nlon, args.nlat, args.work)
        print(json.dumps(r3, indent=2))
        print(
            f"overlap (1 rank, model {r3['model_s_per_day']:.3f} s/day): plugin / model time "
            f"sync {r3['plugin_fraction_sync']:.2f}, lagged {r3['plugin_fraction_lagged']:.2f}; "
            f"lagged mode hides {100 * r3['hidden_fraction']:.0f} % of the sync plugin time"
        )
        return 0
    r2 = run_mpi(driver, work, args.days or 5, args.nlon, args.nlat, args.work)
    print(json.dumps(r2, indent=2))
    for k, v in r2.items():
        print(
            f"{k}: plugin / model time {v['plugin_fraction']:.2f}; gather+scatter / inference "
            f"(root) {v['gather_scatter_over_python']:.4f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
