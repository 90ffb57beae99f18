#!/usr/bin/env python
"""How noisy is CNRM-CM5's own RCP8.5 change over Iberia when measured on a subsample of days?

The Iberia report's change targets are ratios of the generated to the ESM's own
relative change of the land-mean DJF mean (2081-2100 against 1983-1997). This
script measures the ESM's own change -- no network involved -- on all days, on
``--days`` evenly spaced days of each period (what ``precipdiff evaluate iberia
--esm-max-days N`` generates) and on ``--draws`` random subsets of that size, and
prints the subsets' mean, standard deviation and 5-95 % range; then the
5-95 % range of the change of the mean, q0.9 and q0.99 when whole winters
are resampled (the winter-block bootstrap of ``precipdiff evaluate iberia``).

Usage (seconds; reads ../shared/data or $PRECIPDIFF_SHARED_DATA)::

    .venv/bin/python scripts/iberia_change_sampling.py [--days 600] [--draws 2000]

Land: the fine-grid cells where E-OBS has a value on any day (the report's
mask); CNRM-CM5's precipitation is interpolated bilinearly onto the shipped
bundle's fine grid, as in the report.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def relative_change(hist: np.ndarray, fut: np.ndarray) -> float:
    """Relative change of the mean: ``mean(fut) / mean(hist) - 1``."""
    return float(np.mean(fut) / np.mean(hist) - 1.0)


def main() -> int:
    """Print the ESM's own change on all days, on the report's subsample, and its scatter."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--days", type=int, default=600)
    ap.add_argument("--draws", type=int, default=2000)
    ap.add_argument("--bundle", default=str(REPO / "models" / "iberia-demo"))
    args = ap.parse_args()
    from precipdiff.bundle import read_manifest
    from precipdiff.grids import LatLonGrid, Regridder
    from precipdiff.io import import_xarray
    from precipdiff.offline import metrics
    from precipdiff.offline.evaluate.report import djf_winter, evenly_spaced  # its rules
    from precipdiff.testing import shared_data_dir

    root = shared_data_dir()
    if root is None:
        print("SKIP: ../shared/data not found (set PRECIPDIFF_SHARED_DATA)")
        return 0
    xr = import_xarray()
    data = root / "climate4r_iberia"
    fine = read_manifest(Path(args.bundle)).fine_grid_obj()
    with xr.open_dataset(data / "EOBS_Iberia_pr.nc") as ds:
        # the fine grid is a crop of E-OBS's: pick its rows and columns by coordinate
        rows = np.isin(np.round(ds["lat"].values, 4), np.round(fine.lat, 4))
        cols = np.isin(np.round(ds["lon"].values, 4), np.round(fine.lon, 4))
        eobs = np.asarray(ds["rr"].values, np.float32)[:, rows][:, :, cols]
    if eobs.shape[1:] != fine.shape:
        raise SystemExit(f"E-OBS does not contain the bundle's fine grid {fine.shape}")
    land = np.isfinite(eobs).any(axis=0)
    periods, winters = {}, []
    for key, name in (("hist", "CMIP5_Iberia_pr.nc"), ("fut", "CMIP5_Iberia_pr.rcp85.nc")):
        with xr.open_dataset(data / name) as ds:
            grid = LatLonGrid(ds["lat"].values, ds["lon"].values)
            pr = Regridder(grid, fine, "bilinear")(np.asarray(ds["pr"].values, np.float32))
            winters.append(djf_winter(ds["time"].values))
        periods[key] = pr[..., land]
    h, f = periods["hist"], periods["fut"]
    print(f"land cells {int(land.sum())}; days: historical {len(h)}, RCP8.5 {len(f)}")
    print(f"CNRM-CM5's own change, all days: {100 * relative_change(h, f):+.1f} %")
    sh, sf = evenly_spaced(len(h), args.days), evenly_spaced(len(f), args.days)
    print(
        f"on {args.days} evenly spaced days of each period: "
        f"{100 * relative_change(h[sh], f[sf]):+.1f} %"
    )
    rng = np.random.default_rng(0)
    draws = np.array(
        [
            relative_change(
                h[rng.choice(len(h), args.days, replace=False)],
                f[rng.choice(len(f), args.days, replace=False)],
            )
            for _ in range(args.draws)
        ]
    )
    lo, hi = np.percentile(draws, [5, 95])
    print(
        f"on {args.draws} random {args.days}-day subsets: mean {100 * draws.mean():+.1f} %, "
        f"standard deviation {100 * draws.std():.1f} points, 5-95 % {100 * lo:+.1f} to "
        f"{100 * hi:+.1f} %"
    )
    # whole winters resampled (what `precipdiff evaluate iberia` reports for every product)
    wh, wf = winters[0], winters[1]
    boot = metrics.change_signal_bootstrap(
        h[:, None], f[:, None], wh, wf, q=(0.9, 0.99), n=args.draws, seed=0
    )
    for name, x in (
        ("mean", boot.mean),
        ("q0.9", boot.quantile[:, 0]),
        ("q0.99", boot.quantile[:, 1]),
    ):
        lo, hi = np.percentile(x, [5, 95])
        print(
            f"winter-block bootstrap ({args.draws} draws, {len(np.unique(wh))} + "
            f"{len(np.unique(wf))} winters), change of the {name}: 5-95 % {100 * lo:+.1f} to "
            f"{100 * hi:+.1f} %, positive in {100 * np.mean(x > 0):.0f} % of draws"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
