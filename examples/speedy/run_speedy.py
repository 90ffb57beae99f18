#!/usr/bin/env python3
"""Run SPEEDY coupled to precipdiff and check its output: the driver behind the speedy ctests.

What it does, in order:

1. makes a run directory with links to SPEEDY's boundary files
   (``<speedy.f90>/data/bc/t30/clim/*.nc``);
2. (``--tiny-bundle``) makes a tiny random-weight bundle with the predictors hus850,
   ua850, va850 and psl whose fine grid is SPEEDY's 96x48 Gaussian grid and whose coarse
   grid is its 4x4 block mean (24x12), or uses ``--bundle PATH``;
3. writes one namelist file with ``&speedy_precipdiff_nml`` and ``&precipdiff_nml``,
   runs ``speedy_precipdiff`` and echoes its output;
4. checks the daily CF-netCDF output: the record count, no NaN, a global water budget
   that closes to round-off every day (column water change = evaporation -
   precipitation), global means of the maps equal to the reported series, a water fixer
   small next to the evaporation; in ``diagnostic`` mode that the model's precipitation
   is SPEEDY's own and (``--compare-off``) that SPEEDY's trajectory is bitwise that of
   mode ``off``; in ``interactive`` mode that the precipitation that left the columns is
   precipdiff's minus what the column limit kept plus the condensate overflow, and how
   large the latent-heating and truncation errors of the column adjustment are;
5. (``--restart-test``) runs days/2 + restart + days/2 (SPEEDY's restart and
   precipdiff's) and requires every output variable to equal the straight run bit for bit.

With ``--spinup-days N`` every run above starts from a SPEEDY restart written after N
days of SPEEDY alone from rest (mode ``off``), i.e. from a state with developed
convection, as the experiments of scripts/speedy/run_experiment.py start from their
spin-up restart, instead of from SPEEDY's resting initial state.

Exit status 0 when every check passes, 1 otherwise (the failed checks are printed), 77
(skipped) with ``--skip-reason`` (SPEEDY's source is not available).

The functions are also used by ``scripts/speedy/*.py`` (experiments).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

SKIP = 77
BOUNDARY_FILES = (
    "surface.nc",
    "sea_surface_temperature.nc",
    "sea_ice.nc",
    "land.nc",
    "snow.nc",
    "soil.nc",
)
# Variables whose values may differ between identical runs (timings).
TIMING_VARIABLES = {"wall_s", "plugin_s"}
REFERENCE_DATE = "1981-01-01"


def speedy_grid() -> tuple[np.ndarray, np.ndarray]:
    """SPEEDY's T30 grid as its geometry module defines it: latitudes (ascending, the
    first-guess Gaussian latitudes SPEEDY uses for its grid rows) and longitudes.

    geometry.f90 computes ``sin(lat) = cos(3.141592654*(j - 0.25)/(il + 0.5))`` in single
    precision; this reproduces it to ~1e-5 degrees (the float32 cosine of numpy and of the
    Fortran runtime differ in the last bit). The driver's output holds the exact values.
    """
    j = np.arange(1, 25, dtype=np.float32)
    arg = np.float32(3.141592654) * (j - np.float32(0.25)) / np.float32(48.5)
    s = np.cos(arg).astype(np.float64)
    lat = np.degrees(np.arcsin(np.concatenate([-s, s[::-1]])))
    lon = np.arange(96) * 3.75
    return lat, lon


def tiny_bundle(path: Path, factor: int = 4) -> Path:
    """A tiny random-weight bundle: hus850, ua850, va850, psl; fine grid = SPEEDY's grid,
    coarse grid = its ``factor`` x ``factor`` blocks."""
    from precipdiff.grids import LatLonGrid, coarsen_grid
    from precipdiff.testing.models import make_tiny_bundle

    lat, lon = speedy_grid()
    fine = LatLonGrid(lat=lat, lon=lon)
    coarse = coarsen_grid(fine, factor)
    make_tiny_bundle(
        path,
        coarse_grid=coarse,
        fine_grid=fine,
        variables=["hus850", "ua850", "va850", "psl"],
        # ~3 mm/day for a zero network output, the order of SPEEDY's evaporation, so
        # that an interactive run's water budget stays plausible for the test's 10 days.
        precip_stats=(3.4, 0.5),
        overwrite=True,
    )
    return path


def prepare_rundir(workdir: Path, speedy_dir: Path) -> Path:
    """Create ``workdir`` with links to SPEEDY's boundary files."""
    workdir.mkdir(parents=True, exist_ok=True)
    clim = speedy_dir / "data" / "bc" / "t30" / "clim"
    for name in BOUNDARY_FILES:
        src = clim / name
        if not src.is_file():
            raise SystemExit(f"SPEEDY boundary file {src} is missing")
        dst = workdir / name
        if dst.is_symlink() or dst.exists():
            dst.unlink()
        dst.symlink_to(src)
    return workdir


def fortran_value(value: Any) -> str:
    """Format a Python value as a Fortran namelist value."""
    if isinstance(value, bool):
        return ".true." if value else ".false."
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def write_namelist(path: Path, driver: dict[str, Any], plugin: dict[str, Any] | None) -> Path:
    """Write ``&speedy_precipdiff_nml`` (and ``&precipdiff_nml`` when given) to one file."""
    lines = ["&speedy_precipdiff_nml"]
    lines += [f"  {k} = {fortran_value(v)}" for k, v in driver.items()]
    lines.append("/")
    if plugin is not None:
        lines.append("&precipdiff_nml")
        lines += [f"  {k} = {fortran_value(v)}" for k, v in plugin.items()]
        lines.append("/")
    path.write_text("\n".join(lines) + "\n")
    return path


def plugin_namelist(
    bundle: Path,
    *,
    members: int = 1,
    steps: int = 0,
    seed: int = 1,
    threads: int = 1,
    reference_date: str = REFERENCE_DATE,
    **extra: Any,
) -> dict[str, Any]:
    """The ``&precipdiff_nml`` the SPEEDY runs use (sync, daily window, kg m-2 s-1)."""
    nml: dict[str, Any] = {
        "bundle_path": str(bundle),
        "device": "cpu",
        "members": members,
        "sampler_steps": steps,
        "seed": seed,
        "return_mode": "member",
        "window_s": 86400.0,
        "inference": "sync",
        "reference_time": f"{reference_date} 00:00:00",
        "calendar": "standard",
        "output_units": "kg m-2 s-1",
        "torch_threads": threads,
    }
    nml.update(extra)
    return nml


def run_driver(
    exe: Path, workdir: Path, nml: Path, env: dict[str, str] | None = None, echo: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``speedy_precipdiff NAMELIST`` in ``workdir``."""
    proc = subprocess.run(
        [str(exe.resolve()), str(nml)],
        cwd=workdir,
        env=env if env is not None else dict(os.environ),
        capture_output=True,
        text=True,
    )
    if echo:
        sys.stdout.write(proc.stdout + proc.stderr)
    return proc


def gaussian_weights(ds: Any) -> np.ndarray:
    """Global-mean weights (nlat, nlon) from the file's lat_bnds (they enclose the
    Gaussian weights, so this is SPEEDY's quadrature)."""
    lb = np.asarray(ds.variables["lat_bnds"][:], dtype=np.float64)
    w = np.abs(np.sin(np.deg2rad(lb[:, 1])) - np.sin(np.deg2rad(lb[:, 0])))
    nlon = ds.dimensions["lon"].size
    return np.repeat((w / w.sum())[:, None], nlon, axis=1) / nlon


def check_output(path: Path, days: int, mode: str, cond_max: float | None = None) -> list[str]:
    """Check one run's output; return the failed checks (empty: all passed).

    ``cond_max``: interactive mode's ``condensate_max`` (kg m-2), checked as the bound of
    the condensate map when given.
    """
    import netCDF4

    failures: list[str] = []

    def expect(cond: bool, message: str) -> None:
        if not cond:
            failures.append(message)

    with netCDF4.Dataset(path) as ds:
        ds.set_auto_mask(False)
        nt = ds.dimensions["time"].size
        expect(nt == days, f"{path.name}: {nt} daily records, expected {days}")
        if nt == 0:
            return failures
        for name, var in ds.variables.items():
            values = np.asarray(var[:])
            if values.dtype.kind == "f":
                nbad = int(np.count_nonzero(~np.isfinite(values)))
                expect(nbad == 0, f"{name}: {nbad} non-finite values")
        s = {n: np.asarray(ds.variables[n][:], dtype=np.float64) for n in ds.variables}
    expect(bool(np.all(s["nan_count"] == 0)), f"nan_count reported: {s['nan_count']}")
    scale = float(np.max(np.abs(s["global_prw"])))
    res = s["budget_residual"]
    expect(
        bool(np.all(np.abs(res) <= 1e-10 * scale)),
        f"water budget residual {res} exceeds 1e-10 x global column water {scale:.3f} kg m-2",
    )
    ev, pr = s["global_evap"], s["global_pr"]
    gw = s["global_prw"] + s["global_condensate"]  # column water: vapour + condensate
    if nt > 1:
        dw = np.diff(gw)
        expect(
            bool(np.allclose(dw, ev[1:] - pr[1:], rtol=0, atol=1e-10 * scale)),
            f"series budget does not close: dW {dw} vs E-P {ev[1:] - pr[1:]}",
        )
    fix = s["water_fixer"]
    expect(
        bool(np.all(np.abs(fix) <= 0.1 * ev)),
        f"water fixer {fix} kg m-2/day is more than 10 % of evaporation {ev}",
    )
    with netCDF4.Dataset(path) as ds:
        w = gaussian_weights(ds)
    for field, series, factor in (
        ("prw", "global_prw", 1.0),
        ("evspsbl", "global_evap", 86400.0),
        ("pr", "global_pr", 86400.0),
        ("pr_speedy", "global_pr_speedy", 86400.0),
    ):
        g = (s[field] * w).sum(axis=(1, 2)) * factor
        expect(
            bool(np.allclose(g, s[series], rtol=2e-5, atol=1e-6)),
            f"global mean of {field} {g} differs from {series} {s[series]}",
        )
    expect(bool(np.all(s["pr_speedy"] >= 0)), "negative SPEEDY precipitation")
    if mode == "diagnostic":
        expect(bool(np.array_equal(s["pr"], s["pr_speedy"])), "diagnostic: pr is not SPEEDY's")
    if mode in ("diagnostic", "interactive"):
        pd = s["pr_precipdiff"]
        expect(bool(np.all(pd >= 0)), "negative precipdiff precipitation")
        expect(bool(np.any(pd > 0)), "precipdiff's precipitation is zero everywhere")
        g = (pd * w).sum(axis=(1, 2)) * 86400.0
        expect(
            bool(np.allclose(g, s["global_pr_precipdiff"], rtol=2e-5)),
            "global mean of pr_precipdiff differs from global_pr_precipdiff",
        )
    if mode == "interactive":
        lim, ovf = s["pr_limited"], s["pr_overflow"]
        expect(bool(np.all(lim >= -1e-12)), "negative limited precipitation")
        expect(bool(np.all(ovf >= 0)), "negative condensate overflow")
        expect(
            bool(np.allclose(s["pr"], s["pr_precipdiff"] - lim + ovf, rtol=1e-5, atol=1e-9)),
            "interactive: pr is not precipdiff's precipitation - limited part + overflow",
        )
        expect(
            bool(
                np.allclose(
                    s["global_pr"],
                    s["global_pr_precipdiff"] - s["global_pr_limited"] + s["global_pr_overflow"],
                    rtol=1e-9,
                    atol=1e-9,
                )
            ),
            "interactive: global_pr is not precipdiff's - limited part + overflow",
        )
        if cond_max is not None:
            c = s["condensate"]
            expect(
                bool(np.all(c <= cond_max * (1 + 1e-12))),
                f"condensate {float(np.max(c)):.3f} kg m-2 above condensate_max {cond_max}",
            )
        wi, wa = s["adjustment_water_intended"], s["adjustment_water_applied"]
        hi, ha = s["latent_heat_intended"], s["latent_heat_applied"]
        expect(
            bool(np.all(np.abs(ha - hi) <= 0.05 * np.abs(hi) + 1e-6)),
            f"latent heating after truncation {ha} W m-2 differs from intended {hi} by > 5 %",
        )
        expect(
            bool(np.allclose(hi, -2.501e6 * wi / 86400.0, rtol=1e-9)),
            "latent heating is not -L x column water change",
        )
        print(
            "interactive: column adjustment (global mean per day): water intended "
            f"{np.mean(wi):+.4f}, after truncation {np.mean(wa):+.4f} kg m-2; latent heat "
            f"intended {np.mean(hi):+.3f}, applied {np.mean(ha):+.3f} W m-2 "
            f"(max |error| {np.max(np.abs(ha - hi)):.3g} W m-2); limited "
            f"{np.mean(s['global_pr_limited']):.4f}, overflow "
            f"{np.mean(s['global_pr_overflow']):.4f} mm/day; SPEEDY's condensation "
            f"{np.mean(s['global_pr_speedy']):.3f} mm/day (max {np.max(s['global_pr_speedy']):.3f})"
        )
    print(
        f"budget ({mode}): max |residual| {np.max(np.abs(res)):.2e} kg m-2, mean |fixer| "
        f"{np.mean(np.abs(fix)):.2e} kg m-2/day vs evaporation {np.mean(ev):.3f} mm/day"
    )
    return failures


def compare_outputs(
    a: Path,
    pieces: Sequence[Path],
    skip: set[str] = TIMING_VARIABLES,
    only: Sequence[str] | None = None,
) -> list[str]:
    """Every variable of ``a`` must equal the concatenation of ``pieces`` bit for bit."""
    import netCDF4

    failures = []
    with netCDF4.Dataset(a) as da:
        names = list(only) if only is not None else list(da.variables)
        dss = [netCDF4.Dataset(p) for p in pieces]
        try:
            for name in names:
                if name in skip or name not in da.variables:
                    continue
                va = da.variables[name]
                whole = np.asarray(va[:])
                if "time" not in va.dimensions:
                    parts = [np.asarray(d.variables[name][:]) for d in dss[:1]]
                    joined = parts[0]
                else:
                    joined = np.concatenate([np.asarray(d.variables[name][:]) for d in dss])
                if whole.shape != joined.shape or not np.array_equal(whole, joined):
                    diff = (
                        float(np.max(np.abs(whole.astype(float) - joined.astype(float))))
                        if whole.shape == joined.shape
                        else float("nan")
                    )
                    failures.append(
                        f"{name}: {a.name} differs from {'+'.join(p.name for p in pieces)} "
                        f"(max |diff| {diff:.3g})"
                    )
        finally:
            for d in dss:
                d.close()
    return failures


def interp_check(exe: Path, workdir: Path) -> list[str]:
    """The driver's ln-p interpolation equals precipdiff's on synthetic SPEEDY columns."""
    import netCDF4

    from precipdiff.server.vertical import interp_log_pressure

    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "speedy_interp_check.nc"
    proc = subprocess.run([str(exe), str(out)], capture_output=True, text=True)
    sys.stdout.write(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        return [f"speedy_interp_check exited with status {proc.returncode}"]
    with netCDF4.Dataset(out) as ds:
        f = np.asarray(ds.variables["field"][:])  # (lev, lat, lon), level 1 at the top
        p = np.asarray(ds.variables["pressure"][:])
        g = np.asarray(ds.variables["at_850hpa"][:])
    ref = interp_log_pressure("field", f, p, np.array([85000.0]), "constant")[0]
    below = p[-1] < 85000.0
    err = float(np.max(np.abs(g - ref)))
    print(
        f"interpolation: {below.sum()} of {below.size} columns have 850 hPa below ground; "
        f"max |Fortran - precipdiff| = {err:.3g}"
    )
    failures = []
    if not below.any() or below.all():
        failures.append("the synthetic columns do not exercise both cases")
    if err > 1e-12:
        failures.append(f"the driver's interpolation differs from precipdiff's by {err:.3g}")
    return failures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--skip-reason", help="print this and exit 77 (test skipped)")
    p.add_argument(
        "--interp-check",
        type=Path,
        metavar="EXE",
        help="run speedy_interp_check and compare with precipdiff's interpolation",
    )
    p.add_argument("--exe", type=Path, help="speedy_precipdiff executable")
    p.add_argument("--speedy-dir", type=Path, help="speedy.f90 checkout (boundary data)")
    p.add_argument("--workdir", type=Path, help="directory for inputs and outputs")
    p.add_argument("--mode", choices=("off", "diagnostic", "interactive"), default="diagnostic")
    p.add_argument("--days", type=int, default=10)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--tiny-bundle", action="store_true", help="make a tiny bundle at test time")
    g.add_argument("--bundle", type=Path, help="an existing bundle")
    p.add_argument("--members", type=int, default=1)
    p.add_argument("--steps", type=int, default=0, help="sampler steps (0: bundle default)")
    p.add_argument(
        "--condensate-days",
        type=float,
        default=None,
        help="interactive: condensate_timescale_days (default: the driver's)",
    )
    p.add_argument(
        "--condensate-max",
        type=float,
        default=None,
        help="interactive: condensate_max in kg m-2 (default: the driver's)",
    )
    p.add_argument(
        "--spinup-days",
        type=int,
        default=0,
        help="start every run from a restart after this many days of SPEEDY alone from rest",
    )
    p.add_argument("--restart-test", action="store_true")
    p.add_argument(
        "--cfchecks", action="store_true", help="also run the CF checker on every netCDF file"
    )
    p.add_argument("--compare-off", action="store_true", help="diagnostic: SPEEDY == mode off")
    args = p.parse_args(argv)
    if args.skip_reason:
        print(f"SKIP: {args.skip_reason}")
        return SKIP
    if args.interp_check is not None:
        if args.workdir is None:
            p.error("--interp-check needs --workdir")
        fails = interp_check(args.interp_check, args.workdir.resolve())
        for f in fails:
            print(f"FAIL: {f}")
        if not fails:
            print("PASS: the driver interpolates in ln p as precipdiff does")
        return 1 if fails else 0
    if args.exe is None or args.speedy_dir is None or args.workdir is None:
        p.error("--exe, --speedy-dir and --workdir are required")

    work = prepare_rundir(args.workdir.resolve(), args.speedy_dir.resolve())
    plugin = None
    if args.mode != "off":
        if args.bundle is not None:
            bundle = args.bundle.resolve()
        elif args.tiny_bundle:
            bundle = tiny_bundle(work / "tiny_bundle")
        else:
            p.error("diagnostic and interactive modes need --tiny-bundle or --bundle")
        plugin = plugin_namelist(bundle, members=args.members, steps=args.steps)
    driver: dict[str, Any] = {
        "mode": args.mode,
        "ndays": args.days,
        "start_date": REFERENCE_DATE,
        "reference_date": REFERENCE_DATE,
        "output_file": str(work / "speedy_out.nc"),
    }
    if args.condensate_days is not None:
        driver["condensate_timescale_days"] = args.condensate_days
    if args.condensate_max is not None:
        driver["condensate_max"] = args.condensate_max
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if args.spinup_days > 0:
        spin = work / "restart_spinup.nc"
        spin_nml = write_namelist(
            work / "speedy_spinup.nml",
            {
                **driver,
                "mode": "off",
                "ndays": args.spinup_days,
                "output_file": "",
                "verbose": False,
                "restart_out": str(spin),
            },
            None,
        )
        proc = run_driver(args.exe, work, spin_nml, env, echo=False)
        if proc.returncode != 0:
            sys.stdout.write(proc.stdout + proc.stderr)
            print(f"FAIL: the {args.spinup_days}-day spin-up exited with status {proc.returncode}")
            return 1
        print(f"spin-up: {args.spinup_days} days of SPEEDY alone from rest -> {spin.name}")
        driver["restart_in"] = str(spin)
    nml = write_namelist(work / "speedy_run.nml", driver, plugin)
    t0 = time.perf_counter()
    proc = run_driver(args.exe, work, nml, env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(f"FAIL: speedy_precipdiff exited with status {proc.returncode}")
        return 1
    out = work / "speedy_out.nc"
    failures = check_output(out, args.days, args.mode, args.condensate_max)
    daily = [ln for ln in proc.stdout.splitlines() if ln.split()[1:2] and ln.split()[1].isdigit()]
    if len(daily) != args.days:
        failures.append(f"expected {args.days} daily budget lines on stdout, got {len(daily)}")

    if args.compare_off and not failures:
        off = write_namelist(
            work / "speedy_off.nml",
            {**driver, "mode": "off", "output_file": str(work / "speedy_off.nc")},
            None,
        )
        proc = run_driver(args.exe, work, off, env, echo=False)
        if proc.returncode != 0:
            sys.stdout.write(proc.stdout + proc.stderr)
            failures.append(f"mode off exited with status {proc.returncode}")
        else:
            import netCDF4

            with netCDF4.Dataset(work / "speedy_off.nc") as d:
                names = [
                    n
                    for n in d.variables
                    if n not in TIMING_VARIABLES and n != "global_pr_precipdiff"
                ]
            failures += [
                f"one-way coupling: {f}"
                for f in compare_outputs(out, [work / "speedy_off.nc"], only=names)
            ]

    if args.restart_test and not failures:
        n1 = args.days // 2
        legs = [
            {
                "ndays": n1,
                "restart_out": str(work / "restart_speedy.nc"),
                "precipdiff_restart_out": str(work / "restart_precipdiff.nc"),
            },
            {
                "ndays": args.days - n1,
                "restart_in": str(work / "restart_speedy.nc"),
                "precipdiff_restart_in": str(work / "restart_precipdiff.nc"),
            },
        ]
        outs = []
        for k, leg in enumerate(legs, start=1):
            o = work / f"speedy_leg{k}.nc"
            if plugin is None:
                leg = {key: v for key, v in leg.items() if not key.startswith("precipdiff_restart")}
            nml_k = write_namelist(
                work / f"speedy_leg{k}.nml", {**driver, **leg, "output_file": str(o)}, plugin
            )
            proc = run_driver(args.exe, work, nml_k, env, echo=False)
            if proc.returncode != 0:
                sys.stdout.write(proc.stdout + proc.stderr)
                failures.append(f"restart leg {k} exited with status {proc.returncode}")
                break
            outs.append(o)
        if len(outs) == 2:
            failures += [f"restart: {f}" for f in compare_outputs(out, outs)]

    if args.cfchecks and not failures:
        from precipdiff.testing.cf import cf_failures

        # the files this project's code writes (SPEEDY's own history files and its
        # boundary data are third-party formats): outputs, restarts, the plugin's stream
        ours = [*work.glob("speedy_*.nc"), *work.glob("restart_*.nc"), *work.rglob("stream*/*.nc")]
        failures += cf_failures(sorted(ours))

    for f in failures:
        print(f"FAIL: {f}")
    if failures:
        return 1
    print(f"PASS: speedy_precipdiff {args.mode}, {args.days} days in {wall:.1f} s; output {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
