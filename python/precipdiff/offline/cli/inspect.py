"""``precipdiff inspect BUNDLE``: print a bundle's manifest without loading weights."""

from __future__ import annotations

import argparse
import json
from typing import Any


def summarize(manifest: Any) -> str:
    """Render a manifest as a human-readable summary.

    Parameters
    ----------
    manifest
        A :class:`precipdiff.bundle.Manifest`.

    Returns
    -------
    str
        Multi-line text.
    """
    m = manifest
    cg, fg = m.coarse_grid_obj(), m.fine_grid_obj()
    samp = m.sampler_config()

    def grid(g: Any) -> str:
        lat0, lat1 = float(g.lat[0]), float(g.lat[-1])
        lon0, lon1 = float(g.lon[0]), float(g.lon[-1])
        per = ", periodic in longitude" if g.periodic else ""
        return f"{g.shape[0]}×{g.shape[1]} (lat {lat0:g}..{lat1:g}, lon {lon0:g}..{lon1:g}{per})"

    lines = [
        f"format_version   {m.format_version}",
        "inputs (what the host passes)",
    ]
    for v in m.variables:
        lev = f" at {v['level_hpa']:g} hPa" if v.get("level_hpa") is not None else ""
        lines.append(f"  {v['name']:10s} {v.get('standard_name', '')}{lev} [{v['units']}]")
    lines.append("network features (normalised)")
    for f in m.feature_specs():
        st = m.normalisation["predictors"][f.name]
        how = "" if f.op == "identity" else f" = {f.op}({', '.join(f.inputs)})"
        lines.append(f"  {f.name:10s}{how} mean {st['mean']:.4g} std {st['std']:.4g}")
    lines.append(f"condition        {m.condition}")
    reg, den = m.regression_config(), m.denoiser_config()
    lines += [
        f"coarse grid      {grid(cg)}",
        f"fine grid        {grid(fg)}",
        f"static fields    coarse {m.static_fields['coarse']}, fine {m.static_fields['fine']}",
        f"transform        {m.transform}",
        f"precip norm      {m.normalisation['precip']}",
        f"sigma_c          {m.sigma_c:g}   sigma_data {m.sigma_data:g}",
        f"sampler          {samp.name}, {samp.steps} steps, start={samp.start}"
        + (f" at sigma {samp.sdedit_sigma:g}" if samp.start == "sdedit" else "")
        + f", churn {samp.s_churn:g} -> {samp.nfe} network evaluations per member",
        f"regression       base {reg.base_channels}, mult {list(reg.channel_mult)}, "
        f"blocks {reg.num_blocks}, attention {list(reg.attention_levels)}",
        f"denoiser         base {den.base_channels}, mult {list(den.channel_mult)}, "
        f"blocks {den.num_blocks}, attention {list(den.attention_levels)}",
        f"bias correction  {'present' if m.bias_correction else 'none'}",
        "output calib.    "
        + (
            "none"
            if not m.output_calibration
            else f"{m.output_calibration['file']}, fitted on "
            f"{m.output_calibration.get('provenance', {}).get('days', '?')} days, applied by "
            f"default: {'yes' if m.output_calibration['default'] else 'no'}"
        ),
        "precision        " + ", ".join(f"{d} {p}" for d, p in m.precision.items()),
        "files",
    ]
    lines += [f"  {name:24s} sha256 {digest}" for name, digest in m.files.items()]
    if m.compiled:
        lines.append("compiled")
        for e in m.compiled:
            lines.append(
                f"  {e['file']} ({e['network']}, {e['device']}, shape {e['shape']}, "
                f"{e.get('precision', 'float32')}, torch {e['torch']})"
            )
            if "pays" in e:
                lines.append(
                    f"    measured at export: eager {e['eager_s']:.4g} s, compiled "
                    f"{e['compiled_s']:.4g} s per forward: "
                    + ("used" if e["pays"] else "not used (does not pay)")
                )
    lines.append("provenance")
    lines += [f"  {k:16s} {v}" for k, v in m.provenance.items()]
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    from precipdiff.bundle import read_manifest, verify_file

    manifest = read_manifest(args.bundle)
    if args.verify:
        from pathlib import Path

        for name, digest in manifest.files.items():
            verify_file(Path(args.bundle), name, digest)
        for entry in manifest.compiled:
            verify_file(Path(args.bundle), entry["file"], entry["sha256"])
        for table in (manifest.bias_correction, manifest.output_calibration):
            if table and table.get("sha256"):
                verify_file(Path(args.bundle), table["file"], table["sha256"])
    if args.json:
        print(json.dumps(manifest.to_dict(), indent=1))
    else:
        print(summarize(manifest))
        if args.verify:
            print("all file hashes verified")
    return 0


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the ``inspect`` subcommand.

    Parameters
    ----------
    subparsers
        The ``add_subparsers`` action of the top-level parser.
    """
    p = subparsers.add_parser(
        "inspect", help="print a model bundle's manifest (no weights are loaded)"
    )
    p.add_argument("bundle", help="bundle directory")
    p.add_argument("--json", action="store_true", help="print the full manifest as JSON")
    p.add_argument(
        "--verify", action="store_true", help="also check the sha256 of every file (reads them)"
    )
    p.set_defaults(func=_run)
