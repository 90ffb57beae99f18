#!/usr/bin/env python3
"""Run the offline replay on the real CNRM-CM5 data and check its output (ctest driver).

1. Finds ``climate4r_iberia`` in the shared data (``$PRECIPDIFF_SHARED_DATA`` or
   ``../shared/data``); when absent, prints why and exits 77 (ctest: skipped).
2. Picks the bundle: ``--bundle PATH``, else a shipped bundle in ``models/`` whose
   predictors all exist as CNRM-CM5 files (the Iberia demo bundle), else a tiny
   random-weight bundle made now on the demo grids (hus850, psl, ta850; 2° coarse
   grid over Iberia, 0.5° fine grid on E-OBS points).
3. Chooses the window of the ESM grid handed to the plugin (see :func:`esm_window`)
   and writes the namelist.
4. Runs the Fortran program, then checks the CF output: record count and time axis,
   no NaN, non-negative generated precipitation, ``pr_esm`` equal to the input
   file, and ``pr`` equal to the conservative average of ``pr_fine`` onto the ESM
   window. ``--plot`` also runs plot_offline_replay.py and checks the PNG.

Exit status: 0 pass, 1 fail, 77 skipped (no data).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SKIP = 77
PREFIX = "CMIP5_Iberia_"


SAMPLE = HERE / "sample"  # one winter shipped in the repository (sample/ATTRIBUTION.md)


def data_dir(given: Path | None = None) -> Path | None:
    """The directory of the daily files: ``given``, else the shared climate4r_iberia."""
    from precipdiff.testing import shared_data_dir

    if given is not None:
        return given.resolve() if (given / f"{PREFIX}pr.nc").is_file() else None
    root = shared_data_dir()
    if root is None or not (root / "climate4r_iberia" / f"{PREFIX}pr.nc").is_file():
        return None
    return root / "climate4r_iberia"


def bundle_predictors(bundle: Path) -> list[str]:
    """Predictor names of a bundle, from its manifest (no weights loaded)."""
    from precipdiff.bundle import read_manifest

    return [str(v["name"]) for v in read_manifest(bundle).variables]


def shipped_bundle(data: Path) -> Path | None:
    """A bundle in models/ whose predictors all exist as CNRM-CM5 files (not a student)."""
    from precipdiff.bundle import read_manifest

    models = REPO / "models"
    if not models.is_dir():
        return None
    for manifest in sorted(models.glob("*/manifest.json")):
        try:
            names = bundle_predictors(manifest.parent)
            if "distilled" in read_manifest(manifest.parent).provenance:
                continue  # a distilled student: its teacher is the bundle to pick
        except Exception as exc:  # a broken bundle is reported, not used
            print(f"note: skipping {manifest.parent}: {exc}")
            continue
        if names and all((data / f"{PREFIX}{n}.nc").is_file() for n in names):
            return manifest.parent
    return None


def tiny_bundle(path: Path) -> Path:
    """Tiny bundle on the demo grids: 2° coarse (4×7) and 0.5° fine (16×28) over Iberia."""
    from precipdiff.grids import LatLonGrid
    from precipdiff.testing.models import make_tiny_bundle

    coarse = LatLonGrid(lat=np.arange(36.0, 42.1, 2.0), lon=np.arange(-9.0, 3.1, 2.0))
    fine = LatLonGrid(lat=np.arange(35.25, 42.8, 0.5), lon=np.arange(-9.75, 3.8, 0.5))
    make_tiny_bundle(
        path,
        coarse_grid=coarse,
        fine_grid=fine,
        variables=["hus850", "psl", "ta850"],
        overwrite=True,
    )
    return path


def bundle_with_tables(bundle: Path, tables_file: Path, work: Path) -> Path:
    """A copy of ``bundle`` in ``work`` carrying the QDM tables of ``tables_file``.

    Only the tables of the bundle's own input variables are attached (the sample ships
    tables for every variable a demo bundle may need), on the bundle's coarse grid.
    """
    import shutil

    from precipdiff.bundle import read_manifest
    from precipdiff.qdm import QDMTables

    names = bundle_predictors(bundle)
    tables = QDMTables.load(tables_file)
    missing = [n for n in names if n not in tables.variables]
    if missing:
        raise SystemExit(
            f"{tables_file} has no QDM tables for {missing} (bundle {bundle} needs {names}): "
            "regenerate them with scripts/make_demo_sample.py"
        )
    tables.variables = {n: tables.variables[n] for n in names}
    dest = work / f"{bundle.name}-qdm"
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(bundle, dest, ignore=shutil.ignore_patterns("figures", "compiled"))
    manifest = read_manifest(dest)
    manifest.compiled = []
    from precipdiff.bundle import write_manifest

    write_manifest(dest, manifest)
    tables.attach_to_bundle(dest)  # refuses tables on another coarse grid
    return dest


def add_observations(out: Path, data: Path) -> str | None:
    """Append E-OBS of the replayed dates on the fine grid (``pr_eobs``) to the output.

    Returns a note when E-OBS is absent or does not cover the fine grid (nothing added).
    """
    import netCDF4

    eobs = data / "EOBS_Iberia_pr.nc"
    if not eobs.is_file():
        return f"no {eobs.name} in {data}: pr_eobs not added"
    with netCDF4.Dataset(out, "a") as ds, netCDF4.Dataset(eobs) as ob:
        ds.set_auto_mask(False)
        t = ds["time"]
        days = netCDF4.num2date(np.floor(t[:]), t.units, t.calendar)
        ot = ob["time"]
        odays = netCDF4.num2date(ot[:], ot.units, getattr(ot, "calendar", "standard"))
        index = {(d.year, d.month, d.day): i for i, d in enumerate(odays)}
        keys = [(d.year, d.month, d.day) for d in days]
        if any(k not in index for k in keys):
            return "E-OBS does not cover the replayed days: pr_eobs not added"
        olat, olon = np.asarray(ob["lat"][:]), np.asarray(ob["lon"][:])
        flat, flon = np.asarray(ds["lat_fine"][:]), np.asarray(ds["lon_fine"][:])
        jj = [int(np.argmin(np.abs(olat - v))) for v in flat]
        ii = [int(np.argmin(np.abs(olon - v))) for v in flon]
        if not (np.allclose(olat[jj], flat) and np.allclose(olon[ii], flon)):
            return "the fine grid is not a subset of the E-OBS grid: pr_eobs not added"
        rr = np.asarray(ob["rr"][[index[k] for k in keys]], dtype=np.float64)[:, jj][:, :, ii]
        v = ds.createVariable("pr_eobs", "f4", ("time", "lat_fine", "lon_fine"), fill_value=1e20)
        v.standard_name = "precipitation_flux"
        v.long_name = "E-OBS v14 observed precipitation of the same dates (land only)"
        v.units = "kg m-2 s-1"
        v.cell_methods = "time: mean"
        v.source = "E-OBS v14 (Haylock et al. 2008; ECA&D), non-commercial research and education"
        v[:] = np.where(np.isfinite(rr), rr / 86400.0, 1e20).astype(np.float32)
        ds.history = (
            f"{ds.history}\nrun_offline_replay.py: added pr_eobs from {eobs.name}"
            if "history" in ds.ncattrs()
            else f"run_offline_replay.py: added pr_eobs from {eobs.name}"
        )
    return None


def esm_window(
    esm_lat: np.ndarray, esm_lon: np.ndarray, bundle: Path
) -> tuple[tuple[int, int, int, int], str]:
    """Largest window of the ESM grid the plugin can remap both ways, and the method.

    The plugin remaps the ESM grid to the bundle's coarse grid (the ESM cells must
    cover the coarse grid: its cell edges for 'conservative', its centres for
    'bilinear') and the fine output back to the ESM grid conservatively (the fine
    grid must cover every ESM cell handed to it). A regional ESM grid larger than
    the bundle's domain is therefore handed over as the window of cells that lie
    inside the fine grid.

    Returns
    -------
    (i_first, i_last, j_first, j_last), remap_method
        1-based inclusive Fortran indices (longitude i, latitude j).
    """
    from precipdiff.bundle import read_manifest
    from precipdiff.grids import LatLonGrid

    m = read_manifest(bundle)
    coarse = LatLonGrid.from_dict(m.coarse_grid)
    fine = LatLonGrid.from_dict(m.fine_grid)
    esm = LatLonGrid(lat=esm_lat, lon=esm_lon)
    tol = 1e-3
    flat = fine.lat_bounds
    flon = fine.lon_bounds
    f_lat = (float(flat.min()) - tol, float(flat.max()) + tol)
    f_lon = (float(flon.min()) - tol, float(flon.max()) + tol)
    lat_b, lon_b = esm.lat_bounds, esm.lon_bounds
    j_in = np.nonzero((lat_b.min(axis=1) >= f_lat[0]) & (lat_b.max(axis=1) <= f_lat[1]))[0]
    i_in = np.nonzero((lon_b.min(axis=1) >= f_lon[0]) & (lon_b.max(axis=1) <= f_lon[1]))[0]
    if j_in.size == 0 or i_in.size == 0:
        raise SystemExit(f"no ESM cell lies inside the bundle's fine grid {fine!r}")
    j0, j1, i0, i1 = int(j_in.min()), int(j_in.max()), int(i_in.min()), int(i_in.max())
    w_lat = (float(lat_b[j0 : j1 + 1].min()) - tol, float(lat_b[j0 : j1 + 1].max()) + tol)
    w_lon = (float(lon_b[i0 : i1 + 1].min()) - tol, float(lon_b[i0 : i1 + 1].max()) + tol)

    def inside(lat: np.ndarray, lon: np.ndarray) -> bool:
        return bool(
            lat.min() >= w_lat[0]
            and lat.max() <= w_lat[1]
            and lon.min() >= w_lon[0]
            and lon.max() <= w_lon[1]
        )

    if inside(coarse.lat_bounds, coarse.lon_bounds):
        method = "conservative"
    elif inside(coarse.lat, coarse.lon):
        method = "bilinear"
    else:
        raise SystemExit(
            f"the ESM cells inside the fine grid (lat {w_lat}, lon {w_lon}) do not span the "
            f"bundle's coarse grid {coarse!r}: this ESM grid cannot drive this bundle"
        )
    return (i0 + 1, i1 + 1, j0 + 1, j1 + 1), method


def fortran_value(value: Any) -> str:
    """Format a Python value as a Fortran namelist value."""
    if isinstance(value, bool):
        return ".true." if value else ".false."
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return repr(value) if isinstance(value, float) else str(value)


def write_namelist(path: Path, groups: dict[str, dict[str, Any]]) -> None:
    """Write namelist groups to one file."""
    lines: list[str] = []
    for name, values in groups.items():
        lines.append(f"&{name}")
        lines += [f"  {k} = {fortran_value(v)}" for k, v in values.items()]
        lines.append("/")
    path.write_text("\n".join(lines) + "\n")


def check_output(
    path: Path, data: Path, start: int, days: int, window: tuple[int, int, int, int]
) -> list[str]:
    """Check the replay output against its inputs; return the failed checks."""
    import netCDF4

    from precipdiff.grids import LatLonGrid, Regridder

    failures: list[str] = []

    def expect(cond: bool, message: str) -> None:
        if not cond:
            failures.append(message)

    i0, i1, j0, j1 = window
    with netCDF4.Dataset(path) as ds, netCDF4.Dataset(data / f"{PREFIX}pr.nc") as src:
        ds.set_auto_mask(False)
        src.set_auto_mask(False)
        nt = ds.dimensions["time"].size
        expect(nt == days, f"{nt} records, expected {days}")
        if nt == 0:
            return failures
        pr = ds.variables["pr"][:].astype(np.float64)
        pf = ds.variables["pr_fine"][:].astype(np.float64)
        pe = ds.variables["pr_esm"][:]
        for name, arr in (("pr", pr), ("pr_fine", pf), ("pr_esm", pe)):
            nbad = int(np.count_nonzero(~np.isfinite(arr)))
            expect(nbad == 0, f"{name}: {nbad} non-finite values")
        expect(bool(np.all(pr >= 0)) and bool(np.all(pf >= 0)), "negative generated precipitation")
        expect(bool(np.any(pf > 0)), "generated precipitation is zero everywhere")
        ref = src.variables["pr"][start - 1 : start - 1 + nt, j0 - 1 : j1, i0 - 1 : i1]
        expect(bool(np.array_equal(pe, ref)), "pr_esm differs from CMIP5_Iberia_pr.nc")
        t_src = src.variables["time"][start - 1 : start - 1 + nt]
        t_out = ds.variables["time"][:]
        expect(
            bool(np.allclose(t_out, np.floor(t_src) + 0.5)),
            f"time axis {t_out} does not match the replayed records' days {t_src}",
        )
        esm = LatLonGrid(lat=ds.variables["lat"][:], lon=ds.variables["lon"][:])
        fine = LatLonGrid(lat=ds.variables["lat_fine"][:], lon=ds.variables["lon_fine"][:])
        back = Regridder(fine, esm, method="conservative")(pf)
        expect(
            bool(np.allclose(back, pr, rtol=1e-4, atol=1e-9)),
            "pr is not the conservative average of pr_fine onto the ESM grid "
            f"(max difference {np.max(np.abs(back - pr)):.3g} kg m-2 s-1)",
        )
    return failures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--exe", required=True, type=Path, help="offline_replay executable")
    p.add_argument("--workdir", required=True, type=Path)
    p.add_argument("--days", type=int, default=3)
    p.add_argument("--start-record", type=int, default=1)
    p.add_argument("--dt", type=float, default=21600.0)
    p.add_argument(
        "--bundle", help="bundle directory or name (default: a shipped one the data fit, or tiny)"
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        help=f"directory of the daily files (default: ../shared/data/climate4r_iberia; the "
        f"repository's one-winter sample: {SAMPLE.relative_to(REPO)})",
    )
    p.add_argument(
        "--qdm-tables",
        type=Path,
        help="QDM tables to attach to (a copy of) a bundle that carries none",
    )
    p.add_argument("--tiny-bundle", action="store_true", help="always use a tiny bundle")
    p.add_argument("--members", type=int, default=1)
    p.add_argument("--steps", type=int, default=0, help="sampler steps (0: bundle default)")
    p.add_argument("--plot", action="store_true", help="also run plot_offline_replay.py")
    p.add_argument("--cfchecks", action="store_true", help="also run the CF checker on the output")
    p.add_argument(
        "--bias-correction",
        choices=("auto", "on", "off"),
        default="auto",
        help="QDM of the ESM predictors (auto: on when the bundle carries QDM tables)",
    )
    args = p.parse_args(argv)

    data = data_dir(args.data_dir)
    if data is None:
        where = args.data_dir or "../shared/data/climate4r_iberia"
        print(f"SKIP: {where} not found (set PRECIPDIFF_SHARED_DATA, or --data-dir {SAMPLE})")
        return SKIP
    print(f"data: {data}")
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    if args.bundle is not None:
        from precipdiff.bundle import find_bundle

        bundle = find_bundle(args.bundle).resolve()
    else:
        found = None if args.tiny_bundle else shipped_bundle(data)
        bundle = found if found is not None else tiny_bundle(work / "tiny_bundle")
    from precipdiff.bundle import read_manifest as _read

    if args.qdm_tables is not None and _read(bundle).bias_correction is None:
        bundle = bundle_with_tables(bundle, args.qdm_tables.resolve(), work)
        print(f"QDM tables {args.qdm_tables} attached to a copy of the bundle: {bundle}")
    print(f"bundle: {bundle} (predictors {', '.join(bundle_predictors(bundle))})")

    import netCDF4

    with netCDF4.Dataset(data / f"{PREFIX}pr.nc") as ds:
        lat, lon = np.asarray(ds.variables["lat"][:]), np.asarray(ds.variables["lon"][:])
        tunits = str(ds.variables["time"].units)
    from precipdiff.bundle import read_manifest

    has_qdm = read_manifest(bundle).bias_correction is not None
    qdm = has_qdm if args.bias_correction == "auto" else args.bias_correction == "on"
    print(f"bias correction (QDM): {'on' if qdm else 'off'}")
    window, method = esm_window(lat, lon, bundle)
    print(f"ESM window i={window[0]}..{window[1]}, j={window[2]}..{window[3]}, remap {method}")
    ref_date = tunits.split("since", 1)[1].strip()[:10]
    out = work / "offline_replay_out.nc"
    out.unlink(missing_ok=True)
    nml = work / "offline_replay.nml"
    write_namelist(
        nml,
        {
            "offline_replay_nml": {
                "data_dir": str(data),
                "file_prefix": PREFIX,
                "start_record": args.start_record,
                "ndays": args.days,
                "dt": args.dt,
                "i_first": window[0],
                "i_last": window[1],
                "j_first": window[2],
                "j_last": window[3],
                "output_file": str(out),
            },
            "precipdiff_nml": {
                "bundle_path": str(bundle),
                "device": "cpu",
                "members": args.members,
                "sampler_steps": args.steps,
                "seed": 1,
                "remap_method": method,
                "bias_correction": qdm,
                "output_units": "kg m-2 s-1",
                "reference_time": f"{ref_date} 00:00:00",
                "torch_threads": 1,
            },
        },
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    proc = subprocess.run(
        [str(args.exe.resolve()), str(nml)], cwd=work, env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - t0
    sys.stdout.write(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        print(f"FAIL: offline_replay exited with status {proc.returncode}")
        return 1
    failures = check_output(out, data, args.start_record, args.days, window)
    if not failures:
        note = add_observations(out, data)
        print(note or "added E-OBS of the same dates to the output (pr_eobs)")
    if args.cfchecks and not failures:
        from precipdiff.testing.cf import cf_failures

        failures += cf_failures([out])
    if args.plot and not failures:
        png = work / "offline_replay.png"
        png.unlink(missing_ok=True)
        cmd = [sys.executable, str(HERE / "plot_offline_replay.py"), str(out), "--data-dir"]
        cmd += [str(data), "--output", str(png), "--qdm", "on" if qdm else "off"]
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        sys.stdout.write(r.stdout + r.stderr)
        if r.returncode != 0 or not png.is_file() or png.stat().st_size < 10_000:
            failures.append(f"plot_offline_replay.py failed (status {r.returncode}) or no PNG")
    for f in failures:
        print(f"FAIL: {f}")
    if failures:
        return 1
    print(json.dumps({"pass": True, "days": args.days, "wall_s": round(wall, 2), "out": str(out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
