r"""``precipdiff generate``: predictor files → CF netCDF precipitation ensemble.

Example::

    precipdiff generate BUNDLE --input era5_pl_*.nc era5_sl_*.nc --out pr.nc \\
        --members 8 --steps 4 --seed 1 --device auto --start 2020-01-01 --end 2020-01-31

Inputs are read lazily (:func:`precipdiff.io.readers.open_predictors`): ERA5 as
the Copernicus store delivers it (``q``/``u``/``v`` on pressure levels, ``msl``,
descending latitude, hourly data averaged to daily means) or CMIP6 names
(``hus``/``ua``/``va``/``psl``), mapped onto the bundle's variables. ``--start``/``--end``
(inclusive) or ``--time`` select dates in the data's own calendar, as CDO's ``seldate``;
nothing outside them is read. The output is written one time step at a time to a
temporary file that is renamed onto ``--out`` only when everything succeeded. It is
CF-1.8: daily means carry ``time_bnds`` (the day) with ``cell_methods = "time: mean"``,
the inputs' ``history`` is kept below this command's line, structured attributes
(``bundle_provenance``, ``sampler``) are JSON.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from precipdiff.perf.process import ALLOCATORS
from precipdiff.server.config import PRECISION_CHOICES

log = logging.getLogger("precipdiff.generate")

#: Output time units: daily windows are whole numbers of hours from this reference.
TIME_UNITS = "hours since 1970-01-01 00:00:00"


def _command_line(args: argparse.Namespace) -> str:
    """Rebuild the equivalent command line (recorded in the output history)."""
    parts = ["precipdiff generate", str(args.bundle), "--input", *map(str, args.input)]
    parts += ["--out", str(args.out), "--members", str(args.members), "--seed", str(args.seed)]
    if args.steps is not None:
        parts += ["--steps", str(args.steps)]
    for flag, value in (("--start", args.start), ("--end", args.end)):
        if value is not None:
            parts += [flag, str(value)]
    if args.time:
        parts += ["--time", *map(str, args.time)]
    parts += ["--device", str(args.device), "--units", repr(args.units)]
    if args.precision != "bundle":
        parts += ["--precision", str(args.precision)]
    if args.output_calibration != "bundle":
        parts += ["--output-calibration", str(args.output_calibration)]
    if args.conserve_mass:
        parts.append("--conserve-mass")
    return " ".join(parts)


def _check_out(path: Path) -> None:
    """Refuse an --out that cannot become a file before any work is done."""
    from precipdiff.errors import ConfigError

    if path.is_dir():
        raise ConfigError(f"--out {path} is a directory; give a file name, e.g. {path / 'pr.nc'}")
    parent = path.parent if str(path.parent) else Path(".")
    existing = next((p for p in (parent, *parent.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ConfigError(f"--out {path}: {existing} is a file, not a directory")


def _daily_windows(times_hours: np.ndarray, daily: bool | str) -> bool:
    """Whether the steps are daily means (the output then gets day bounds)."""
    if times_hours.size < 2:
        return daily is not False
    step = float(np.median(np.diff(times_hours)))
    return abs(step - 24.0) < 1e-6


def _run(args: argparse.Namespace) -> int:
    from precipdiff.bundle import bundle_hash
    from precipdiff.device import resolve_device
    from precipdiff.errors import ConfigError
    from precipdiff.generator import PrecipGenerator
    from precipdiff.io import cf
    from precipdiff.io.readers import open_predictors, select_time
    from precipdiff.io.writers import PrecipStreamWriter, encode_times
    from precipdiff.perf.process import ProcessSettings, configure

    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    configure(
        ProcessSettings(threads=args.threads or 0, allocator=args.torch_allocator),
        device_type=resolve_device(args.device).type,
    )
    if args.members < 1:
        raise ConfigError(f"--members must be >= 1, got {args.members}")
    if args.seed < 0:
        raise ConfigError(f"--seed must be >= 0, got {args.seed}")
    if args.time and (args.start is not None or args.end is not None):
        raise ConfigError("give --time, or --start/--end, not both")
    out = Path(args.out)
    _check_out(out)
    use_compiled: bool | str = "auto"
    if args.compiled != "auto":
        use_compiled = args.compiled == "yes"
    gen = PrecipGenerator.from_bundle(
        args.bundle, device=args.device, use_compiled=use_compiled, precision=args.precision
    )
    m = gen.manifest
    full = open_predictors(args.input, m.variables, daily=args.daily)
    try:
        # Time indices count from the first step of the INPUT, so a member of a day is the
        # same whether the day was generated alone (--time) or within a longer period.
        t_index = np.arange(int(full.sizes["time"]))
        ds = select_time(
            full.assign_coords(t_index=("time", t_index)), args.start, args.end, args.time
        )
        nt = int(ds.sizes["time"])
        calendar = str(full.attrs.get("calendar", "standard"))
        hours = encode_times(ds["time"].values, TIME_UNITS, calendar)
        daily = _daily_windows(encode_times(full["time"].values, TIME_UNITS, calendar), args.daily)
        if not daily:
            log.warning(
                "the input steps are not daily means: the output gets no time bounds and no "
                "'time: mean' cell method (the networks were trained on daily means)"
            )
        sampler = gen.sampler if args.steps is None else gen.sampler.replace(steps=args.steps)
        calibrate = gen.calibrates(
            {"bundle": None, "on": True, "off": False}[args.output_calibration]
        )
        attrs: dict[str, Any] = {
            "title": "precipitation generated by precipdiff",
            "bundle": str(args.bundle),
            "bundle_provenance": cf.json_attribute(m.provenance),
            "input_files": " ".join(str(f) for f in args.input),
            "members_seed": args.seed,
            "sampler": cf.json_attribute(sampler.to_dict()),
            "nfe_per_member": sampler.nfe,
            "sigma_c": m.sigma_c,
            "conserve_mass": int(args.conserve_mass),
            "output_calibration": int(calibrate),
            "device": str(gen.device),
            "compiled_networks": " ".join(sorted(gen.compiled_networks)) or "none",
            "precision": gen.precision,
        }
        previous = cf.input_history(args.input)
        if previous:
            attrs["history"] = "\n".join(previous)
        writer = PrecipStreamWriter(
            out,
            gen.fine_grid,
            members=args.members,
            units=args.units,
            calendar=calendar,
            time_units=TIME_UNITS,
            attrs=attrs,
            bundle_hash=bundle_hash(m),
            command_line=_command_line(args),
            time_bounds=daily,
        )
        bar = None
        if args.progress is not False:  # None: a bar only on a terminal (tqdm's own check)
            from tqdm import tqdm

            bar = tqdm(
                total=nt * args.members,
                unit="member",
                desc="generating",
                file=sys.stderr,
                disable=None if args.progress is None else False,
            )
            if bar.disable:
                bar = None
        log.info(
            "generating %d time step(s) x %d member(s) on %r (%s, %d network evaluations "
            "per member)",
            nt,
            args.members,
            gen.fine_grid,
            sampler.name,
            sampler.nfe,
        )
        every = max(1, nt // 10)
        try:
            offsets = ds["t_index"].values
            for t in range(nt):
                res = gen.generate(
                    ds.isel(time=slice(t, t + 1)),
                    members=args.members,
                    seed=args.seed,
                    sampler=sampler,
                    conserve_mass=args.conserve_mass,
                    output_calibration=calibrate,
                    time_offset=int(offsets[t]),
                    progress=(lambda d, n: bar.update(1)) if bar is not None else None,
                )
                if daily:
                    day = np.floor(hours[t] / 24.0) * 24.0
                    writer.append(res.fine[0], day + 12.0, bounds=(day, day + 24.0))
                else:
                    writer.append(res.fine[0], hours[t])
                if bar is None and ((t + 1) % every == 0 or t + 1 == nt):
                    log.info("generated %d/%d time steps", t + 1, nt)
            writer.finalize()
        except BaseException:
            writer.abort()
            raise
        finally:
            if bar is not None:
                bar.close()
    finally:
        full.close()
    print(f"wrote {out}: {nt} time step(s) × {args.members} member(s) on {gen.fine_grid!r}")
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
    p.add_argument("bundle", help="model bundle directory (or the name of a shipped bundle)")
    p.add_argument(
        "--input", nargs="+", required=True, metavar="FILE", help="predictor netCDF files/globs"
    )
    p.add_argument("--out", required=True, help="output netCDF file")
    p.add_argument("--members", type=int, default=1, help="ensemble size (default 1)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the bundle's)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--start",
        metavar="DATE",
        help="first date generated, inclusive: YYYY-MM-DD (or YYYY, YYYY-MM, YYYY-MM-DDThh:mm)",
    )
    p.add_argument("--end", metavar="DATE", help="last date generated, inclusive (same formats)")
    p.add_argument(
        "--time",
        nargs="+",
        metavar="DATE",
        help="generate only these dates (e.g. --time 1983-01-15 1983-02-01)",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default auto)")
    p.add_argument(
        "--units",
        default="mm/day",
        choices=("mm/day", "kg m-2 s-1"),
        help="output units (default mm/day)",
    )
    p.add_argument(
        "--output-calibration",
        default="bundle",
        choices=("bundle", "on", "off"),
        help="the bundle's output calibration (docs/generator.md): as the bundle says "
        "(default), on (an error when it has none) or off",
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
    p.add_argument(
        "--precision",
        default="bundle",
        choices=PRECISION_CHOICES,
        help="denoiser precision (default: the bundle's choice for the device)",
    )
    p.add_argument(
        "--torch-allocator",
        default="auto",
        choices=ALLOCATORS,
        help="caching CPU allocator for torch's tensors (default auto: when it can be built)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--progress",
        dest="progress",
        action="store_const",
        const=True,
        default=None,
        help="progress bar even when stderr is not a terminal",
    )
    g.add_argument(
        "--no-progress",
        dest="progress",
        action="store_const",
        const=False,
        help="no progress bar (default: a bar on a terminal, a log line every 10 %% otherwise)",
    )
    p.set_defaults(func=_run)
