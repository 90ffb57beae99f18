#!/usr/bin/env python3
"""Compare ESM, generated and observed precipitation of an offline replay.

Usage::

    python plot_offline_replay.py offline_replay_out.nc \\
        [--data-dir ../shared/data/climate4r_iberia] [--output offline_replay.png]

Three maps of the mean over the replayed days -- CNRM-CM5's own precipitation
(``pr_esm``, ~1.4°), precipdiff's generated fine-grid precipitation (``pr_fine``)
and E-OBS observations (0.5°, land only) of the same dates -- then each source's
own wettest day (CNRM-CM5 is a free-running climate model: its days are not the
observed weather, only statistics compare), and the domain-mean daily series of all
three over the E-OBS land points inside the generated domain. mm/day, one colour
scale per row.
E-OBS: Haylock et al. (2008), ECA&D; CNRM-CM5 via SantanderMetGroup/climate4R.datasets.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

KG_M2_S_TO_MM_DAY = 86400.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("output_file", type=Path, help="offline_replay CF-netCDF output")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="climate4r_iberia directory (default: from precipdiff.testing.shared_data_dir())",
    )
    p.add_argument("--output", type=Path, default=Path("offline_replay.png"), help="PNG file")
    p.add_argument("--qdm", choices=("on", "off", ""), default="", help="say it in the title")
    args = p.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import netCDF4

    from precipdiff.offline.evaluate.plots import label_map_axes

    data = args.data_dir
    if data is None:
        from precipdiff.testing import shared_data_dir

        root = shared_data_dir()
        data = None if root is None else root / "climate4r_iberia"
    eobs_path = None if data is None else data / "EOBS_Iberia_pr.nc"
    if eobs_path is None or not eobs_path.is_file():
        print(f"error: E-OBS file not found ({eobs_path}); pass --data-dir", file=sys.stderr)
        return 1

    with netCDF4.Dataset(args.output_file) as ds:
        ds.set_auto_mask(False)
        tvar = ds.variables["time"]
        dates = netCDF4.num2date(np.floor(tvar[:]), tvar.units, tvar.calendar)
        keys = [(d.year, d.month, d.day) for d in dates]
        gen = ds.variables["pr_fine"][:] * KG_M2_S_TO_MM_DAY
        flat, flon = ds.variables["lat_fine"][:], ds.variables["lon_fine"][:]
        esm = ds.variables["pr_esm"][:] * KG_M2_S_TO_MM_DAY
        elat, elon = ds.variables["lat"][:], ds.variables["lon"][:]
    if len(keys) == 0:
        print(f"error: {args.output_file} holds no days", file=sys.stderr)
        return 1
    with netCDF4.Dataset(eobs_path) as ob:
        ob.set_auto_mask(False)
        ot = ob.variables["time"]
        odates = netCDF4.num2date(ot[:], ot.units, getattr(ot, "calendar", "standard"))
        index = {(d.year, d.month, d.day): i for i, d in enumerate(odates)}
        missing = [k for k in keys if k not in index]
        if missing:
            print(f"error: E-OBS has no data for {missing[:3]}...", file=sys.stderr)
            return 1
        obs = ob.variables["rr"][[index[k] for k in keys]].astype(np.float64)
        olat, olon = ob.variables["lat"][:], ob.variables["lon"][:]

    # Domain: E-OBS land points inside the generated fine domain.
    dlat = float(np.abs(np.diff(flat)).mean()) / 2 if flat.size > 1 else 0.25
    dlon = float(np.abs(np.diff(flon)).mean()) / 2 if flon.size > 1 else 0.25
    box_lat = (olat >= flat.min() - dlat) & (olat <= flat.max() + dlat)
    box_lon = (olon >= flon.min() - dlon) & (olon <= flon.max() + dlon)
    obs_box = obs[:, box_lat][:, :, box_lon]
    land = np.isfinite(obs_box).all(axis=0)
    obs_series = np.nanmean(np.where(land, obs_box, np.nan), axis=(1, 2))
    # Generated: on the same points when the fine grid is E-OBS's, else the whole domain.
    same = (
        obs_box.shape[1:] == gen.shape[1:]
        and np.allclose(olat[box_lat], flat)
        and np.allclose(olon[box_lon], flon)
    )
    gen_series = (
        np.nanmean(np.where(land, gen, np.nan), axis=(1, 2)) if same else gen.mean(axis=(1, 2))
    )
    esm_series = esm.mean(axis=(1, 2))
    # CNRM-CM5 is a free-running climate model: its dates are not the observed
    # weather, so each source shows its own wettest day.
    wet_esm, wet_gen, wet_obs = (int(np.nanargmax(x)) for x in (esm_series, gen_series, obs_series))

    fig = plt.figure(figsize=(14, 10), layout="constrained")
    gs = fig.add_gridspec(3, 3, height_ratios=[1, 1, 0.8])
    with warnings.catch_warnings():  # all-NaN sea cells of E-OBS stay NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        obs_mean = np.nanmean(obs, axis=0)
    mean_fields = [
        (esm.mean(axis=0), elat, elon, "CNRM-CM5 (ESM) pr"),
        (gen.mean(axis=0), flat, flon, "precipdiff generated"),
        (obs_mean, olat, olon, "E-OBS observed"),
    ]
    wet_fields = [
        (esm[wet_esm], elat, elon, f"CNRM-CM5 {dates[wet_esm]:%Y-%m-%d}"),
        (gen[wet_gen], flat, flon, f"precipdiff {dates[wet_gen]:%Y-%m-%d}"),
        (obs[wet_obs], olat, olon, f"E-OBS {dates[wet_obs]:%Y-%m-%d}"),
    ]
    d0, d1 = dates[0], dates[-1]
    for row, (fields, title) in enumerate(
        [
            (mean_fields, f"mean {d0:%Y-%m-%d}..{d1:%Y-%m-%d}"),
            (wet_fields, "its wettest day"),
        ]
    ):
        finite = [np.asarray(f, dtype=np.float64) for f, *_ in fields]
        vmax = max(max(float(np.nanmax(f)) for f in finite), 0.1)
        for col, (field, la, lo, name) in enumerate(fields):
            ax = fig.add_subplot(gs[row, col])
            im = ax.pcolormesh(lo, la, field, vmin=0.0, vmax=vmax, cmap="YlGnBu", shading="nearest")
            ax.set_xlim(min(elon.min(), olon.min()) - 1, max(elon.max(), olon.max()) + 1)
            ax.set_ylim(min(elat.min(), olat.min()) - 1, max(elat.max(), olat.max()) + 1)
            ax.set_title(f"{name}: {title}", fontsize=9)
            label_map_axes(ax, ylabel=col == 0)
            if col == 2:
                fig.colorbar(im, ax=ax, label="mm/day", shrink=0.9)
    ax = fig.add_subplot(gs[2, :])
    x = np.arange(len(keys))
    ax.plot(x, esm_series, "o-", label="CNRM-CM5 (ESM grid window)")
    ax.plot(x, gen_series, "s-", label="precipdiff generated")
    ax.plot(x, obs_series, "^-", color="k", label="E-OBS (land)")
    step = max(1, len(keys) // 10)
    ax.set_xticks(x[::step], [f"{d:%Y-%m-%d}" for d in dates[::step]], fontsize=8)
    ax.set_ylabel("domain mean, mm/day")
    ax.legend(fontsize=8)
    ax.set_title(
        f"daily domain means; period means: ESM {esm_series.mean():.2f}, generated "
        f"{gen_series.mean():.2f}, E-OBS {np.nanmean(obs_series):.2f} mm/day",
        fontsize=9,
    )
    fig.suptitle(
        "precipdiff offline replay of CNRM-CM5 over Iberia "
        + {"on": "(with QDM of the ESM's inputs)", "off": "(without QDM)", "": ""}[args.qdm]
        + "\n"
        "CNRM-CM5 runs free: its days are not the observed weather; compare means, not days",
        fontsize=11,
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=100)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
