#!/usr/bin/env python3
"""Make the real-data sample the README's demo replays (examples/offline_replay/sample/).

    .venv/bin/python scripts/make_demo_sample.py [--data ../shared/data] [--winter YEAR]

Writes, from ../shared/data/climate4r_iberia (see its README and sample/ATTRIBUTION.md):

The winter (``--winter auto``, the default) is the one whose observed (E-OBS) domain-mean
precipitation is closest to the 1982-1997 winter climatology: a typical winter, chosen by
a rule, not by how well the model does on it (it gives 1983/84).

* ``CMIP5_Iberia_{hus850,psl,ta850,pr}.nc``: one winter (1 Dec .. end of Feb) of the
  CNRM-CM5 historical run on its own ~1.4° grid, values unchanged (float32), every
  variable a bundle may ask for: hus850, psl, ta850 (inputs) and pr (the ESM's own
  precipitation, the baseline);
* ``EOBS_Iberia_pr.nc``: E-OBS v14 daily precipitation of the same dates (0.5°);
* ``qdm_tables.safetensors``: quantile delta mapping tables of hus850, psl and ta850,
  fitted on the WHOLE record (NCEP reanalysis 1982-1997 as reference, CNRM-CM5
  historical as the model) on the coarse grid of models/iberia-demo, exactly as
  ``precipdiff qdm fit --bundle models/iberia-demo --vars hus850 psl ta850`` does; one
  winter is too short to fit them, so they are shipped (derived data, a few hundred
  numbers per cell).

Total well under 1 MB (tests/python/test_demo_sample.py checks the size and that this
script reproduces the committed files). Rerun it when the demo bundle's coarse grid changes.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "examples" / "offline_replay" / "sample"
VARIABLES = ("hus850", "psl", "ta850", "pr")
QDM_VARIABLES = ("hus850", "psl", "ta850")


def copy_winter(src: Path, dst: Path, first: str, last: str, history: str) -> int:
    """Copy the records of [first, last] (dates) of a daily file, values as they are.

    The copy is a CF-1.8 file that passes cfchecks with 0 errors and 0 warnings (as
    every netCDF file precipdiff writes): ``Conventions``, ``history`` with this
    script's line first (NCO's order), ``time`` named as such, no ``_FillValue`` on
    coordinate variables, and a ``comment`` pointing at ATTRIBUTION.md.
    """
    import netCDF4

    from precipdiff.io import cf

    with netCDF4.Dataset(src) as ds:
        t = ds["time"]
        cal = getattr(t, "calendar", "standard")
        dates = netCDF4.num2date(t[:], t.units, cal)
        keys = np.array([f"{d.year:04d}-{d.month:02d}-{d.day:02d}" for d in dates])
        idx = np.flatnonzero((keys >= first) & (keys <= last))
        if idx.size == 0 or np.any(np.diff(idx) != 1):
            raise SystemExit(f"{src}: no consecutive records from {first} to {last}")
        with netCDF4.Dataset(dst, "w", format="NETCDF4") as out:
            for k in ds.ncattrs():
                out.setncattr(k, ds.getncattr(k))
            previous = [str(ds.getncattr("history"))] if "history" in ds.ncattrs() else []
            out.setncattr("Conventions", cf.CONVENTIONS)
            out.setncattr("history", cf.merge_history(cf.history_line(history), previous))
            out.setncattr(
                "comment",
                "one winter cut, values unchanged, from climate4R.datasets for the "
                "precipdiff demo; sources, licences and attribution: ATTRIBUTION.md "
                "next to this file",
            )
            for name, dim in ds.dimensions.items():
                size = idx.size if name == "time" else len(dim)
                out.createDimension(name, None if dim.isunlimited() else size)
            for name, var in ds.variables.items():
                fill = var.getncattr("_FillValue") if "_FillValue" in var.ncattrs() else None
                if var.dimensions == (name,):
                    fill = False  # a coordinate variable has no missing values (CF 5)
                v = out.createVariable(
                    name, var.dtype, var.dimensions, zlib=True, complevel=9, fill_value=fill
                )
                v.setncatts({a: var.getncattr(a) for a in var.ncattrs() if a != "_FillValue"})
                if name == "time":
                    v.setncatts({"standard_name": "time", "long_name": "time", "axis": "T"})
                var.set_auto_maskandscale(False)
                v.set_auto_maskandscale(False)
                data = var[idx] if var.dimensions[:1] == ("time",) else var[:]
                v[:] = data
    return int(idx.size)


def typical_winter(src: Path) -> int:
    """The winter (year of its December) whose E-OBS mean is closest to the climatology."""
    import netCDF4

    with netCDF4.Dataset(src / "EOBS_Iberia_pr.nc") as ds:
        t = ds["time"]
        dates = netCDF4.num2date(t[:], t.units, getattr(t, "calendar", "standard"))
        rr = np.asarray(ds["rr"][:], dtype=np.float64)
    winter = np.array([d.year if d.month == 12 else d.year - 1 for d in dates])
    clim = float(np.nanmean(rr))
    years = [int(y) for y in np.unique(winter) if np.sum(winter == y) >= 90]  # whole winters
    return min(years, key=lambda y: abs(float(np.nanmean(rr[winter == y])) - clim))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=None, help="shared data (default ../shared/data)")
    p.add_argument(
        "--winter",
        default="auto",
        help="December of this year .. February (auto: the most typical observed winter)",
    )
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--bundle", type=Path, default=REPO / "models" / "iberia-demo")
    args = p.parse_args(argv)
    from precipdiff.testing import shared_data_dir

    root = args.data or shared_data_dir()
    if root is None or not (root / "climate4r_iberia").is_dir():
        print("error: ../shared/data/climate4r_iberia not found (--data)", file=sys.stderr)
        return 1
    src = root / "climate4r_iberia"
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    y = typical_winter(src) if args.winter == "auto" else int(args.winter)
    print(f"winter {y}/{y + 1}")
    first, last = f"{y}-12-01", f"{y + 1}-02-29"
    history = f"precipdiff scripts/make_demo_sample.py --winter {y}: records {first}..{last}"
    for v in VARIABLES:
        n = copy_winter(
            src / f"CMIP5_Iberia_{v}.nc", out / f"CMIP5_Iberia_{v}.nc", first, last, history
        )
        print(f"CMIP5_Iberia_{v}.nc: {n} days")
    n = copy_winter(src / "EOBS_Iberia_pr.nc", out / "EOBS_Iberia_pr.nc", first, last, history)
    print(f"EOBS_Iberia_pr.nc: {n} days")

    from precipdiff.offline.cli.main import main as cli

    tables = (out / "qdm_tables.safetensors").resolve()
    bundle = args.bundle.resolve()
    argv_fit = ["qdm", "fit", "--bundle", str(bundle), "--vars", *QDM_VARIABLES, "-q"]
    argv_fit += ["--ref", *(f"NCEP_Iberia_{v}.nc" for v in QDM_VARIABLES)]
    argv_fit += ["--hist", *(f"CMIP5_Iberia_{v}.nc" for v in QDM_VARIABLES)]
    cwd = Path.cwd()
    os.chdir(src)  # the tables' provenance names the files, not this machine's paths
    try:
        if cli([*argv_fit, "--out", str(tables)]) != 0:
            return 1
    finally:
        os.chdir(cwd)
    total = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(f"sample in {out}: {total / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
