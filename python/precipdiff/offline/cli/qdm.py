r"""``precipdiff qdm``: fit and apply quantile delta mapping of ESM predictors.

Examples::

    # fit on the bundle's coarse grid and store the tables in the bundle
    precipdiff qdm fit --bundle models/iberia-demo \
        --ref ../shared/data/climate4r_iberia/NCEP_Iberia_{hus850,psl,ta850}.nc \
        --hist ../shared/data/climate4r_iberia/CMIP5_Iberia_{hus850,psl,ta850}.nc --attach

    # correct an RCP8.5 period (trend-preserving) and write it to netCDF
    precipdiff qdm apply --bundle models/iberia-demo \
        --input ../shared/data/climate4r_iberia/CMIP5_Iberia_*.rcp85.nc --out esm_qdm.nc

Both series are regridded (bilinear) onto the bundle's coarse grid -- or, without
``--bundle``, onto the reference's grid -- before fitting: QDM works per cell, so
the tables live on the grid the model sees.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from precipdiff.errors import ConfigError


def _pairs(items: list[str] | None, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for it in items or []:
        if "=" not in it:
            raise ConfigError(f"{what} must be given as NAME=VALUE, got {it!r}")
        k, v = it.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _open(
    files: list[str], specs: list[Any], grid: Any
) -> tuple[dict[str, Any], Any, Any, dict[str, str]]:
    """Read variables (canonical names/units) regridded onto ``grid`` (native if None)."""
    import numpy as np

    from precipdiff.grids import LatLonGrid
    from precipdiff.io.readers import open_predictors

    ds = open_predictors(files, specs, grid=grid)
    try:
        arrays = {str(k): np.asarray(ds[k].values) for k in ds.data_vars}
        g = grid or LatLonGrid(np.asarray(ds["lat"].values), np.asarray(ds["lon"].values))
        units = {str(k): str(ds[k].attrs.get("units", "")) for k in ds.data_vars}
        return arrays, ds["time"].values, g, units
    finally:
        ds.close()


def _fit(args: argparse.Namespace) -> int:
    from precipdiff.bundle import read_manifest
    from precipdiff.offline.qdm_fit import fit_qdm
    from precipdiff.qdm import QDMConfig

    grid = None
    specs: list[Any] = list(args.vars or [])
    if args.bundle is not None:
        man = read_manifest(args.bundle)
        grid = man.coarse_grid_obj()
        if not specs:
            specs = list(man.variables)
    if not specs:
        raise ConfigError("name the variables with --vars (or give --bundle)")
    if args.out is None and not args.attach:
        raise ConfigError("give --out FILE and/or --attach (with --bundle)")
    if args.attach and args.bundle is None:
        raise ConfigError("--attach needs --bundle")
    ref, t_ref, grid, units = _open(args.ref, specs, grid)
    hist, t_hist, _, _ = _open(args.hist, specs, grid)
    trace = {k: float(v) for k, v in _pairs(args.trace, "--trace").items()}
    cfg = QDMConfig(
        n_quantiles=args.n_quantiles,
        group=args.group,
        window_days=args.window_days,
        n_windows=args.n_windows,
        kinds=_pairs(args.kind, "--kind"),
        trace=trace,
    )
    tables = fit_qdm(ref, hist, t_ref, t_hist, cfg, units=units)
    tables.provenance["grid"] = grid.to_dict()
    tables.provenance["ref_files"] = [str(f) for f in args.ref]
    tables.provenance["hist_files"] = [str(f) for f in args.hist]
    if args.out is not None:
        tables.save(args.out)
        print(f"wrote {args.out}")
    if args.attach:
        tables.attach_to_bundle(args.bundle)
        print(f"attached QDM tables to {args.bundle}")
    for name, t in tables.variables.items():
        print(f"  {name}: {t.kind}, trace {t.trace:g}, tables {t.ref_q.shape} ({t.units})")
    return 0


def _apply(args: argparse.Namespace) -> int:
    import numpy as np

    from precipdiff.bundle import read_manifest
    from precipdiff.grids import LatLonGrid
    from precipdiff.io import cf, import_netcdf4, import_xarray
    from precipdiff.io.atomic import atomic_path
    from precipdiff.offline.qdm_fit import apply_qdm
    from precipdiff.qdm import QDMTables
    from precipdiff.variables import get_variable

    if (args.tables is None) == (args.bundle is None):
        raise ConfigError("give exactly one of --tables FILE or --bundle DIR")
    if args.bundle is not None:
        man = read_manifest(args.bundle)
        if not man.bias_correction:
            raise ConfigError(f"bundle {args.bundle} holds no QDM tables (run qdm fit --attach)")
        tables = QDMTables.from_manifest(man.bias_correction, args.bundle)
        grid = man.coarse_grid_obj()
    else:
        tables = QDMTables.load(args.tables)
        gd = tables.provenance.get("grid")
        if gd is None:
            raise ConfigError(f"{args.tables} records no grid; apply it with --bundle instead")
        grid = LatLonGrid.from_dict(gd)
    names = list(args.vars or tables.variables)
    data, times, _, _ = _open(args.input, names, grid)
    out = {n: apply_qdm(tables, n, data[n], times, projection=args.projection) for n in names}
    import_netcdf4()
    xr = import_xarray()
    ds = xr.Dataset(
        {n: (("time", "lat", "lon"), np.asarray(a, dtype=np.float32)) for n, a in out.items()},
        coords={"time": times, "lat": np.asarray(grid.lat), "lon": np.asarray(grid.lon)},
        attrs={"input_files": " ".join(map(str, args.input))},
    )
    for n in names:
        spec = get_variable(n)
        ds[n].attrs.update(
            {
                "standard_name": spec.standard_name,
                "long_name": f"{n} bias-corrected by quantile delta mapping ({args.projection})",
                "units": tables.variables[n].units,
            }
        )
    cf.annotate_dataset(
        ds,
        title="ESM predictors bias-corrected by quantile delta mapping (precipdiff qdm apply)",
        command_line=" ".join(
            [
                "precipdiff qdm apply --input",
                *map(str, args.input),
                *("--out", str(args.out), "--projection", args.projection),
            ]
        ),
        previous_history=cf.input_history(args.input),
    )
    with atomic_path(args.out) as tmp:
        ds.to_netcdf(tmp)
    print(f"wrote {args.out}: {', '.join(names)} corrected ({args.projection} projection CDF)")
    return 0


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the ``qdm`` subcommand (``fit`` and ``apply``).

    Parameters
    ----------
    subparsers
        The ``add_subparsers`` action of the top-level parser.
    """
    p = subparsers.add_parser("qdm", help="fit/apply quantile delta mapping of ESM predictors")
    sub = p.add_subparsers(dest="qdm_command", metavar="ACTION", required=True)
    f = sub.add_parser("fit", help="fit QDM tables from a reference and an ESM historical run")
    f.add_argument("--ref", nargs="+", required=True, help="reference (reanalysis) files")
    f.add_argument("--hist", nargs="+", required=True, help="ESM historical files")
    f.add_argument("--bundle", type=Path, help="bundle whose coarse grid/variables to use")
    f.add_argument("--vars", nargs="+", help="variables (default: the bundle's predictors)")
    f.add_argument("--out", type=Path, help="write the tables to this .safetensors file")
    f.add_argument("--attach", action="store_true", help="store the tables in --bundle")
    f.add_argument("--n-quantiles", type=int, default=50)
    f.add_argument("--group", choices=("month", "window", "none"), default="month")
    f.add_argument("--window-days", type=int, default=31)
    f.add_argument("--n-windows", type=int, default=24)
    f.add_argument("--kind", nargs="*", help="NAME=additive|multiplicative overrides")
    f.add_argument("--trace", nargs="*", help="NAME=THRESHOLD for multiplicative variables")
    f.set_defaults(func=_fit)
    a = sub.add_parser("apply", help="correct ESM files with fitted tables")
    a.add_argument("--input", nargs="+", required=True, help="ESM files to correct")
    a.add_argument("--tables", type=Path, help="tables written by qdm fit --out")
    a.add_argument("--bundle", type=Path, help="bundle holding tables (qdm fit --attach)")
    a.add_argument("--vars", nargs="+", help="variables (default: all in the tables)")
    a.add_argument("--out", type=Path, required=True, help="output netCDF file")
    a.add_argument(
        "--projection",
        choices=("self", "static"),
        default="self",
        help="self: QDM with the input period's own CDF (trend-preserving); static: QM",
    )
    a.set_defaults(func=_apply)
