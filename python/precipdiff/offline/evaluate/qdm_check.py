"""QDM validation on a real biased GCM: the ISIMIP3BASD example (Berlin, 1979-2014 / 2065-2100).

A CMIP6 GCM's daily precipitation (far more wet days than observed) and
near-surface temperature are corrected against W5E5-type observations. The
check reports, for the historical period, the bias of the corrected series
(wet-day frequency, mean, quantiles) and, for the future period, the model's
change per quantile before and after correction -- QDM must keep the latter.

Precipitation is corrected multiplicatively with a trace threshold of
0.05 mm/day, temperature additively, both per cell and calendar month.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from precipdiff.errors import InputError
from precipdiff.offline import metrics
from precipdiff.offline.evaluate import plots
from precipdiff.offline.evaluate.report import Report, write_metrics_netcdf

__all__ = ["QUANTILES", "run_qdm_check"]

DATA_SUBDIR = "isimip3basd_example"
QUANTILES = (0.5, 0.75, 0.9, 0.95, 0.99)
WET = 1.0  # mm/day


def _read(path: Path, var: str) -> tuple[NDArray[np.float64], Any]:
    from precipdiff.io import import_netcdf4, import_xarray

    import_netcdf4()
    xr = import_xarray()
    if not path.is_file():
        raise InputError(f"ISIMIP3BASD example file {path} is missing")
    ds = xr.open_dataset(path, decode_times=xr.coders.CFDatetimeCoder(use_cftime=True))
    try:
        da = ds[var].transpose("time", "lat", "lon")
        a = np.asarray(da.values, dtype=np.float64)
        units = str(da.attrs.get("units", ""))
        times = ds["time"].values
    finally:
        ds.close()
    if var == "pr":
        if units != "kg m-2 s-1":
            raise InputError(f"{path}: pr units {units!r}, expected 'kg m-2 s-1'")
        a = a * 86400.0
    return a, times


def run_qdm_check(
    data_dir: Path | None,
    out: Path,
    n_quantiles: int = 50,
    log: Callable[[str], None] | None = None,
    command: str | None = None,
) -> dict[str, float]:
    """Fit QDM on the ISIMIP3BASD example and write figures, metrics and a report.

    Parameters
    ----------
    data_dir
        Shared data directory (holding ``isimip3basd_example/``); located
        automatically when ``None``.
    out
        Output directory.
    n_quantiles
        QDM quantile nodes.
    log
        Progress messages.
    command
        Command line quoted in the report.

    Returns
    -------
    dict
        Headline numbers (historical biases before/after, worst change-signal
        difference per variable).
    """
    from precipdiff.offline.qdm_fit import apply_qdm, fit_qdm
    from precipdiff.qdm import QDMConfig
    from precipdiff.testing import shared_data_dir

    say = log or (lambda _m: None)
    base = data_dir or shared_data_dir()
    if base is None:
        raise InputError("the shared data directory was not found: pass --data DIR")
    root = Path(base) / DATA_SUBDIR
    out.mkdir(parents=True, exist_ok=True)
    res: dict[str, float] = {}
    rep = Report("QDM validation on a real biased GCM (ISIMIP3BASD example)")
    rep.add_text(
        "Data: ISIMIP3BASD example (S. Lange, PIK; doi:10.5281/zenodo.6758997, via JGCRI/basd, "
        "BSD-2): observations 1979-2014 and a CMIP6 GCM's historical 1979-2014 and future "
        "2065-2100 daily series at 1° (2×2 cells around Berlin). QDM per cell and calendar "
        f"month with {n_quantiles} quantiles; precipitation multiplicative with a 0.05 mm/day "
        "trace threshold, temperature additive. 'Change' is the future-minus-historical change "
        "of each pooled quantile (relative for precipitation on wet days >= 1 mm/day, absolute "
        "for temperature); QDM should reproduce the GCM's change."
    )
    arrays: dict[str, tuple[tuple[str, ...], NDArray[Any]]] = {}
    units: dict[str, str] = {}  # per metric: precipitation in mm/day, temperature in K
    for var, kind, ck, trace in (
        ("pr", "multiplicative", "relative", 0.05),
        ("tas", "additive", "absolute", 0.0),
    ):
        obs, t_o = _read(root / f"{var}_obs-hist_coarse_1979-2014.nc", var)
        hist, t_h = _read(root / f"{var}_sim-hist_coarse_1979-2014.nc", var)
        fut, t_f = _read(root / f"{var}_sim-fut_coarse_2065-2100.nc", var)
        cfg = QDMConfig(
            n_quantiles=n_quantiles,
            group="month",
            kinds={var: kind},
            trace={var: trace} if trace else {},
        )
        tables = fit_qdm({var: obs}, {var: hist}, t_o, t_h, cfg)
        ch = apply_qdm(tables, var, hist, t_h).astype(np.float64)
        cf = apply_qdm(tables, var, fut, t_f).astype(np.float64)
        say(f"{var}: fitted and applied")

        def sel(x: NDArray[np.float64], v: str = var) -> NDArray[np.float64]:
            return x[x >= WET] if v == "pr" else x

        chg = metrics.change_signal_error(sel(hist), sel(fut), sel(ch), sel(cf), QUANTILES, ck)
        q_all = (0.1, 0.25, *QUANTILES, 0.999)
        qo, qh, qc = (metrics.quantiles(x, q_all) for x in (obs, hist, ch))
        rows = [
            ["mean", float(obs.mean()), float(hist.mean()), float(ch.mean())],
            *[
                [f"q{q:g}", float(a), float(b), float(c)]
                for q, a, b, c in zip(q_all, qo, qh, qc, strict=True)
            ],
        ]
        if var == "pr":
            wf = [float(np.mean(metrics.wet_day_frequency(x, WET))) for x in (obs, hist, ch)]
            rows.insert(0, ["wet-day frequency (>= 1 mm/day)", *wf])
            res["pr_wet_day_frequency_obs"], res["pr_wet_day_frequency_raw"] = wf[0], wf[1]
            res["pr_wet_day_frequency_qdm"] = wf[2]
        res[f"{var}_mean_bias_raw"] = float(hist.mean() - obs.mean())
        res[f"{var}_mean_bias_qdm"] = float(ch.mean() - obs.mean())
        # q0.1..q0.99: inside the outer node of the tables; beyond it (q0.999) QDM
        # extrapolates with the outermost correction, reported in the table only
        res[f"{var}_max_quantile_error_raw"] = float(np.max(np.abs(qh - qo)[:-1]))
        res[f"{var}_max_quantile_error_qdm"] = float(np.max(np.abs(qc - qo)[:-1]))
        res[f"{var}_max_change_difference"] = float(np.max(np.abs(chg["difference"])))
        unit = "mm/day" if var == "pr" else "K"
        rep.add_heading(f"{var}: historical bias ({unit})")
        rep.add_table(["statistic", "observations", "GCM raw", "GCM + QDM"], rows)
        rep.add_heading(f"{var}: change signal per quantile, future vs historical")
        rep.add_table(
            ["quantile", "GCM change", "QDM change", "difference"],
            [
                [f"q{q:g}", float(a), float(b), float(c)]
                for q, a, b, c in zip(
                    QUANTILES, chg["model"], chg["product"], chg["difference"], strict=True
                )
            ],
        )
        qq = plots.plot_qq(
            obs,
            {"GCM raw": hist, "GCM + QDM": ch},
            out / f"{var}_qq_historical.png",
            title=f"{var}: historical QQ against observations",
        )
        cs = plots.plot_change_signal(
            QUANTILES,
            {"GCM": chg["model"], "GCM + QDM": chg["product"]},
            out / f"{var}_change_per_quantile.png",
            ylabel=f"{ck} change" + (", wet days" if var == "pr" else f" ({unit})"),
            title=f"{var}: change per quantile, 2065-2100 vs 1979-2014",
            percent=ck == "relative",
        )
        rep.add_figure(qq, out, f"{var}: QQ against observations, historical")
        rep.add_figure(cs, out, f"{var}: change per quantile")
        arrays[f"{var}_change_gcm"] = (("q",), chg["model"])
        arrays[f"{var}_change_qdm"] = (("q",), chg["product"])
        value_units = "mm day-1" if var == "pr" else "K"
        change_units = "1" if ck == "relative" else value_units
        for k in (*res, *arrays):
            if k.startswith(f"{var}_") and k not in units:
                units[k] = "1" if "frequency" in k else value_units
        for k in (f"{var}_change_gcm", f"{var}_change_qdm", f"{var}_max_change_difference"):
            units[k] = change_units
    write_metrics_netcdf(
        out / "qdm_check_metrics.nc",
        res,
        arrays,
        {"q": np.asarray(QUANTILES)},
        units=units,
        title="precipdiff qdm-check: QDM of a CMIP6 GCM against ISIMIP3BASD observations",
    )
    rep.write(out / "README.md", command)
    return res
