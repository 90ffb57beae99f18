#!/usr/bin/env python3
"""Run the toy ESM and check its output: the driver behind the toy_esm ctest tests.

What it does, in order:

1. (``--tiny-bundle``) makes a tiny model bundle with predictors u10, v10, msl on a
   global 4° grid with pole rows (46×90, like ERA5) and a 1° fine grid (181×360),
   so the plugin's remap from the toy model's cell-centred grid is exercised;
   or uses ``--bundle PATH`` (e.g. the shipped global bundle);
2. writes one namelist file with ``&toy_esm_nml`` and ``&precipdiff_nml``;
3. runs the Fortran program and echoes its output;
4. checks the CF-netCDF output: the record count, no NaN anywhere, a water budget
   that closes to round-off every day, non-negative water, and -- when coupled --
   that the plugin's precipitation is what the model used as its sink and that the
   fine-grid and model-grid precipitation agree in the global mean.

Exit status 0 when every check passes, 1 otherwise (the failed checks are printed).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

# Model grid of the tests (cell-centred, 4 degrees) and the tiny bundle's grids.
TEST_NLON, TEST_NLAT = 90, 45


def tiny_bundle(path: Path) -> Path:
    """Make a tiny u10/v10/msl bundle on a 4° global coarse grid and a 1° fine grid."""
    from precipdiff.grids import LatLonGrid
    from precipdiff.testing.models import make_tiny_bundle

    coarse = LatLonGrid(lat=np.linspace(90.0, -90.0, 46), lon=np.arange(0.0, 360.0, 4.0))
    fine = LatLonGrid(lat=np.linspace(90.0, -90.0, 181), lon=np.arange(0.0, 360.0, 1.0))
    make_tiny_bundle(
        path, coarse_grid=coarse, fine_grid=fine, variables=["u10", "v10", "msl"], overwrite=True
    )
    return path


# The fields toy_esm can hand over, with the names a bundle may ask for them by
# (the same table as field_for in toy_esm.F90).
TOY_FIELDS = {
    "uas": {"uas", "u10", "10u", "eastward_wind"},
    "vas": {"vas", "v10", "10v", "northward_wind"},
    "psl": {"psl", "msl", "slp", "mslp", "air_pressure_at_mean_sea_level"},
}


def find_global_bundle(models: Path) -> Path:
    """The shipped bundle toy_esm can drive: global, predictors only u10/v10/msl.

    Raises
    ------
    SystemExit
        With the list of bundles inspected when none fits.
    """
    from precipdiff.bundle import read_manifest
    from precipdiff.grids import LatLonGrid

    seen = []
    for manifest in sorted(models.glob("*/manifest.json")) + sorted(
        models.glob("*/*/manifest.json")
    ):
        bundle = manifest.parent
        try:
            m = read_manifest(bundle)
        except Exception as exc:  # report, keep looking
            seen.append(f"{bundle}: unreadable ({exc})")
            continue
        names = [{str(v["name"]), *map(str, v.get("aliases", []))} for v in m.variables]
        ok_vars = all(any(n & aliases for aliases in TOY_FIELDS.values()) for n in names)
        coarse = LatLonGrid.from_dict(m.coarse_grid)
        if ok_vars and coarse.periodic:
            return bundle
        seen.append(
            f"{bundle}: predictors {[v['name'] for v in m.variables]}, "
            f"coarse grid {coarse.shape} {'global' if coarse.periodic else 'regional'}"
        )
    raise SystemExit(
        f"no global u10/v10/msl bundle found under {models}; inspected: "
        + ("; ".join(seen) if seen else "nothing")
    )


def fortran_value(value: Any) -> str:
    """Format a Python value as a Fortran namelist value."""
    if isinstance(value, bool):
        return ".true." if value else ".false."
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def write_namelist(path: Path, toy: dict[str, Any], plugin: dict[str, Any] | None) -> None:
    """Write ``&toy_esm_nml`` (and ``&precipdiff_nml`` when given) to one file."""
    lines = ["&toy_esm_nml"]
    lines += [f"  {k} = {fortran_value(v)}" for k, v in toy.items()]
    lines.append("/")
    if plugin is not None:
        lines.append("&precipdiff_nml")
        lines += [f"  {k} = {fortran_value(v)}" for k, v in plugin.items()]
        lines.append("/")
    path.write_text("\n".join(lines) + "\n")


def area_weights(lat_bnds: np.ndarray, nlon: int) -> np.ndarray:
    """Relative cell areas (nlat, nlon) from latitude bounds (degrees)."""
    s = np.sin(np.deg2rad(lat_bnds))
    w = np.abs(s[:, 1] - s[:, 0])
    return np.repeat(w[:, None], nlon, axis=1)


def check_output(path: Path, days: int, coupled: bool) -> list[str]:
    """Check a toy_esm output file; return the list of failed checks (empty: all passed)."""
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
        for name in ("pr", "prw", "evspsbl", "uas", "vas", "psl", "pr_fine"):
            if name in ds.variables:
                values = ds.variables[name][:]
                nbad = int(np.count_nonzero(~np.isfinite(values)))
                expect(nbad == 0, f"{name}: {nbad} non-finite values")
        nan_count = ds.variables["nan_count"][:]
        expect(bool(np.all(nan_count == 0)), f"nan_count reported by the model: {nan_count}")
        gw = ds.variables["global_prw"][:]
        ev = ds.variables["global_evap"][:]
        pr = ds.variables["global_pr"][:]
        req = ds.variables["global_pr_requested"][:]
        lim = ds.variables["global_pr_limited"][:]
        res = ds.variables["budget_residual"][:]
        wmin = ds.variables["prw_min"][:]
        scale = float(np.max(np.abs(gw)))
        # The model's own residual: round-off only (double precision).
        expect(
            bool(np.all(np.abs(res) <= 1e-10 * scale)),
            f"budget residual {res} exceeds 1e-10 x global water {scale:.3f} kg m-2",
        )
        expect(bool(np.all(wmin >= 0.0)), f"negative column water: prw_min = {wmin}")
        expect(
            bool(np.allclose(req - pr, lim, rtol=0, atol=1e-9 * scale)),
            "limited precipitation is not requested minus removed",
        )
        # Independent check from the 2-D fields (stored as float32).
        lat_bnds = ds.variables["lat_bnds"][:]
        prw2d = ds.variables["prw"][:].astype(np.float64)
        w = area_weights(lat_bnds, prw2d.shape[2])
        gw2 = (prw2d * w).sum(axis=(1, 2)) / w.sum()
        expect(
            bool(np.allclose(gw2, gw, rtol=1e-5)),
            f"global mean of prw field {gw2} differs from reported {gw}",
        )
        ev2 = (ds.variables["evspsbl"][:].astype(np.float64) * w).sum(axis=(1, 2)) / w.sum()
        expect(
            bool(np.allclose(ev2 * 86400.0, ev, rtol=1e-5)),
            f"daily evaporation from the field {ev2 * 86400} differs from reported {ev}",
        )
        # Day-to-day budget from the series alone: W(d) - W(d-1) = E(d) - P(d).
        if nt > 1:
            dw = np.diff(gw)
            expect(
                bool(np.allclose(dw, ev[1:] - pr[1:], rtol=0, atol=1e-9 * scale)),
                f"series budget does not close: dW {dw} vs E-P {ev[1:] - pr[1:]}",
            )
        if coupled:
            pr2d = ds.variables["pr"][:].astype(np.float64)
            expect(bool(np.all(pr2d >= 0.0)), "negative precipitation from the plugin")
            expect(bool(np.any(pr2d > 0.0)), "the plugin's precipitation is zero everywhere")
            gp = (pr2d * w).sum(axis=(1, 2)) / w.sum()
            # The day-d output is the sink of day d+1 (lagged coupling).
            if nt > 1:
                expect(
                    bool(np.allclose(req[1:], gp[:-1] * 86400.0, rtol=1e-5)),
                    f"sink requested on day d+1 {req[1:]} is not the plugin output of day d "
                    f"{gp[:-1] * 86400.0}",
                )
            expect(abs(req[0]) == 0.0, f"no plugin output exists during day 1, yet {req[0]}")
            if "pr_fine" in ds.variables:
                from precipdiff.grids import LatLonGrid

                fine = LatLonGrid(lat=ds.variables["lat_fine"][:], lon=ds.variables["lon_fine"][:])
                af = fine.cell_area()
                pf = ds.variables["pr_fine"][:].astype(np.float64)
                gf = (pf * af).sum(axis=(1, 2)) / af.sum()
                expect(
                    bool(np.allclose(gf, gp, rtol=0.02)),
                    f"global mean fine precipitation {gf * 86400} mm/day differs from the "
                    f"model-grid field {gp * 86400} mm/day by more than 2 %",
                )
    return failures


def check_stream(stream_dir: Path, out: Path, days: int) -> list[str]:
    """The plugin's own output stream (written by Python's netCDF4 in the same process
    as the Fortran netCDF library) must hold the same fine field the model received."""
    import netCDF4

    files = sorted(stream_dir.glob("*.nc"))
    if not files:
        return [f"the plugin wrote no output stream file in {stream_dir}"]
    with netCDF4.Dataset(files[0]) as st, netCDF4.Dataset(out) as ds:
        pr = np.asarray(st.variables["pr"][:], dtype=np.float64)
        if st.variables["pr"].units in ("mm/day", "mm day-1"):
            pr = pr / 86400.0
        fine = np.asarray(ds.variables["pr_fine"][:], dtype=np.float64)
        lat_stream = np.asarray(st.variables["lat"][:])
        lat_out = np.asarray(ds.variables["lat_fine"][:])
    if pr.shape[0] != days or pr.shape[2:] != fine.shape[1:]:
        return [f"output stream shape {pr.shape} does not match {days} days of {fine.shape[1:]}"]
    if not np.array_equal(lat_stream, lat_out):
        return ["output stream latitudes differ from the fine grid handed to the model"]
    if not np.allclose(pr[:, 0], fine, rtol=1e-6, atol=1e-12):
        return ["the output stream's member 1 differs from the pr_fine the model received"]
    return []


def mpi_test(
    args: argparse.Namespace,
    work: Path,
    toy: dict[str, Any],
    plugin: dict[str, Any] | None,
    env: dict[str, str],
) -> list[str]:
    """Run toy_esm_mpi on args.ranks ranks; its output must equal the serial run's."""
    out = work / "toy_esm_mpi_out.nc"
    out.unlink(missing_ok=True)
    nml = work / "toy_esm_mpi.nml"
    p = None if plugin is None else dict(plugin, output_dir=str(work / "stream_mpi"))
    write_namelist(nml, {**toy, "output_file": str(out)}, p)
    # Open MPI refuses root and more ranks than cores unless told; harmless elsewhere.
    menv = dict(
        env,
        OMPI_ALLOW_RUN_AS_ROOT="1",
        OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
        OMPI_MCA_rmaps_base_oversubscribe="1",
    )
    cmd = [args.mpiexec, "-n", str(args.ranks), str(args.mpi_exe.resolve()), str(nml)]
    proc = subprocess.run(cmd, cwd=work, env=menv, capture_output=True, text=True)
    sys.stdout.write(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        return [f"toy_esm_mpi on {args.ranks} ranks exited with status {proc.returncode}"]
    if f"{args.ranks} process(es)" not in proc.stdout:
        return [f"toy_esm_mpi did not report {args.ranks} processes"]
    failures = check_output(out, args.days, coupled=plugin is not None)
    import netCDF4

    with netCDF4.Dataset(toy["output_file"]) as a, netCDF4.Dataset(out) as b:
        for name in (
            "prw",
            "pr",
            "pr_fine",
            "evspsbl",
            "uas",
            "vas",
            "psl",
            "lat_fine",
            "lon_fine",
        ):
            if name not in a.variables:
                continue
            if not np.array_equal(
                np.asarray(a.variables[name][:]), np.asarray(b.variables[name][:])
            ):
                failures.append(f"{name}: the {args.ranks}-rank run differs from the serial run")
        for name in ("global_prw", "global_pr", "global_evap"):
            x, y = np.asarray(a.variables[name][:]), np.asarray(b.variables[name][:])
            if not np.allclose(x, y, rtol=1e-12):
                failures.append(f"{name}: the {args.ranks}-rank budget differs: {x} vs {y}")
    return failures


def restart_test(
    exe: Path,
    work: Path,
    toy: dict[str, Any],
    plugin: dict[str, Any] | None,
    days: int,
    env: dict[str, str],
) -> list[str]:
    """Run the same experiment in two legs joined by a restart and compare."""
    n1 = days // 2
    legs = [
        {"ndays": n1, "restart_out": str(work / "restart_day")},
        {"ndays": days - n1, "restart_in": str(work / "restart_day")},
    ]
    outs = []
    for k, leg in enumerate(legs, start=1):
        out = work / f"toy_esm_leg{k}.nc"
        nml = work / f"toy_esm_leg{k}.nml"
        p = None if plugin is None else dict(plugin, output_dir=str(work / f"stream_leg{k}"))
        write_namelist(nml, {**toy, **leg, "output_file": str(out)}, p)
        proc = subprocess.run(
            [str(exe), str(nml)], cwd=work, env=env, capture_output=True, text=True
        )
        sys.stdout.write(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            return [f"restart leg {k} exited with status {proc.returncode}"]
        outs.append(out)
    return compare_restart(Path(toy["output_file"]), outs[0], outs[1])


def compare_restart(full: Path, first: Path, second: Path) -> list[str]:
    """A run of n days must equal n1 days + restart + n - n1 days, bit for bit."""
    import netCDF4

    failures = []
    with (
        netCDF4.Dataset(full) as a,
        netCDF4.Dataset(first) as b,
        netCDF4.Dataset(second) as c,
    ):
        n1 = b.dimensions["time"].size
        for name in ("time", "pr", "pr_fine", "prw", "evspsbl", "psl", "global_pr", "global_prw"):
            if name not in a.variables:
                continue
            whole = np.asarray(a.variables[name][:])
            pieces = np.concatenate(
                [np.asarray(b.variables[name][:]), np.asarray(c.variables[name][:])]
            )
            if whole.shape != pieces.shape or not np.array_equal(whole, pieces):
                failures.append(
                    f"{name}: the restarted run (after day {n1}) differs from the continuous run"
                )
    return failures


def budget_summary(path: Path) -> str:
    """One line on how the plugin's precipitation compares with the model's evaporation."""
    import netCDF4

    with netCDF4.Dataset(path) as ds:
        ev = np.asarray(ds.variables["global_evap"][:])
        req = np.asarray(ds.variables["global_pr_requested"][:])
        lim = np.asarray(ds.variables["global_pr_limited"][:])
        pf = np.asarray(ds.variables["pr_fine"][:]) if "pr_fine" in ds.variables else None
    days = slice(1, None) if req.size > 1 else slice(None)
    e, r, li = ev[days].mean(), req[days].mean(), lim[days].mean()
    text = (
        f"budget: from day 2 the plugin asked for {r:.2f} mm/day (global mean) against "
        f"{e:.2f} mm/day of evaporation; {li:.2f} mm/day ({100 * li / max(r, 1e-30):.0f} %) "
        "was not in the columns (limited)"
    )
    if pf is not None and pf.size:
        text += f"; fine-grid maximum {86400 * float(pf.max()):.0f} mm/day"
    if r > 3 * e:
        text += (
            "\nnote: the plugin's precipitation is several times the evaporation: the bundle "
            "does not fit this model's state (see its MODEL_CARD.md / EVALUATION.md)"
        )
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--exe", required=True, type=Path, help="toy_esm executable")
    p.add_argument("--workdir", required=True, type=Path, help="directory for inputs/outputs")
    p.add_argument("--days", type=int, default=3)
    p.add_argument("--nlon", type=int, default=TEST_NLON)
    p.add_argument("--nlat", type=int, default=TEST_NLAT)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--no-plugin", action="store_true", help="dynamics and evaporation only")
    g.add_argument("--tiny-bundle", action="store_true", help="make a tiny bundle at test time")
    g.add_argument(
        "--bundle",
        help="an existing bundle (u10, v10, msl), or 'auto': the global bundle in models/",
    )
    p.add_argument("--steps", type=int, default=2, help="sampler steps (0: bundle default)")
    p.add_argument("--members", type=int, default=1, help="ensemble members per day")
    p.add_argument("--device", default="cpu", help="plugin device: cpu, auto, cuda, cuda:N")
    p.add_argument(
        "--conserve-mass",
        action="store_true",
        help="conserve_mass = .true.: each member keeps the regression's coarse mean",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads in the plugin")
    p.add_argument("--plot", action="store_true", help="also run plot_toy_esm.py")
    p.add_argument(
        "--cfchecks",
        action="store_true",
        help="also run the CF checker on every netCDF file of the run (0 errors, 0 warnings)",
    )
    p.add_argument(
        "--mpi-exe", type=Path, help="toy_esm_mpi: also run on --ranks ranks and compare"
    )
    p.add_argument("--mpiexec", default="mpiexec", help="MPI launcher")
    p.add_argument("--ranks", type=int, default=3, help="ranks of the MPI run")
    p.add_argument(
        "--restart-test",
        action="store_true",
        help="also run days/2 + restart + the rest and require bitwise equality",
    )
    args = p.parse_args(argv)

    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    out = work / "toy_esm_out.nc"
    out.unlink(missing_ok=True)
    for old_stream in (work / "stream").glob("*.nc"):
        old_stream.unlink()
    toy = {
        "ndays": args.days,
        "nlon": args.nlon,
        "nlat": args.nlat,
        "dt": 1800.0,
        "use_plugin": not args.no_plugin,
        "write_fine": True,
        "output_file": str(out),
    }
    plugin = None
    if not args.no_plugin:
        if args.tiny_bundle:
            bundle = tiny_bundle(work / "tiny_bundle")
        elif args.bundle == "auto":
            bundle = find_global_bundle(Path(__file__).resolve().parents[2] / "models")
        else:
            bundle = Path(args.bundle).resolve()
        print(f"bundle: {bundle}")
        plugin = {
            "bundle_path": str(bundle),
            "device": args.device,
            "members": args.members,
            "sampler_steps": args.steps,
            "conserve_mass": args.conserve_mass,
            "seed": 1,
            "output_units": "kg m-2 s-1",
            "reference_time": "2000-01-01 00:00:00",
            "torch_threads": args.threads,
            # The plugin's own fine-grid output stream: Python writes netCDF (netCDF4
            # wheel) inside the process that links Debian's netCDF-Fortran.
            "output_dir": str(work / "stream"),
        }
    nml = work / "toy_esm.nml"
    write_namelist(nml, toy, plugin)

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    t0 = time.perf_counter()
    proc = subprocess.run(
        [str(args.exe.resolve()), str(nml)], cwd=work, env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - t0
    sys.stdout.write(proc.stdout)
    sys.stdout.write(proc.stderr)
    if proc.returncode != 0:
        print(f"FAIL: toy_esm exited with status {proc.returncode}")
        return 1
    failures = check_output(out, args.days, coupled=not args.no_plugin)
    if plugin is not None and not failures:
        failures += check_stream(work / "stream", out, args.days)
    if args.mpi_exe is not None and not failures:
        failures += mpi_test(args, work, toy, plugin, env)
    if args.restart_test and not failures:
        failures += restart_test(args.exe.resolve(), work, toy, plugin, args.days, env)
    if args.cfchecks and not failures:
        from precipdiff.testing.cf import cf_failures

        failures += cf_failures(sorted(work.rglob("*.nc")))  # output, stream, restarts
    if args.plot and not failures:
        png = work / "toy_esm.png"
        png.unlink(missing_ok=True)
        plot = Path(__file__).resolve().parent / "plot_toy_esm.py"
        r = subprocess.run(
            [sys.executable, str(plot), str(out), "--output", str(png)],
            capture_output=True,
            text=True,
            env=env,
        )
        sys.stdout.write(r.stdout + r.stderr)
        if r.returncode != 0 or not png.is_file() or png.stat().st_size < 10_000:
            failures.append(f"plot_toy_esm.py failed (status {r.returncode}) or wrote no PNG")
    daily = [ln for ln in proc.stdout.splitlines() if ln.split()[1:2] and ln.split()[1].isdigit()]
    if len(daily) != args.days:
        failures.append(f"expected {args.days} daily budget lines on stdout, got {len(daily)}")
    for f in failures:
        print(f"FAIL: {f}")
    if failures:
        return 1
    if plugin is not None:
        print(budget_summary(out))
    print(f"PASS: toy_esm {args.days} days in {wall:.1f} s; output {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
