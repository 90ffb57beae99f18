"""The paper's experiment on the real Iberia data, out of sample, with the baselines.

One call of :func:`run_iberia` (``precipdiff evaluate iberia``) produces every
number, table and figure of ``docs/results/iberia``. Every row is out of
sample: the winters before ``validation_start`` are the *training* winters (the
bundle's networks and normalisation, every QDM table and the output
calibration are fitted on them only); everything scored is on the *validation*
winters from ``validation_start`` on.

(a) **Reanalysis-driven** (NCEP/NCAR Reanalysis 1 predictors) against E-OBS on
    the fine grid, validation winters: CRPS, MAE, spread-skill, rank histogram,
    high quantiles, wet-day frequency, Hann-windowed spectra on the largest
    all-land box and the power at 1-2 degree wavelengths -- next to what a user
    already has: NCEP's own precipitation and the regression, both bilinearly
    interpolated (deterministic: CRPS = MAE).
(b) **ESM-driven** (CNRM-CM5 historical), climatology of the validation winters
    against E-OBS of the same winters: mean absolute bias of the time mean (the
    paper's "0.424 -> 0.091 mm/day" row) of generated precipitation (QDM of the
    predictors on and off), of the ESM's own precipitation, of per-cell
    trend-preserving QDM of the ESM's precipitation against E-OBS (the
    alternative users would pick, fitted on the training winters), and the
    interannual noise floor (E-OBS's training climatology against the
    validation mean: no product can be expected to beat it with a free-running
    model).
(c) **RCP8.5** (2081-2100 against the historical run): change of the DJF mean,
    of its quantiles and its map, generated against the ESM's own change.

When the bundle carries an output calibration (:mod:`precipdiff.qdm.calibration`,
fitted on the training winters by ``precipdiff train calibrate``: NCEP-driven
generation against E-OBS, per fine cell), every generated product is reported
without it ("generated") and with it ("generated, output-calibrated"), the
calibration applied to the very same members exactly as the runtime applies it
(static quantile mapping, in every period). Which of the two the runtime
returns by default is the bundle's choice (its manifest), stated in the report.

Grids: the bundle defines a coarse grid (2° here) and a fine grid (0.5°).
NCEP (2.5°, 6×8) and CNRM-CM5 (~1.4°, 8×11) predictors are bilinearly regridded
onto the bundle's coarse grid, and QDM is fitted on that grid, per cell and
calendar month (December, January, February). The ESM's own precipitation is
bilinearly interpolated onto the fine grid for the comparison; cells where
E-OBS has no data (sea) are excluded everywhere.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from precipdiff.errors import ConfigError, InputError
from precipdiff.features import FeatureSpec, compute_features
from precipdiff.offline import metrics
from precipdiff.offline.evaluate import plots
from precipdiff.offline.evaluate.report import (
    TABLE_COLUMNS,
    Report,
    day_keys,
    djf_winter,
    evaluate_ensemble,
    evenly_spaced,
    figures_for,
    write_metrics_netcdf,
)

__all__ = ["IberiaConfig", "run_iberia"]

DATA_SUBDIR = "climate4r_iberia"
CHANGE_Q = (0.5, 0.75, 0.9, 0.95, 0.99)
#: Wavelength band (degrees) of the small-scale power check.
BAND_DEG = (1.0, 2.0)
#: Trace of the precipitation QDM (mm/day): the xsdba habit of jittering values under it.
PR_TRACE = 0.05


@dataclass
class IberiaConfig:
    """Settings of the Iberia experiment.

    Parameters
    ----------
    bundle
        Bundle directory (``models/iberia-demo``).
    out
        Output directory (``docs/results/iberia``).
    data_dir
        The shared data directory holding ``climate4r_iberia/``; found with
        :func:`precipdiff.testing.shared_data_dir` when ``None``.
    members
        Ensemble size of the reanalysis-driven evaluation (a).
    esm_members
        Ensemble size of the ESM-driven runs (b, c), which only need time means.
    steps
        Sampler steps (``None``: the bundle's default).
    validation_start
        First day of the held-out reanalysis period for (a).
    n_quantiles
        Quantile nodes of the QDM fit.
    seed
        Base seed of the generation.
    max_days
        Use at most this many validation days in (a) (evenly spaced); ``None``
        for all.
    esm_max_days
        Generate at most this many days (evenly spaced over the period) of each
        ESM-driven and the NCEP-driven climatology run in (b) and (c); their time
        means are compared with E-OBS and ESM means over all days. ``None``
        (the default) for all: the change signal of (c) is a ratio of two
        period means, and on 600 random days of each period CNRM-CM5's own
        land-mean DJF change scatters with a standard deviation of 5.2 points
        around its all-day -9.9 % (the target's tolerance, 30 % of it, is 3
        points), so a subsample cannot score the change targets
        (``scripts/iberia_change_sampling.py``).
    change_members
        Members of the QDM-on historical and RCP8.5 runs of (c), whose
        ensemble-mean change map is correlated with the ESM's own: the change
        of a few percent is estimated from the members' noise, so one or two
        members measure the sampling noise more than the product's change
        pattern (the uncalibrated and QDM-off rows use ``esm_members``).
    bootstrap
        Draws of the winter-block bootstrap of the change signals in (c)
        (:func:`precipdiff.offline.metrics.change_signal_bootstrap`; every
        product is resampled with the same winters, so its difference from the
        ESM's own change is paired); 0 skips it.
    device
        ``"auto"``, ``"cpu"`` or ``"cuda"``.
    output_calibration
        Also report every generated product after the bundle's output
        calibration (when it has one).
    """

    bundle: Path
    out: Path
    data_dir: Path | None = None
    members: int = 16
    esm_members: int = 2
    steps: int | None = None
    validation_start: str = "1994-12-01"
    n_quantiles: int = 50
    seed: int = 0
    max_days: int | None = None
    esm_max_days: int | None = None
    change_members: int = 8
    bootstrap: int = 300
    device: str = "auto"
    output_calibration: bool = True

    def __post_init__(self) -> None:
        self.bundle = Path(self.bundle)
        self.out = Path(self.out)
        if self.members < 2:
            raise ConfigError(f"members must be >= 2 for CRPS/spread, got {self.members}")
        if self.esm_members < 1:
            raise ConfigError(f"esm_members must be >= 1, got {self.esm_members}")
        if self.change_members < 1:
            raise ConfigError(f"change_members must be >= 1, got {self.change_members}")
        if self.bootstrap != 0 and self.bootstrap < 20:
            raise ConfigError(f"bootstrap must be 0 (off) or >= 20 draws, got {self.bootstrap}")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        for key in ("max_days", "esm_max_days"):
            v = getattr(self, key)
            if v is not None and v < 10:
                raise ConfigError(f"{key} must be >= 10, got {v}")
        try:
            np.datetime64(self.validation_start)
        except ValueError as exc:
            raise ConfigError(f"validation_start {self.validation_start!r} is not a date") from exc


def _files(root: Path, stem: str, names: list[str], suffix: str = "") -> list[Path]:
    out = []
    for n in names:
        p = root / f"{stem}_Iberia_{n}{suffix}.nc"
        if not p.is_file():
            raise InputError(f"Iberia data file {p} is missing")
        out.append(p)
    return out


def _load(paths: list[Path], specs: list[Any], grid: Any) -> tuple[dict[str, NDArray[Any]], Any]:
    from precipdiff.io.readers import open_predictors

    ds = open_predictors(paths, specs, grid=grid)
    try:
        arrays = {str(k): np.asarray(ds[k].values, dtype=np.float32) for k in ds.data_vars}
        times = ds["time"].values
    finally:
        ds.close()
    return arrays, times


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _land_mean(x: NDArray[Any]) -> float:
    """Unweighted mean over cells of the time (and member) mean, ignoring NaN cells."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        tm = np.nanmean(x.reshape(-1, *x.shape[-2:]), axis=0)
    return float(metrics.spatial_mean(tm))


def _pr_qdm(
    ref: NDArray[Any],
    hist: NDArray[Any],
    ref_times: Any,
    hist_times: Any,
    n_quantiles: int,
) -> Any:
    """Per-cell, per-month multiplicative QDM of precipitation (xsdba kind ``*``, trace)."""
    from precipdiff.offline.qdm_fit import fit_qdm
    from precipdiff.qdm import QDMConfig

    cfg = QDMConfig(
        n_quantiles=n_quantiles,
        group="month",
        kinds={"pr": "multiplicative"},
        trace={"pr": PR_TRACE},
    )
    return fit_qdm({"pr": ref}, {"pr": hist}, ref_times, hist_times, cfg, units={"pr": "mm/day"})


def _apply_pr_qdm(
    tables: Any, x: NDArray[Any], times: Any, projection: str = "self"
) -> NDArray[Any]:
    """Apply precipitation QDM to any shape (``self``: trend-preserving, the series' CDF)."""
    from precipdiff.offline.qdm_fit import apply_qdm

    a = np.asarray(x, np.float32)
    if a.ndim == 3:
        return apply_qdm(tables, "pr", a, times, projection=projection)  # type: ignore[arg-type]
    # (time, member, lat, lon): each member is a series of its own
    return np.stack(
        [
            apply_qdm(tables, "pr", a[:, k], times, projection=projection)  # type: ignore[arg-type]
            for k in range(a.shape[1])
        ],
        axis=1,
    )


def _rel_change(h: NDArray[Any], f: NDArray[Any]) -> float:
    return float(_land_mean(f) / _land_mean(h) - 1.0)


def _predictor_qdm_rows(
    names: list[str],
    kinds: Mapping[str, str],
    units: Mapping[str, str],
    features: Sequence[FeatureSpec],
    series: Mapping[str, Mapping[str, NDArray[Any]]],
) -> list[list[Any]]:
    """Rows of the predictor-QDM table: each variable, then each derived network feature.

    QDM maps each variable on its own; a feature computed from several (relative
    humidity from ``hus850`` and ``ta850``) is what the networks read, so its
    change is reported too (absolute change, computed from the mapped variables).
    The last column correlates the change map of the time mean after QDM with the
    raw one: how much of the ESM's change pattern in each input survives QDM.
    """

    def one(
        name: str, unit: str, kind: str, get: Callable[[Mapping[str, NDArray[Any]]], NDArray[Any]]
    ) -> list[Any]:
        ck = "relative" if kind == "multiplicative" else "absolute"
        h, f = get(series["esm_h"]), get(series["esm_f"])
        hq, fq = get(series["esm_h_qdm"]), get(series["esm_f_qdm"])
        v, vq, ref = get(series["esm_v"]), get(series["esm_v_qdm"]), get(series["ncep_v"])
        q = (0.1, 0.5, 0.9)
        return [
            name,
            unit,
            kind,
            metrics.mean_bias(v, ref),
            metrics.mean_absolute_bias(v, ref),
            metrics.mean_absolute_bias(vq, ref),
            *metrics.change_signal(h, f, q=q, kind=ck),
            *metrics.change_signal(hq, fq, q=q, kind=ck),
            _pattern_corr(
                metrics.change_signal(hq, fq, kind=ck), metrics.change_signal(h, f, kind=ck)
            ),
        ]

    def variable(k: str) -> Callable[[Mapping[str, NDArray[Any]]], NDArray[Any]]:
        return lambda d: d[k]

    def feature(spec: FeatureSpec) -> Callable[[Mapping[str, NDArray[Any]]], NDArray[Any]]:
        return lambda d: compute_features([spec], d)[..., 0, :, :]

    rows = [one(k, units[k], kinds[k], variable(k)) for k in names]
    rows += [
        one(spec.name, "1", f"derived ({spec.op})", feature(spec))
        for spec in features
        if spec.op != "identity"
    ]
    return rows


def _pattern_corr(a: NDArray[Any], b: NDArray[Any]) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    return float(np.corrcoef(a[ok], b[ok])[0, 1]) if ok.sum() > 2 else float("nan")


def _interval(x: NDArray[Any]) -> str:
    """5-95 % range of bootstrap draws, as text."""
    lo, hi = np.nanpercentile(x, [5, 95])
    return f"{lo:+.3f} to {hi:+.3f}"


BLOCK_MEAN_ROW = "generated, QDM on, coarse block mean (bilinear)"

UNCERTAINTY_COLUMNS = [
    "product",
    "relative change of the mean",
    "minus the ESM's",
    "change of q0.9",
    "change of q0.99",
    "q0.99: minus the ESM's",
    "q0.99: draws with the ESM's sign",
    "pattern corr. with the ESM's map",
]


#: Steps of the chain as paired differences of (c) products: (label, product, minus product).
CHAIN_STEPS = (
    (
        "diffusion stage, large scales (block mean - regression)",
        BLOCK_MEAN_ROW,
        "regression only, QDM on",
    ),
    (
        "diffusion stage, small scales (fine - block mean)",
        "generated, QDM on",
        BLOCK_MEAN_ROW,
    ),
    (
        "output calibration (calibrated - fine)",
        "generated, QDM on, output-calibrated",
        "generated, QDM on",
    ),
    ("QDM of the inputs (QDM on - QDM off)", "generated, QDM on", "generated, QDM off"),
)


def _chain_rows(draws: Mapping[str, metrics.ChangeDraws]) -> list[list[Any]]:
    """Paired 5-95 % ranges of what each step of the chain does to the change."""
    rows = []
    for label, a, b in CHAIN_STEPS:
        if a in draws and b in draws:
            da, db = draws[a], draws[b]
            rows.append(
                [
                    label,
                    _interval(da.mean - db.mean),
                    _interval(da.quantile[:, 0] - db.quantile[:, 0]),
                    _interval(da.quantile[:, 1] - db.quantile[:, 1]),
                ]
            )
    return rows


def _uncertainty_rows(draws: Mapping[str, metrics.ChangeDraws], own: str) -> list[list[Any]]:
    """One row of 5-95 % ranges per product (paired with the ESM's own draws)."""
    ref = draws[own]
    rows = []
    for k, d in draws.items():
        corr = np.array([_pattern_corr(m, r) for m, r in zip(d.maps, ref.maps, strict=True)])
        same = np.sign(d.quantile[:, 1]) == np.sign(ref.quantile[:, 1])
        rows.append(
            [
                k,
                _interval(d.mean),
                _interval(d.mean - ref.mean),
                _interval(d.quantile[:, 0]),
                _interval(d.quantile[:, 1]),
                _interval(d.quantile[:, 1] - ref.quantile[:, 1]),
                float(np.mean(same)),
                _interval(corr),
            ]
        )
    return rows


def run_iberia(
    config: IberiaConfig, log: Callable[[str], None] | None = None, command: str | None = None
) -> dict[str, Any]:
    """Run the experiment and write metrics (netCDF, JSON), figures and ``README.md``.

    Parameters
    ----------
    config
        Settings.
    log
        Progress messages (e.g. ``print``).
    command
        The command line, quoted in the report.

    Returns
    -------
    dict
        The headline numbers (also in ``metrics.json``).
    """
    from precipdiff.generator import PrecipGenerator
    from precipdiff.grids import Regridder
    from precipdiff.offline.qdm_fit import apply_qdm, fit_qdm
    from precipdiff.qdm import QDMConfig
    from precipdiff.testing import shared_data_dir

    say = log or (lambda _m: None)
    t_start = time.perf_counter()
    base = config.data_dir or shared_data_dir()
    if base is None:
        raise InputError(
            "the shared data directory was not found: pass --data DIR or set PRECIPDIFF_SHARED_DATA"
        )
    root = Path(base) / DATA_SUBDIR
    if not root.is_dir():
        raise InputError(f"{root} does not exist (expected the climate4r_iberia data set)")
    out = config.out
    out.mkdir(parents=True, exist_ok=True)

    gen = PrecipGenerator.from_bundle(config.bundle, device=config.device)
    man = gen.manifest
    names = man.variable_names()
    specs = list(man.variables)
    cgrid, fgrid = gen.coarse_grid, gen.fine_grid
    flat, flon = np.asarray(fgrid.lat), np.asarray(fgrid.lon)
    factor = fgrid.shape[0] // cgrid.shape[0]
    feats = [f.name for f in man.feature_specs()]
    say(
        f"bundle {config.bundle}: variables {names} (features {feats}), coarse {cgrid.shape}, "
        f"fine {fgrid.shape}"
    )

    # ---------------------------------------------------------------- data
    ncep, t_ncep = _load(_files(root, "NCEP", names), specs, cgrid)
    esm_h, t_esm_h = _load(_files(root, "CMIP5", names), specs, cgrid)
    esm_f, t_esm_f = _load(_files(root, "CMIP5", names, ".rcp85"), specs, cgrid)
    eobs_all, t_eobs = _load([root / "EOBS_Iberia_pr.nc"], ["pr"], fgrid)
    ncep_pr, t_ncep_pr = _load(_files(root, "NCEP", ["pr"]), ["pr"], fgrid)
    esm_pr_h, _t_prh = _load(_files(root, "CMIP5", ["pr"]), ["pr"], fgrid)
    esm_pr_f, _t_prf = _load(_files(root, "CMIP5", ["pr"], ".rcp85"), ["pr"], fgrid)
    obs_full = eobs_all["pr"]
    land = np.isfinite(obs_full).all(axis=0)
    mask_l = np.where(np.isfinite(obs_full).any(axis=0), 1.0, np.nan)
    box = metrics.land_box(land)
    say(
        f"data read: NCEP {len(t_ncep)} days, CNRM-CM5 {len(t_esm_h)} + {len(t_esm_f)} days; "
        f"all-land box rows {box[0].start}-{box[0].stop - 1}, cols {box[1].start}-"
        f"{box[1].stop - 1}"
    )
    v0 = day_keys(np.array([np.datetime64(config.validation_start)]))[0]

    def split(times: Any) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        k = day_keys(times)
        return np.nonzero(k < v0)[0], np.nonzero(k >= v0)[0]

    def gen_fine(pred: Mapping[str, NDArray[Any]], members: int, seed: int) -> Any:
        return gen.generate(
            dict(pred), members=members, seed=seed, steps=config.steps, output_calibration=False
        )

    up = Regridder(cgrid, fgrid, "bilinear")
    tr_o, va_o = split(t_eobs)
    if va_o.size == 0 or tr_o.size == 0:
        raise InputError(f"no E-OBS days before and after {config.validation_start}")

    # ----------------------------------------- output calibration (the bundle's)
    # Fitted on the training winters by `precipdiff train calibrate`; applied here to the
    # same members exactly as the runtime applies it (static quantile mapping).
    calib = gen.output_calibration if config.output_calibration else None
    if calib is not None:
        say(
            "output calibration: the bundle's (fitted "
            f"{calib.tables.provenance.get('first_day', '?')[:10]} to "
            f"{calib.tables.provenance.get('last_day', '?')[:10]}; runtime default "
            f"{'on' if calib.default else 'off'})"
        )
        last = str(calib.tables.provenance.get("last_day", ""))[:10]
        if last and np.datetime64(last) >= np.datetime64(config.validation_start):
            raise ConfigError(
                f"the bundle's output calibration was fitted on days up to {last}, inside the "
                f"validation period from {config.validation_start}: not out of sample"
            )

    def calibrated(x: NDArray[Any], times: Any) -> NDArray[Any]:
        assert calib is not None
        return calib.apply(x, times) * mask_l

    # ------------------------------------------------- (a) reanalysis-driven
    _, va_n = split(t_ncep)
    common, i_n, i_o = np.intersect1d(
        day_keys(t_ncep)[va_n], day_keys(t_eobs)[va_o], return_indices=True
    )
    _, va_p = split(t_ncep_pr)
    pr_keys = day_keys(t_ncep_pr)[va_p]
    sel = evenly_spaced(common.size, config.max_days)
    vi_n, vi_o = va_n[i_n][sel], va_o[i_o][sel]
    vi_p = va_p[np.searchsorted(pr_keys, common[sel])]
    say(f"(a) generating {config.members} members for {vi_n.size} validation days")
    ra = gen_fine({k: v[vi_n] for k, v in ncep.items()}, config.members, config.seed)
    obs_a = obs_full[vi_o]
    reg_up = up(ra.coarse)
    baselines_a = {
        "NCEP own precipitation (bilinear)": ncep_pr["pr"][vi_p],
        "regression (bilinear)": reg_up,
    }
    if calib is not None:
        baselines_a_cal = calibrated(ra.fine, t_ncep[vi_n])
    ev = evaluate_ensemble(
        ra.fine,
        obs_a,
        flat,
        flon,
        baselines=baselines_a,
        coarse=ra.coarse,
        factor=factor,
        label="generated",
        spectrum_box=box,
        band_wavelengths=BAND_DEG,
    )
    ev_cal = None
    if calib is not None:
        ev_cal = evaluate_ensemble(
            baselines_a_cal,
            obs_a,
            flat,
            flon,
            label="generated, output-calibrated",
            spectrum_box=box,
            band_wavelengths=BAND_DEG,
        )
    fig_a = figures_for(
        ev,
        obs_a,
        {"generated (member 0)": ra.fine[:, 0], **baselines_a},
        flat,
        flon,
        out,
        prefix="a_",
    )
    write_metrics_netcdf(
        out / "a_reanalysis_metrics.nc",
        ev.scalars,
        ev.arrays,
        {"lat": flat, "lon": flon, **ev.coords},
        {"experiment": "reanalysis-driven (NCEP) vs E-OBS, validation winters"},
    )

    # ------------------------------------------------- (b) ESM-driven, out of sample
    tr_n, _ = split(t_ncep)
    tr_h, va_h = split(t_esm_h)
    qcfg = QDMConfig(n_quantiles=config.n_quantiles, group="month")
    units = {str(v["name"]): str(v["units"]) for v in specs}
    tables = fit_qdm(
        {k: ncep[k][tr_n] for k in names},
        {k: esm_h[k][tr_h] for k in names},
        t_ncep[tr_n],
        t_esm_h[tr_h],
        qcfg,
        units=units,
    )
    tables.save(out / "qdm_tables.safetensors")
    # QDM with the projection period's own CDF: the validation winters, the whole
    # historical run (for the change signal) and the RCP8.5 period are separate series.
    esm_v = {k: esm_h[k][va_h] for k in names}
    esm_v_qdm = {k: apply_qdm(tables, k, esm_v[k], t_esm_h[va_h]) for k in names}
    esm_h_qdm = {k: apply_qdm(tables, k, esm_h[k], t_esm_h) for k in names}
    esm_f_qdm = {k: apply_qdm(tables, k, esm_f[k], t_esm_f) for k in names}
    m = config.esm_members
    say(f"(b) generating ESM-driven runs for the {va_h.size} validation days (QDM off and on)")
    g_v_off = gen_fine(esm_v, m, config.seed + 1)
    g_v_on = gen_fine(esm_v_qdm, m, config.seed + 2)
    g_v_ncep = gen_fine({k: v[va_n] for k, v in ncep.items()}, m, config.seed + 3)
    # per-cell QDM of the ESM's own precipitation against E-OBS (training winters)
    pr_tables = _pr_qdm(
        obs_full[tr_o],
        esm_pr_h["pr"][tr_h] * mask_l,
        t_eobs[tr_o],
        t_esm_h[tr_h],
        config.n_quantiles,
    )
    esm_pr_v = esm_pr_h["pr"][va_h] * mask_l
    obs_v = obs_full[va_o]
    obs_train_clim = obs_full[tr_o]
    products_b: dict[str, NDArray[Any]] = {
        "CNRM-CM5 own precipitation (bilinear)": esm_pr_v,
        "per-cell QDM of CNRM-CM5 precipitation vs E-OBS": _apply_pr_qdm(
            pr_tables, esm_pr_v, t_esm_h[va_h]
        )
        * mask_l,
        "generated from CNRM-CM5, QDM off": g_v_off.fine * mask_l,
        "generated from CNRM-CM5, QDM on": g_v_on.fine * mask_l,
        "regression only from CNRM-CM5, QDM on (bilinear)": up(g_v_on.coarse) * mask_l,
        "generated from NCEP (reanalysis-driven)": g_v_ncep.fine * mask_l,
    }
    if calib is not None:
        products_b["generated from CNRM-CM5, QDM on, output-calibrated"] = calibrated(
            g_v_on.fine, t_esm_h[va_h]
        )
    products_b["E-OBS training-winter climatology (interannual floor)"] = obs_train_clim
    rows_b: list[list[Any]] = []
    maps_b: dict[str, NDArray[Any]] = {}
    mab_b: dict[str, float] = {}
    for k, p in products_b.items():
        mab = metrics.mean_absolute_bias(p, obs_v)
        maps_b[k] = metrics.time_mean_bias(p, obs_v)
        mab_b[k] = mab
        rows_b.append(
            [
                k,
                mab,
                metrics.mean_absolute_bias(p, obs_v, flat),
                metrics.mean_bias(p, obs_v),
                float(np.nanmean(metrics.wet_day_frequency(p))),
                float(metrics.quantiles(p, (0.99,))[0]),
            ]
        )
    rows_b.append(
        [
            "E-OBS, validation winters (reference)",
            0.0,
            0.0,
            0.0,
            float(np.nanmean(metrics.wet_day_frequency(obs_v))),
            float(metrics.quantiles(obs_v, (0.99,))[0]),
        ]
    )
    short = {
        k: k.split(" (")[0]
        .replace("generated from CNRM-CM5, ", "gen. ")
        .replace("per-cell QDM of CNRM-CM5 precipitation vs E-OBS", "QDM of ESM pr")
        .replace("output-calibrated", "calib.")
        for k in maps_b
    }
    fig_b = plots.plot_bias_maps(
        {short[k]: v for k, v in maps_b.items()},
        flat,
        flon,
        out / "b_esm_bias_maps.png",
        title="Bias of the validation-winter DJF mean against E-OBS (mm/day)",
        scores={short[k]: v for k, v in mab_b.items()},
    )
    qq_b = plots.plot_qq(
        obs_v,
        {short[k]: v for k, v in products_b.items() if "regression" not in k},
        out / "b_esm_qq.png",
        title="QQ against E-OBS, validation winters",
    )

    # ------------------------------------------------- (c) RCP8.5 change signal
    sh = evenly_spaced(len(t_esm_h), config.esm_max_days)
    sf = evenly_spaced(len(t_esm_f), config.esm_max_days)
    say(f"(c) generating historical ({sh.size} days) and RCP8.5 ({sf.size} days) runs")
    mc = config.change_members
    gh_on = gen_fine({k: v[sh] for k, v in esm_h_qdm.items()}, mc, config.seed + 4)
    gf_on = gen_fine({k: v[sf] for k, v in esm_f_qdm.items()}, mc, config.seed + 5)
    gh_off = gen_fine({k: v[sh] for k, v in esm_h.items()}, m, config.seed + 6)
    gf_off = gen_fine({k: v[sf] for k, v in esm_f.items()}, m, config.seed + 7)

    def land_block_mean(x: NDArray[Any]) -> NDArray[Any]:
        """Land-only block mean, interpolated back (coarse cells without land left out)."""
        b = metrics.block_mean(x * mask_l, factor, flat).astype(np.float32)
        return up(b, skipna=True) * mask_l

    pr_h_all = esm_pr_h["pr"] * mask_l
    pr_f_all = esm_pr_f["pr"] * mask_l
    pairs = {
        "CNRM-CM5 own precipitation": (pr_h_all[sh], pr_f_all[sf]),
        "generated, QDM on": (gh_on.fine * mask_l, gf_on.fine * mask_l),
        "generated, QDM off": (gh_off.fine * mask_l, gf_off.fine * mask_l),
        "regression only, QDM on": (up(gh_on.coarse) * mask_l, up(gf_on.coarse) * mask_l),
        # the generated members averaged back to the coarse grid: what the diffusion stage
        # does to the large scales it was conditioned on (compare with the regression row)
        # (over land cells only, as the regression's training target was built)
        BLOCK_MEAN_ROW: (land_block_mean(gh_on.fine), land_block_mean(gf_on.fine)),
        "per-cell QDM of CNRM-CM5 precipitation": (
            _apply_pr_qdm(pr_tables, pr_h_all, t_esm_h)[sh] * mask_l,
            _apply_pr_qdm(pr_tables, pr_f_all, t_esm_f)[sf] * mask_l,
        ),
    }
    if calib is not None:
        pairs["generated, QDM on, output-calibrated"] = (
            calibrated(gh_on.fine, t_esm_h[sh]),
            calibrated(gf_on.fine, t_esm_f[sf]),
        )
    rows_c: list[list[Any]] = []
    change_maps: dict[str, NDArray[Any]] = {}
    qsig: dict[str, NDArray[Any]] = {}
    for k, (h, f) in pairs.items():
        mh, mf = _land_mean(h), _land_mean(f)
        change_maps[k] = metrics.change_signal(h, f)
        qsig[k] = metrics.change_signal(h, f, q=CHANGE_Q)
        rows_c.append([k, float(mh), float(mf), float(mf / mh - 1.0), *[float(x) for x in qsig[k]]])
    ref_map = change_maps["CNRM-CM5 own precipitation"]
    corr = {k: _pattern_corr(cm, ref_map) for k, cm in change_maps.items()}
    rows_u: list[list[Any]] = []
    rows_chain: list[list[Any]] = []
    split_r = np.array([np.nan])
    if config.bootstrap:
        say(f"(c) winter-block bootstrap of the change signals ({config.bootstrap} draws)")
        wh, wf = djf_winter(t_esm_h[sh]), djf_winter(t_esm_f[sf])
        draws = {
            k: metrics.change_signal_bootstrap(
                h, f, wh, wf, q=(0.9, 0.99), n=config.bootstrap, seed=config.seed
            )
            for k, (h, f) in pairs.items()
        }
        rows_u = _uncertainty_rows(draws, "CNRM-CM5 own precipitation")
        rows_chain = _chain_rows(draws)
        split_r = metrics.change_map_split_half(
            *pairs["CNRM-CM5 own precipitation"], wh, wf, n=200, seed=config.seed
        )
    fig_c = plots.plot_change_signal(
        CHANGE_Q,
        qsig,
        out / "c_change_per_quantile.png",
        ylabel="relative change 2081-2100 vs 1983-1997 (DJF)",
        percent=True,  # in %, as the change maps
    )
    fig_cm = plots.plot_bias_maps(
        {k.replace(" precipitation", ""): 100 * v for k, v in change_maps.items()},
        flat,
        flon,
        out / "c_change_maps.png",
        title="Relative change of the DJF mean, RCP8.5 2081-2100 vs historical (%)",
        units="%",
    )
    rows_q = _predictor_qdm_rows(
        names,
        {k: tables.variables[k].kind for k in names},
        units,
        man.feature_specs(),
        {
            "esm_v": esm_v,
            "esm_v_qdm": esm_v_qdm,
            "ncep_v": {k: v[va_n] for k, v in ncep.items()},
            "esm_h": esm_h,
            "esm_f": esm_f,
            "esm_h_qdm": esm_h_qdm,
            "esm_f_qdm": esm_f_qdm,
        },
    )

    # ------------------------------------------------------------ targets (issue 13)
    own = "CNRM-CM5 own precipitation"
    s_a = ev.scalars
    crps_ncep = s_a["crps_NCEP own precipitation (bilinear)"]
    obs_p99, obs_wet = s_a["p99_observations"], s_a["wet_day_frequency_observations"]
    rel_own = rows_c[0][3]

    def target_rows(tag: str, sa: Mapping[str, float], lab: str, b_key: str, c_key: str) -> list:
        ch = next(r for r in rows_c if r[0] == c_key)
        q_own, q_gen = qsig[own], qsig[c_key]
        i9, i99 = CHANGE_Q.index(0.9), CHANGE_Q.index(0.99)
        checks = [
            (
                "CRPS / CRPS of NCEP's own precipitation",
                sa[f"crps_{lab}"] / crps_ncep,
                "<= 0.85",
                sa[f"crps_{lab}"] / crps_ncep <= 0.85,
            ),
            (
                "spread-skill ratio",
                sa.get(f"spread_skill_ratio_{lab}", float("nan")),
                "0.7 - 1.3",
                0.7 <= sa.get(f"spread_skill_ratio_{lab}", float("nan")) <= 1.3,
            ),
            (
                "p99 / E-OBS p99",
                sa[f"p99_{lab}"] / obs_p99,
                "0.85 - 1.15",
                0.85 <= sa[f"p99_{lab}"] / obs_p99 <= 1.15,
            ),
            (
                "wet-day frequency / E-OBS",
                sa[f"wet_day_frequency_{lab}"] / obs_wet,
                "0.85 - 1.15",
                0.85 <= sa[f"wet_day_frequency_{lab}"] / obs_wet <= 1.15,
            ),
            (
                "power at 1-2 deg / E-OBS (Hann, all-land box)",
                sa[f"band_power_ratio_{lab}"],
                "0.7 - 1.4",
                0.7 <= sa[f"band_power_ratio_{lab}"] <= 1.4,
            ),
            (
                "ESM-driven MAB / MAB of per-cell QDM of CNRM-CM5 pr",
                mab_b[b_key] / mab_b["per-cell QDM of CNRM-CM5 precipitation vs E-OBS"],
                "<= 1",
                mab_b[b_key] <= mab_b["per-cell QDM of CNRM-CM5 precipitation vs E-OBS"],
            ),
            (
                "RCP8.5 change of the DJF mean / CNRM-CM5's own change",
                ch[3] / rel_own,
                "0.7 - 1.3",
                0.7 <= ch[3] / rel_own <= 1.3,
            ),
            (
                "q0.9 change has the sign of CNRM-CM5's",
                float(q_gen[i9]),
                f"sign of {float(q_own[i9]):+.3f}",
                bool(np.sign(q_gen[i9]) == np.sign(q_own[i9])),
            ),
            (
                "q0.99 change has the sign of CNRM-CM5's",
                float(q_gen[i99]),
                f"sign of {float(q_own[i99]):+.3f}",
                bool(np.sign(q_gen[i99]) == np.sign(q_own[i99])),
            ),
            ("change-map pattern correlation", corr[c_key], ">= 0.7", corr[c_key] >= 0.7),
        ]
        return [[tag, c, float(v), t, "yes" if ok else "**no**"] for c, v, t, ok in checks]

    rows_t = target_rows(
        "generated", s_a, "generated", "generated from CNRM-CM5, QDM on", "generated, QDM on"
    )
    if ev_cal is not None:
        sa_cal = {**ev_cal.scalars, "crps_NCEP own precipitation (bilinear)": crps_ncep}
        rows_t += target_rows(
            "generated, output-calibrated",
            sa_cal,
            "generated, output-calibrated",
            "generated from CNRM-CM5, QDM on, output-calibrated",
            "generated, QDM on, output-calibrated",
        )

    # ------------------------------------------------------------ outputs
    headline: dict[str, float] = {
        "a_crps_generated": s_a["crps_generated"],
        "a_crps_ncep_own": crps_ncep,
        "a_crps_regression_bilinear": s_a["crps_regression (bilinear)"],
        "a_crps_ratio_to_ncep_own": s_a["crps_generated"] / crps_ncep,
        "a_mae_generated_ensemble_mean": s_a["mae_generated"],
        "a_spread_skill_ratio": s_a.get("spread_skill_ratio_generated", float("nan")),
        "a_p99_ratio": s_a["p99_generated"] / obs_p99,
        "a_wet_day_frequency_ratio": s_a["wet_day_frequency_generated"] / obs_wet,
        "a_band_power_ratio_1_2deg": s_a["band_power_ratio_generated"],
        "a_band_power_ratio_1_2deg_ncep_own": s_a[
            "band_power_ratio_NCEP own precipitation (bilinear)"
        ],
        "b_mab_esm_own": mab_b["CNRM-CM5 own precipitation (bilinear)"],
        "b_mab_per_cell_qdm_of_esm_pr": mab_b["per-cell QDM of CNRM-CM5 precipitation vs E-OBS"],
        "b_mab_generated_qdm_off": mab_b["generated from CNRM-CM5, QDM off"],
        "b_mab_generated_qdm_on": mab_b["generated from CNRM-CM5, QDM on"],
        "b_mab_generated_ncep": mab_b["generated from NCEP (reanalysis-driven)"],
        "b_mab_interannual_floor": mab_b["E-OBS training-winter climatology (interannual floor)"],
        "c_rel_change_esm_own": rel_own,
        "c_rel_change_generated_qdm_on": next(r[3] for r in rows_c if r[0] == "generated, QDM on"),
        "c_rel_change_generated_qdm_off": next(
            r[3] for r in rows_c if r[0] == "generated, QDM off"
        ),
        "c_change_pattern_corr_qdm_on": corr["generated, QDM on"],
        "water_mass_relative_total_error": s_a.get("water_mass_relative_total_error", float("nan")),
        "targets_met": float(sum(r[4] == "yes" for r in rows_t if r[0] == "generated")),
        "targets_total": float(sum(1 for r in rows_t if r[0] == "generated")),
        "runtime_s": time.perf_counter() - t_start,
    }
    if ev_cal is not None:
        headline["a_crps_generated_output_calibrated"] = ev_cal.scalars[
            "crps_generated, output-calibrated"
        ]
        headline["b_mab_generated_qdm_on_output_calibrated"] = mab_b[
            "generated from CNRM-CM5, QDM on, output-calibrated"
        ]
        headline["c_rel_change_generated_output_calibrated"] = next(
            r[3] for r in rows_c if r[0] == "generated, QDM on, output-calibrated"
        )
    bundle_sha = _sha256(config.bundle / "manifest.json")
    # Products along labelled dimensions (CF label variables), not numbered names.
    write_metrics_netcdf(
        out / "b_c_esm_metrics.nc",
        {k: v for k, v in headline.items() if k.startswith("c_")},
        {
            "b_mab": (("b_product",), np.array([mab_b[k] for k in maps_b])),
            "b_bias_map": (("b_product", "lat", "lon"), np.stack(list(maps_b.values()))),
            "c_change_map": (("c_product", "lat", "lon"), np.stack(list(change_maps.values()))),
            "c_change_q": (("c_product", "q"), np.stack(list(qsig.values()))),
            "c_change_pattern_corr": (("c_product",), np.array([corr[k] for k in change_maps])),
        },
        {
            "lat": flat,
            "lon": flon,
            "q": np.asarray(CHANGE_Q),
            "b_product": np.array(list(maps_b), dtype=object),
            "c_product": np.array(list(change_maps), dtype=object),
        },
        long_names={
            "b_mab": "mean absolute bias of the validation-winter DJF mean against E-OBS",
            "b_bias_map": "bias of the validation-winter DJF mean against E-OBS",
            "c_change_map": "relative change of the DJF mean, RCP8.5 vs historical",
            "c_change_q": "relative change per quantile, RCP8.5 vs historical",
            "c_change_pattern_corr": "spatial correlation of the change map with CNRM-CM5's own",
        },
        title="precipdiff evaluate iberia: ESM-driven (b) and RCP8.5 change (c) metrics",
    )
    a_all = dict(ev.scalars)
    if ev_cal is not None:
        a_all.update(ev_cal.scalars)
    (out / "metrics.json").write_text(
        json.dumps(
            {
                "bundle_manifest_sha256": bundle_sha,
                "headline": headline,
                "a": a_all,
                "b_mab": mab_b,
                "c_change": {r[0]: r[1:] for r in rows_c},
                "c_pattern_corr": corr,
                "c_bootstrap_5_95": {
                    r[0]: dict(zip(UNCERTAINTY_COLUMNS[1:], r[1:], strict=True)) for r in rows_u
                },
                "c_esm_change_map_split_half_corr": float(np.nanmean(split_r)),
                "c_bootstrap_chain_steps_5_95": {
                    r[0]: dict(zip(("mean", "q0.9", "q0.99"), r[1:], strict=True))
                    for r in rows_chain
                },
                "targets": rows_t,
            },
            indent=1,
            default=float,
        )
        + "\n"
    )

    rep = Report("Iberia experiment: the paper's evaluation on real data, out of sample")
    prov = man.provenance
    rep.add_text(
        f"Bundle `{config.bundle}` ({prov.get('name', '')}: {prov.get('description', '')}); "
        f"variables {', '.join(names)}, network features {', '.join(feats)}; coarse grid "
        f"{cgrid.shape[0]}×{cgrid.shape[1]}, fine grid {fgrid.shape[0]}×{fgrid.shape[1]} "
        f"(factor {factor}). Sampler: {man.sampler_config().name}, "
        f"{man.sampler_config().nfe} network evaluations per member. Bundle manifest sha256 "
        f"`{bundle_sha[:16]}…`. "
        + (f"**Quick run: {config.max_days} validation days only.** " if config.max_days else "")
        + f"Wall time {headline['runtime_s']:.0f} s on this machine."
    )
    rep.add_text(
        "Data (real, see `../shared/data/README.md`): NCEP/NCAR Reanalysis 1 predictors and "
        "precipitation (Kalnay et al. 1996), E-OBS v14 precipitation (Haylock et al. 2008; "
        "ECA&D, non-commercial research use), CNRM-CM5 r1i1p1 historical and RCP8.5 (CMIP5), "
        "via SantanderMetGroup/climate4R.datasets (LGPL-3). Winters (DJF) only. **Training "
        f"winters**: before {config.validation_start} (1982/83-1993/94): the bundle, every QDM "
        "table and the output calibration are fitted on them only. **Validation winters**: "
        f"from {config.validation_start} (1994/95-1996/97), scored here once. Predictors are "
        "bilinearly regridded onto the bundle's coarse grid; QDM of the predictors is fitted "
        "on that grid per cell and calendar month; NCEP's and the ESM's own precipitation are "
        "bilinearly interpolated onto the fine grid; E-OBS sea cells are excluded. 'MAB' is the "
        "unweighted mean over land cells of |time-mean bias| (the paper's metric); the "
        "area-weighted value is beside it. Spectra: Hann-windowed, on the largest all-land box "
        f"of the fine grid (rows {box[0].start}-{box[0].stop - 1}, columns "
        f"{box[1].start}-{box[1].stop - 1})."
    )
    if calib is not None:
        rep.add_text(
            "**Output calibration.** The bundle carries a per-fine-cell quantile mapping of its "
            "output onto E-OBS (`precipdiff train calibrate`, fitted on "
            f"{calib.tables.provenance.get('days', '?')} training days, "
            f"{calib.tables.provenance.get('members', '?')} members each; "
            "`docs/generator.md`). 'generated' rows are without it, 'generated, "
            "output-calibrated' rows the same members with it, applied as the runtime applies "
            "it. **What the runtime returns by default: "
            + ("the output-calibrated product" if calib.default else "the uncalibrated product")
            + "** (namelist `output_calibration = 'bundle'`; `'off'` / `'on'` override)."
        )
    rep.add_heading("Targets of issue 13 (validation winters)")
    rep.add_table(["product", "check", "value", "target", "met"], rows_t)
    rep.add_heading("(a) Reanalysis-driven, validation winters, against E-OBS")
    rep.add_text(
        f"{vi_n.size} validation days, {config.members} members. NCEP's own precipitation and "
        "the regression's coarse field are interpolated bilinearly to the fine grid "
        "(deterministic: CRPS = MAE). The MAE row of 'generated' is that of the ensemble mean; "
        "p99 and wet-day frequency of 'generated' pool all members."
    )
    rep.add_table(TABLE_COLUMNS, ev.rows + (ev_cal.rows[:1] if ev_cal is not None else []))
    extra = [
        ["CRPS, fair estimator", s_a.get("crps_fair_generated", float("nan"))],
        ["spread-skill ratio (1 = calibrated)", headline["a_spread_skill_ratio"]],
        ["p99 of member 0 (mm/day)", s_a["p99_generated_member0"]],
        ["wet-day frequency of member 0", s_a["wet_day_frequency_generated_member0"]],
        ["power at 1-2 deg / E-OBS: generated", s_a["band_power_ratio_generated"]],
        [
            "power at 1-2 deg / E-OBS: NCEP own",
            s_a["band_power_ratio_NCEP own precipitation (bilinear)"],
        ],
        ["power at 1-2 deg / E-OBS: regression", s_a["band_power_ratio_regression (bilinear)"]],
        [
            "water mass: fine total / coarse total - 1",
            s_a.get("water_mass_relative_total_error", float("nan")),
        ],
    ]
    rep.add_table(["quantity", "value"], extra)
    captions = {
        "bias": "Bias of the validation-period mean against E-OBS",
        "spectra": "Hann-windowed radial power spectra on the all-land box (cycles per degree)",
        "qq": "Quantile-quantile plot against E-OBS",
        "spread_skill": "Binned spread against RMSE of the ensemble mean",
        "rank_histogram": "Rank histogram of E-OBS among the members",
    }
    for k, fpath in fig_a.items():
        rep.add_figure(fpath, out, captions[k])
    rep.add_heading("(b) ESM-driven (CNRM-CM5), validation-winter climatology against E-OBS")
    rep.add_text(
        "The paper's headline row (GFDL-ESM4 against ERA5: 0.424 -> 0.091 mm/day) for this "
        f"data set. All {va_h.size} days of the ESM's validation winters, {m} member(s). The "
        "time mean of "
        "each product is compared with the E-OBS mean of the same winters (a free-running "
        "model's weather is not comparable day by day, so the interannual floor -- E-OBS's own "
        "training climatology against the validation winters -- bounds what any product can "
        "reach). Per-cell QDM of the ESM's precipitation: multiplicative, per calendar month, "
        f"trace {PR_TRACE} mm/day, fitted on the training winters (xsdba kind `*`)."
    )
    rep.add_table(
        [
            "product",
            "MAB of time mean (mm/day)",
            "MAB, area-weighted",
            "mean bias",
            "wet-day freq.",
            "p99 (mm/day)",
        ],
        rows_b,
    )
    rep.add_figure(fig_b, out, "Bias of the validation-winter DJF mean against E-OBS")
    rep.add_figure(qq_b, out, "QQ plot of the ESM-driven products against E-OBS")
    rep.add_heading("(c) RCP8.5: change signal of generated vs the ESM's own precipitation")
    rep.add_text(
        f"{sh.size} of {len(t_esm_h)} historical and {sf.size} of {len(t_esm_f)} RCP8.5 winter "
        "days (evenly spaced). Predictor QDM (training-winter tables) is applied to each period "
        "with the period's own CDF (trend-preserving). Relative changes of the land-mean DJF "
        "mean and of pooled quantiles; 'pattern corr.' is the spatial correlation of the change "
        "map with the ESM's own. Members: "
        f"{config.change_members} for 'generated, QDM on' (and its calibrated row: the same "
        f"members), {m} for 'generated, QDM off'. The ESM's own map is one realisation of "
        "the same days; the regression, deterministic and driven by the same days, shows how "
        f"far a noise-free product gets. '{BLOCK_MEAN_ROW}' is 'generated, QDM on' averaged "
        f"over the land cells of each {factor}×{factor} block of the fine grid (as the "
        "regression's training target) and interpolated back like the regression: where its "
        "change differs from the regression's, the diffusion stage changed the large scales "
        "it was conditioned on; where it agrees and the fine field's does not, the "
        "difference is made at the small scales."
    )
    rep.add_table(
        [
            "product",
            "hist. mean (mm/day)",
            "RCP8.5 mean (mm/day)",
            "relative change",
            *[f"change of q{q:g}" for q in CHANGE_Q],
        ],
        rows_c,
    )
    rep.add_table(
        ["product", "pattern corr. of change map with the ESM's"],
        [[k, v] for k, v in corr.items()],
    )
    if rows_u:
        r_half = float(np.nanmean(split_r))
        rep.add_text(
            f"**How well {sh.size + sf.size} winter days measure a change.** Winter-block "
            f"bootstrap ({config.bootstrap} draws): each draw resamples whole winters with "
            "replacement in each period (days of one winter are not independent) and every "
            "product is resampled with the same winters, so 'minus the ESM's' and the draws "
            "with the ESM's sign compare each product with CNRM-CM5's own change on the same "
            "days. Ranges are 5-95 %. The ESM's own change map is one realisation of its "
            "internal variability: the maps of two random halves of the winters correlate "
            f"at {r_half:.2f} on average ({split_r.size} splits), a full-length reliability "
            f"of {2 * r_half / (1 + r_half):.2f} (Spearman-Brown). A product driven by the "
            "same days shares part of that weather noise, so this is no strict bound on its "
            "pattern correlation."
        )
        rep.add_table(UNCERTAINTY_COLUMNS, rows_u)
        rep.add_text(
            "Where along the chain the change is made: the same draws, each step's product "
            "minus the product before it (paired, 5-95 %; a range that excludes 0 is a "
            "change the step makes, not sampling noise)."
        )
        rep.add_table(
            ["step", "relative change of the mean", "change of q0.9", "change of q0.99"],
            rows_chain,
        )
    rep.add_figure(fig_c, out, "Relative change per quantile (%)")
    rep.add_figure(fig_cm, out, "Relative change maps (%)")
    rep.add_text(
        "QDM of the predictors: validation-winter mean bias (ESM - NCEP) before, mean absolute "
        "bias against NCEP before and after correction (out of sample), and the ESM's change "
        "per quantile (q0.1, q0.5, q0.9; relative for multiplicative, absolute for additive "
        "variables) before and after correction. QDM maps each variable on its own; the rows "
        "below the variables are the network features computed from them (what the networks "
        "read; absolute change). 'change-map corr.' correlates the map of the change of the "
        "time mean after QDM with the raw one."
    )
    rep.add_table(
        [
            "variable",
            "units",
            "kind",
            "mean bias raw",
            "MAB raw",
            "MAB QDM",
            "Δq0.1 raw",
            "Δq0.5 raw",
            "Δq0.9 raw",
            "Δq0.1 QDM",
            "Δq0.5 QDM",
            "Δq0.9 QDM",
            "change-map corr.",
        ],
        rows_q,
        digits=4,
    )
    rep.add_text(
        "Files: `metrics.json` (headline numbers, all (a) scores, targets), "
        "`a_reanalysis_metrics.nc`, `b_c_esm_metrics.nc` (maps and curves), "
        "`qdm_tables.safetensors` (the predictor QDM tables)."
    )
    rep.write(out / "README.md", command)
    say(f"done in {headline['runtime_s']:.0f} s: {out / 'README.md'}")
    return headline
