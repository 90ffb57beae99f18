#!/usr/bin/env python3
"""Plot a toy_esm run: one day's precipitation maps and the daily water budget.

Usage::

    python plot_toy_esm.py toy_esm_out.nc [--day N] [--output toy_esm.png]

Top: the plugin's fine-grid precipitation of day N (``pr_fine``; the model-grid
field ``pr`` when the run wrote no fine output) and the model's column water
vapour at the end of that day. Bottom: global means per day -- column water,
evaporation, precipitation removed, precipitation the columns could not supply
(limited) -- and the budget residual.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

KG_M2_S_TO_MM_DAY = 86400.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("output_file", type=Path, help="toy_esm CF-netCDF output")
    p.add_argument("--day", type=int, default=0, help="day to map (1-based; 0 = last)")
    p.add_argument("--output", type=Path, default=Path("toy_esm.png"), help="PNG file")
    args = p.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import netCDF4
    from matplotlib.colors import LogNorm

    with netCDF4.Dataset(args.output_file) as ds:
        ds.set_auto_mask(False)
        nt = ds.dimensions["time"].size
        if nt == 0:
            print(f"error: {args.output_file} holds no days", file=sys.stderr)
            return 1
        day = nt if args.day == 0 else args.day
        if not 1 <= day <= nt:
            print(f"error: --day {args.day} outside 1..{nt}", file=sys.stderr)
            return 1
        k = day - 1
        if "pr_fine" in ds.variables:
            pr_map = ds.variables["pr_fine"][k] * KG_M2_S_TO_MM_DAY
            plat, plon = ds.variables["lat_fine"][:], ds.variables["lon_fine"][:]
            what = "fine-grid precipitation from precipdiff"
        else:
            pr_map = ds.variables["pr"][k] * KG_M2_S_TO_MM_DAY
            plat, plon = ds.variables["lat"][:], ds.variables["lon"][:]
            what = "precipitation from precipdiff (model grid)"
        prw = ds.variables["prw"][k]
        lat, lon = ds.variables["lat"][:], ds.variables["lon"][:]
        series = {
            name: np.asarray(ds.variables[name][:], dtype=np.float64)
            for name in (
                "global_prw",
                "global_evap",
                "global_pr",
                "global_pr_requested",
                "global_pr_limited",
                "budget_residual",
            )
        }
        units = ds.variables["time"].units

    days = np.arange(1, nt + 1)
    fig = plt.figure(figsize=(13, 8.5), layout="constrained")
    gs = fig.add_gridspec(2, 2, height_ratios=[1.25, 1])
    ax = fig.add_subplot(gs[0, 0])
    pos = np.asarray(pr_map, dtype=np.float64)
    vmax = max(float(np.nanpercentile(pos, 99.5)), 1e-3)
    norm = LogNorm(vmin=max(vmax / 1e3, 1e-3), vmax=vmax)
    im = ax.pcolormesh(plon, plat, np.clip(pos, norm.vmin, None), norm=norm, cmap="YlGnBu")
    fig.colorbar(im, ax=ax, label="mm/day", shrink=0.85)
    ax.set_title(f"day {day}: {what}\n{pos.shape[1]}×{pos.shape[0]} grid", fontsize=10)
    ax.set_xlabel("longitude (°E)")
    ax.set_ylabel("latitude (°N)")

    ax = fig.add_subplot(gs[0, 1])
    im = ax.pcolormesh(lon, lat, prw, cmap="viridis")
    fig.colorbar(im, ax=ax, label="kg m-2", shrink=0.85)
    ax.set_title(f"day {day}: column water vapour (toy ESM, {lon.size}×{lat.size})", fontsize=10)
    ax.set_xlabel("longitude (°E)")

    ax = fig.add_subplot(gs[1, 0])
    ax.plot(days, series["global_evap"], "o-", label="evaporation")
    ax.plot(days, series["global_pr"], "s-", label="precipitation removed")
    ax.plot(days, series["global_pr_limited"], "^-", label="limited (not in the column)")
    ax.set_ylabel("global mean, kg m-2 per day")
    ax.set_xlabel(f"day ({units})")
    ax2 = ax.twinx()
    ax2.plot(days, series["global_prw"], "k--", label="column water (right)")
    ax2.set_ylabel("global mean column water, kg m-2")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8, loc="best")
    ax.set_title("daily water budget", fontsize=10)

    ax = fig.add_subplot(gs[1, 1])
    ax.plot(days, series["budget_residual"], "o-", color="tab:red")
    ax.axhline(0.0, color="0.5", lw=0.8)
    ax.set_ylabel("ΔW − (E − P), kg m-2")
    ax.set_xlabel("day")
    ax.set_title("budget residual (round-off when the budget closes)", fontsize=10, pad=14)
    fig.suptitle(f"precipdiff toy ESM: {args.output_file.name}, {nt} days", fontsize=12)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=110)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
