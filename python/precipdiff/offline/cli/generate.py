r"""``precipdiff generate``: predictor files → CF netCDF precipitation ensemble.

Example::

    precipdiff generate BUNDLE --input era5_pl_*.nc era5_sl_*.nc --out pr.nc \\
        --members 8 --steps 4 --seed 1 --device auto

Inputs are read lazily (:func:`precipdiff.io.readers.open_predictors`): ERA5 as
the Copernicus store delivers it (``q``/``u``/``v`` on pressure levels, ``msl``,
descending latitude, hourly data averaged to daily means) or CMIP6 names
(``hus``/``ua``/``va``/``psl``), mapped onto the bundle's variables. The output
is written one time step at a time to a temporary file that is renamed onto
``--out`` only when everything succeeded.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def _command_line(args: argparse.Namespace) -> str:
    """Rebuild the equivalent command line (recorded in the output history)."""
    parts = ["precipdiff generate", str(args.bundle), "--input", *map(str, args.input)]
    parts += ["--out", str(args.out), "--members", str(args.members), "--seed", str(args.seed)]
    if args.steps is not None:
        parts += ["--steps", str(args.steps)]
    parts += ["--device", str(args.device), "--units", repr(args.units)]
    if args.conserve_mass:
        parts.append("--conserve-mass")
    return " ".join(parts)


def _run(args: argparse.Namespace) -> int:
    import torch

    from precipdiff.bundle import MANIFEST_NAME, sha256_file
    from precipdiff.errors import ConfigError
    from precipdiff.generator import PrecipGenerator
    from precipdiff.io.readers import open_predictors
    from precipdiff.io.writers import PrecipStreamWriter

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.members < 1:
        raise ConfigError(f"--members must be >= 1, got {args.members}")
    if args.seed < 0:
        raise ConfigError(f"--seed must be >= 0, got {args.seed}")
    use_compiled: bool | str = "auto"
    if args.compiled != "auto":
        use_compiled = args.compiled == "yes"
    gen = PrecipGenerator.from_bundle(args.bundle, device=args.device, use_compiled=use_compiled)
    m = gen.manifest
    ds = open_predictors(args.input, m.variables, daily=args.daily)
    try:
        nt = int(ds.sizes["time"])
        sampler = gen.sampler if args.steps is None else gen.sampler.replace(steps=args.steps)
        attrs: dict[str, Any] = {
            "institution": "generated with precipdiff",
            "bundle": str(args.bundle),
            "bundle_provenance": str(m.provenance),
            "input_files": " ".join(str(f) for f in args.input),
            "members_seed": args.seed,
            "sampler": str(sampler.to_dict()),
            "nfe_per_member": sampler.nfe,
            "sigma_c": m.sigma_c,
            "conserve_mass": int(args.conserve_mass),
            "device": str(gen.device),
            "compiled_networks": int(gen.compiled),
        }
        writer = PrecipStreamWriter(
            args.out,
            gen.fine_grid,
            members=args.members,
            units=args.units,
            calendar=str(ds.attrs.get("calendar", "standard")),
            attrs=attrs,
            bundle_hash=sha256_file(gen.bundle.path / MANIFEST_NAME),
            command_line=_command_line(args),
        )
        bar = None
        if not args.no_progress:
            from tqdm import tqdm

            bar = tqdm(total=nt * args.members, unit="member", desc="generating", file=sys.stderr)
        try:
            times = ds["time"].values
            for t in range(nt):
                res = gen.generate(
                    ds.isel(time=slice(t, t + 1)),
                    members=args.members,
                    seed=args.seed,
                    sampler=sampler,
                    conserve_mass=args.conserve_mass,
                    time_offset=t,
                    progress=(lambda d, n: bar.update(1)) if bar is not None else None,
                )
                writer.append(res.fine[0], times[t])
            writer.finalize()
        except BaseException:
            writer.abort()
            raise
        finally:
            if bar is not None:
                bar.close()
    finally:
        ds.close()
    print(f"wrote {args.out}: {nt} time step(s) × {args.members} member(s) on {gen.fine_grid!r}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the ``generate`` subcommand.

    Parameters
    ----------
    subparsers
        The ``add_subparsers`` action of the top-level parser.
    """
    p = subparsers.add_parser(
        "generate", help="generate a precipitation ensemble from predictor files"
    )
    p.add_argument("bundle", help="model bundle directory")
    p.add_argument(
        "--input", nargs="+", required=True, metavar="FILE", help="predictor netCDF files/globs"
    )
    p.add_argument("--out", required=True, help="output netCDF file")
    p.add_argument("--members", type=int, default=1, help="ensemble size (default 1)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the bundle's)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default auto)")
    p.add_argument(
        "--units",
        default="mm/day",
        choices=("mm/day", "kg m-2 s-1"),
        help="output units (default mm/day)",
    )
    p.add_argument(
        "--conserve-mass",
        action="store_true",
        help="rescale each member so its coarse-grained field equals the regression's",
    )
    p.add_argument(
        "--daily",
        default="auto",
        type=lambda s: {"auto": "auto", "yes": True, "no": False}[s],
        help="average sub-daily input to daily means: auto (default), yes, no",
    )
    p.add_argument(
        "--compiled",
        default="auto",
        choices=("auto", "yes", "no"),
        help="use compiled networks from `precipdiff export` (default auto)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)
