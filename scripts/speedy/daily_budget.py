#!/usr/bin/env python3
"""Print the daily global water budget of a SPEEDY run, and its tropical means.

Reads one daily output file of ``speedy_precipdiff`` (any mode) and prints one line per
day (or every ``--every`` days), then the means over all days: global means of column
water vapour and condensate (kg m-2), evaporation, the precipitation that left the
atmosphere, SPEEDY's own condensation (convective + large-scale), precipdiff's
precipitation, its part that the column limit kept and the condensate overflow
(mm/day); then the same day's means over the tropics (``--tropics`` degrees either side
of the equator) of column water vapour, 850 hPa specific humidity (g/kg), 850 hPa and
lowest-level temperature (K), SPEEDY's and precipdiff's precipitation, and the pattern
correlation of SPEEDY's and precipdiff's daily precipitation maps over the globe
(``corr``). This is the table behind docs/speedy.md section 6 (why the interactive run
blew up). Series a run does not have (e.g. the overflow before 2026-12-01, precipdiff's
fields in mode off) print as ``-``.

Usage::

    python scripts/speedy/daily_budget.py out/speedy/interactive/speedy_1981.nc --every 5
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

GLOBAL = (
    ("prw", "global_prw", 1.0),
    ("cond", "global_condensate", 1.0),
    ("evap", "global_evap", 1.0),
    ("pr", "global_pr", 1.0),
    ("speedy", "global_pr_speedy", 1.0),
    ("pd", "global_pr_precipdiff", 1.0),
    ("limited", "global_pr_limited", 1.0),
    ("overflow", "global_pr_overflow", 1.0),
)
TROPICS = (
    ("prw", "prw", 1.0),
    ("hus850", "hus850", 1000.0),
    ("ta850", "ta850", 1.0),
    ("tas", "tas", 1.0),
    ("speedy", "pr_speedy", 86400.0),
    ("pd", "pr_precipdiff", 86400.0),
)


def budget_table(path: Path, every: int = 1, tropics: float = 20.0) -> list[str]:
    """The lines the script prints (header first)."""
    import netCDF4

    with netCDF4.Dataset(path) as ds:
        ds.set_auto_mask(False)
        nt = ds.dimensions["time"].size
        lat = np.asarray(ds.variables["lat"][:], dtype=np.float64)
        rows = np.abs(lat) <= tropics
        w = np.cos(np.deg2rad(lat[rows]))
        w = w / w.sum()
        g = {
            key: np.asarray(ds.variables[name][:], dtype=np.float64) * f
            for key, name, f in GLOBAL
            if name in ds.variables
        }
        t = {}
        corr = None
        if "pr_precipdiff" in ds.variables:
            a = np.asarray(ds.variables["pr_speedy"][:], dtype=np.float64).reshape(nt, -1)
            b = np.asarray(ds.variables["pr_precipdiff"][:], dtype=np.float64).reshape(nt, -1)
            corr = np.array([np.corrcoef(a[i], b[i])[0, 1] for i in range(nt)])
        for key, name, f in TROPICS:
            if name in ds.variables:
                x = np.asarray(ds.variables[name][:, rows, :], dtype=np.float64).mean(axis=2)
                t[key] = (x * w[None, :]).sum(axis=1) * f
    head = "  day " + "".join(f"{k:>9}" for k, _, _ in GLOBAL) + "  |"
    head += "".join(f"{'tr_' + k:>10}" for k, _, _ in TROPICS) + f"{'corr':>7}"
    lines = [
        f"{path}: {nt} days; global means (kg m-2, mm/day) | tropics |lat| <= {tropics:g} "
        "(kg m-2, g/kg, K, mm/day)",
        head,
    ]
    days = sorted(set(range(0, nt, max(1, every))) | ({nt - 1} if nt else set()))
    for i in days:
        line = f"{i + 1:5d} " + "".join(
            f"{g[k][i]:9.3f}" if k in g else f"{'-':>9}" for k, _, _ in GLOBAL
        )
        line += "  |" + "".join(
            f"{t[k][i]:10.3f}" if k in t else f"{'-':>10}" for k, _, _ in TROPICS
        )
        line += f"{corr[i]:7.2f}" if corr is not None else f"{'-':>7}"
        lines.append(line)
    if nt:
        line = " mean " + "".join(
            f"{np.mean(g[k]):9.3f}" if k in g else f"{'-':>9}" for k, _, _ in GLOBAL
        )
        line += "  |" + "".join(
            f"{np.mean(t[k]):10.3f}" if k in t else f"{'-':>10}" for k, _, _ in TROPICS
        )
        line += f"{np.mean(corr):7.2f}" if corr is not None else f"{'-':>7}"
        lines.append(line)
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("output", type=Path, help="a speedy_precipdiff daily output file")
    p.add_argument("--every", type=int, default=1, help="print every N-th day (and the last)")
    p.add_argument("--tropics", type=float, default=20.0, help="latitude bound, degrees")
    args = p.parse_args(argv)
    if not args.output.is_file():
        print(f"{args.output}: no such file", file=sys.stderr)
        return 2
    print("\n".join(budget_table(args.output, args.every, args.tropics)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
