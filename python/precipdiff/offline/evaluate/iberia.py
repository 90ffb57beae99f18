"""The paper's experiment on the real Iberia data, with the demo bundle.

One call of :func:`run_iberia` (``precipdiff evaluate iberia``) produces every
number, table and figure of ``docs/results/iberia``:

(a) **Reanalysis-driven** (NCEP/NCAR Reanalysis 1 predictors, the validation
    winters held out of training) against E-OBS on the fine grid: MAE, CRPS of
    the generated ensemble versus the bilinearly upsampled regression (a
    deterministic product, whose CRPS is its MAE), spread-skill, rank
    histogram, high quantiles, wet-day frequency, spectra, water-mass check.
(b) **ESM-driven** (CNRM-CM5 historical predictors, QDM off and on) against the
    E-OBS climatology of the same winters: mean absolute bias of the time mean
    next to the ESM's own precipitation -- the paper's "0.424 -> 0.091 mm/day"
    row for this data set.
(c) **RCP8.5**: the change signal of generated precipitation (QDM fitted on the
    historical period and applied, trend-preserving, to 2080-2100) against the
    ESM's own change.

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from precipdiff.errors import ConfigError, InputError
from precipdiff.offline import metrics
from precipdiff.offline.evaluate import plots
from precipdiff.offline.evaluate.report import (
    TABLE_COLUMNS,
    Report,
    day_keys,
    evaluate_ensemble,
    figures_for,
    write_metrics_netcdf,
)

__all__ = ["IberiaConfig", "run_iberia"]

DATA_SUBDIR = "climate4r_iberia"
CHANGE_Q = (0.5, 0.75, 0.9, 0.95, 0.99)


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
        means are compared with E-OBS and ESM means over all days. ``None`` for
        all (about 5x slower on a CPU).
    device
        ``"auto"``, ``"cpu"`` or ``"cuda"``.
    """

    bundle: Path
    out: Path
    data_dir: Path | None = None
    members: int = 8
    esm_members: int = 1
    steps: int | None = None
    validation_start: str = "1994-12-01"
    n_quantiles: int = 50
    seed: int = 0
    max_days: int | None = None
    esm_max_days: int | None = 400
    device: str = "auto"

    def __post_init__(self) -> None:
        self.bundle = Path(self.bundle)
        self.out = Path(self.out)
        if self.members < 2:
            raise ConfigError(f"members must be >= 2 for CRPS/spread, got {self.members}")
        if self.esm_members < 1:
            raise ConfigError(f"esm_members must be >= 1, got {self.esm_members}")
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


def _subsample(n: int, max_days: int | None) -> NDArray[np.int64]:
    if max_days is None or n <= max_days:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max_days).round().astype(np.int64))


def _land_mean(x: NDArray[Any]) -> float:
    """Unweighted mean over cells of the time (and member) mean, ignoring NaN cells."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        tm = np.nanmean(x.reshape(-1, *x.shape[-2:]), axis=0)
    return float(metrics.spatial_mean(tm))


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
    ny_c, _nx_c = cgrid.shape
    factor = fgrid.shape[0] // ny_c
    say(f"bundle {config.bundle}: predictors {names}, coarse {cgrid.shape}, fine {fgrid.shape}")

    # ---------------------------------------------------------------- data
    ncep, t_ncep = _load(_files(root, "NCEP", names), specs, cgrid)
    esm_h, t_esm_h = _load(_files(root, "CMIP5", names), specs, cgrid)
    esm_f, t_esm_f = _load(_files(root, "CMIP5", names, ".rcp85"), specs, cgrid)
    eobs_all, t_eobs = _load([root / "EOBS_Iberia_pr.nc"], ["pr"], fgrid)
    esm_pr_h, _t_prh = _load(_files(root, "CMIP5", ["pr"]), ["pr"], fgrid)
    esm_pr_f, _t_prf = _load(_files(root, "CMIP5", ["pr"], ".rcp85"), ["pr"], fgrid)
    obs_full = eobs_all["pr"]
    land = np.isfinite(obs_full).any(axis=0)
    say(f"data read: NCEP {len(t_ncep)} days, CNRM-CM5 {len(t_esm_h)} + {len(t_esm_f)} days")

    def gen_fine(pred: Mapping[str, NDArray[Any]], members: int, seed: int) -> Any:
        return gen.generate(dict(pred), members=members, seed=seed, steps=config.steps)

    up = Regridder(cgrid, fgrid, "bilinear")

    # ------------------------------------------------- (a) reanalysis-driven
    d_ncep, d_obs = day_keys(t_ncep), day_keys(t_eobs)
    common, i_n, i_o = np.intersect1d(d_ncep, d_obs, return_indices=True)
    val = common >= day_keys(np.array([np.datetime64(config.validation_start)]))[0]
    if not val.any():
        raise InputError(f"no NCEP/E-OBS days on or after {config.validation_start}")
    sel = _subsample(int(val.sum()), config.max_days)
    vi_n, vi_o = i_n[val][sel], i_o[val][sel]
    say(f"(a) generating {config.members} members for {vi_n.size} validation days")
    ra = gen_fine({k: v[vi_n] for k, v in ncep.items()}, config.members, config.seed)
    obs_a = obs_full[vi_o]
    reg_up = up(ra.coarse)
    ev = evaluate_ensemble(
        ra.fine,
        obs_a,
        flat,
        flon,
        baselines={"regression (bilinear)": reg_up},
        coarse=ra.coarse,
        factor=factor,
        label="generated",
    )
    fig_a = figures_for(
        ev,
        obs_a,
        {"generated (member 0)": ra.fine[:, 0], "regression (bilinear)": reg_up},
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

    # ------------------------------------------------- (b) ESM-driven, QDM
    qcfg = QDMConfig(n_quantiles=config.n_quantiles, group="month")
    units = {str(v["name"]): str(v["units"]) for v in specs}
    tables = fit_qdm(
        {k: ncep[k] for k in names},
        {k: esm_h[k] for k in names},
        t_ncep,
        t_esm_h,
        qcfg,
        units=units,
    )
    tables.save(out / "qdm_tables.safetensors")
    esm_h_qdm = {k: apply_qdm(tables, k, esm_h[k], t_esm_h) for k in names}
    esm_f_qdm = {k: apply_qdm(tables, k, esm_f[k], t_esm_f) for k in names}
    sh = _subsample(len(t_esm_h), config.esm_max_days)
    sf = _subsample(len(t_esm_f), config.esm_max_days)
    sn = _subsample(len(t_ncep), config.esm_max_days)
    m = config.esm_members
    say(f"(b) generating ESM-driven runs ({sh.size} historical days, QDM off and on)")
    g_off = gen_fine({k: v[sh] for k, v in esm_h.items()}, m, config.seed + 1)
    g_on = gen_fine({k: v[sh] for k, v in esm_h_qdm.items()}, m, config.seed + 2)
    say(f"(b) generating the NCEP-driven run ({sn.size} days)")
    g_ncep = gen_fine({k: v[sn] for k, v in ncep.items()}, m, config.seed + 3)
    obs_clim = obs_full
    mask_l = np.where(land, 1.0, np.nan)
    products_b: dict[str, NDArray[Any]] = {
        "CNRM-CM5 own precipitation (bilinear to 0.5°)": esm_pr_h["pr"][sh] * mask_l,
        "generated from CNRM-CM5, QDM off": g_off.fine * mask_l,
        "generated from CNRM-CM5, QDM on": g_on.fine * mask_l,
        "regression only from CNRM-CM5, QDM on (bilinear)": up(g_on.coarse) * mask_l,
        "generated from NCEP (reanalysis-driven)": g_ncep.fine * mask_l,
    }
    rows_b: list[list[Any]] = []
    maps_b: dict[str, NDArray[Any]] = {}
    mab_b: dict[str, float] = {}
    for k, p in products_b.items():
        mab = metrics.mean_absolute_bias(p, obs_clim)
        maps_b[k] = metrics.time_mean_bias(p, obs_clim)
        mab_b[k] = mab
        rows_b.append(
            [
                k,
                mab,
                metrics.mean_absolute_bias(p, obs_clim, flat),
                metrics.mean_bias(p, obs_clim),
                float(np.nanmean(metrics.wet_day_frequency(p))),
                float(metrics.quantiles(p, (0.99,))[0]),
            ]
        )
    # Sampling-noise floor: a time mean over as many days as the generated runs
    # differs from the all-day climatology even for the observations themselves.
    obs_sub = obs_full[sh] if obs_full.shape[0] == len(t_esm_h) else obs_full[sn]
    rows_b.append(
        [
            f"E-OBS itself on {obs_sub.shape[0]} days (sampling-noise floor)",
            metrics.mean_absolute_bias(obs_sub, obs_clim),
            metrics.mean_absolute_bias(obs_sub, obs_clim, flat),
            metrics.mean_bias(obs_sub, obs_clim),
            float(np.nanmean(metrics.wet_day_frequency(obs_sub))),
            float(metrics.quantiles(obs_sub, (0.99,))[0]),
        ]
    )
    rows_b.append(
        [
            "E-OBS (reference, all days)",
            0.0,
            0.0,
            0.0,
            float(np.nanmean(metrics.wet_day_frequency(obs_clim))),
            float(metrics.quantiles(obs_clim, (0.99,))[0]),
        ]
    )
    short = {k: k.split(" (")[0].replace("generated from CNRM-CM5, ", "gen. ") for k in maps_b}
    fig_b = plots.plot_bias_maps(
        {short[k]: v for k, v in maps_b.items()},
        flat,
        flon,
        out / "b_esm_bias_maps.png",
        title="Bias of the DJF time mean against E-OBS (mm/day)",
        scores={short[k]: v for k, v in mab_b.items()},
    )
    qq_b = plots.plot_qq(
        obs_clim,
        {short[k]: v for k, v in products_b.items() if "regression" not in k},
        out / "b_esm_qq.png",
        title="QQ against E-OBS, historical winters",
    )

    # ------------------------------------------------- (c) RCP8.5 change signal
    say(f"(c) generating RCP8.5 runs ({sf.size} days, QDM on and off)")
    gf_on = gen_fine({k: v[sf] for k, v in esm_f_qdm.items()}, m, config.seed + 4)
    gf_off = gen_fine({k: v[sf] for k, v in esm_f.items()}, m, config.seed + 5)
    pairs = {
        "CNRM-CM5 own precipitation": (esm_pr_h["pr"][sh] * mask_l, esm_pr_f["pr"][sf] * mask_l),
        "generated, QDM on": (g_on.fine * mask_l, gf_on.fine * mask_l),
        "generated, QDM off": (g_off.fine * mask_l, gf_off.fine * mask_l),
    }
    rows_c: list[list[Any]] = []
    change_maps: dict[str, NDArray[Any]] = {}
    qsig: dict[str, NDArray[Any]] = {}
    for k, (h, f) in pairs.items():
        mh, mf = _land_mean(h), _land_mean(f)
        rel = float(mf / mh - 1.0)
        change_maps[k] = metrics.change_signal(h, f)
        qsig[k] = metrics.change_signal(h, f, q=CHANGE_Q)
        rows_c.append([k, float(mh), float(mf), rel, *[float(x) for x in qsig[k]]])
    ref_map = change_maps["CNRM-CM5 own precipitation"]
    corr = {}
    for k, cm in change_maps.items():
        ok = np.isfinite(cm) & np.isfinite(ref_map)
        corr[k] = float(np.corrcoef(cm[ok], ref_map[ok])[0, 1]) if ok.sum() > 2 else float("nan")
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
    # QDM keeps the ESM's predictor change per quantile
    rows_q = []
    for k in names:
        kind = tables.variables[k].kind
        ck = "relative" if kind == "multiplicative" else "absolute"
        raw = metrics.change_signal(esm_h[k], esm_f[k], q=(0.1, 0.5, 0.9), kind=ck)
        cor = metrics.change_signal(esm_h_qdm[k], esm_f_qdm[k], q=(0.1, 0.5, 0.9), kind=ck)
        hist_mab = metrics.mean_absolute_bias(esm_h[k], ncep[k])
        qdm_mab = metrics.mean_absolute_bias(esm_h_qdm[k], ncep[k])
        hist_mb = metrics.mean_bias(esm_h[k], ncep[k])
        rows_q.append([k, units[k], kind, hist_mb, hist_mab, qdm_mab, *raw, *cor])

    # ------------------------------------------------------------ outputs
    headline: dict[str, float] = {
        "a_mae_generated_ensemble_mean": ev.scalars["mae_generated"],
        "a_crps_generated": ev.scalars["crps_generated"],
        "a_crps_regression_bilinear": ev.scalars["crps_regression (bilinear)"],
        "a_spread_skill_ratio": ev.scalars.get("spread_skill_ratio_generated", float("nan")),
        "b_mab_esm_own": mab_b["CNRM-CM5 own precipitation (bilinear to 0.5°)"],
        "b_mab_generated_qdm_off": mab_b["generated from CNRM-CM5, QDM off"],
        "b_mab_generated_qdm_on": mab_b["generated from CNRM-CM5, QDM on"],
        "b_mab_generated_ncep": mab_b["generated from NCEP (reanalysis-driven)"],
        "b_mab_eobs_sampling_noise_floor": float(rows_b[-2][1]),
        "c_rel_change_esm_own": rows_c[0][3],
        "c_rel_change_generated_qdm_on": rows_c[1][3],
        "c_rel_change_generated_qdm_off": rows_c[2][3],
        "c_change_pattern_corr_qdm_on": corr["generated, QDM on"],
        "water_mass_relative_total_error": ev.scalars.get(
            "water_mass_relative_total_error", float("nan")
        ),
        "runtime_s": time.perf_counter() - t_start,
    }
    bundle_sha = _sha256(config.bundle / "manifest.json")
    # Products along labelled dimensions (CF label variables), not numbered names.
    write_metrics_netcdf(
        out / "b_c_esm_metrics.nc",
        {k: v for k, v in headline.items() if k.startswith("c_")},
        {
            "b_mab": (("b_product",), np.array([float(r[1]) for r in rows_b[:-2]])),
            "b_bias_map": (("b_product", "lat", "lon"), np.stack(list(maps_b.values()))),
            "c_change_map": (("c_product", "lat", "lon"), np.stack(list(change_maps.values()))),
            "c_change_q": (("c_product", "q"), np.stack(list(qsig.values()))),
        },
        {
            "lat": flat,
            "lon": flon,
            "q": np.asarray(CHANGE_Q),
            "b_product": np.array([str(r[0]) for r in rows_b[:-2]], dtype=object),
            "c_product": np.array(list(change_maps), dtype=object),
        },
        long_names={
            "b_mab": "mean absolute bias of the DJF time mean against E-OBS",
            "b_bias_map": "bias of the DJF time mean against E-OBS",
            "c_change_map": "relative change of the DJF mean, RCP8.5 vs historical",
            "c_change_q": "relative change per quantile, RCP8.5 vs historical",
        },
        title="precipdiff evaluate iberia: ESM-driven (b) and RCP8.5 change (c) metrics",
    )
    (out / "metrics.json").write_text(
        json.dumps(
            {"bundle_manifest_sha256": bundle_sha, "headline": headline, "a": ev.scalars},
            indent=1,
            default=float,
        )
        + "\n"
    )

    rep = Report("Iberia experiment: the paper's evaluation on real data")
    prov = man.provenance
    rep.add_text(
        f"Bundle `{config.bundle}` ({prov.get('name', '')} {prov.get('description', '')}); "
        f"predictors {', '.join(names)}; coarse grid {cgrid.shape[0]}×{cgrid.shape[1]}, fine "
        f"grid {fgrid.shape[0]}×{fgrid.shape[1]} (factor {factor}). Sampler steps: "
        f"{config.steps or man.sampler_config().steps}. Bundle manifest sha256 "
        f"`{_sha256(config.bundle / 'manifest.json')[:16]}…`. "
        + (f"**Quick run: {config.max_days} validation days only.** " if config.max_days else "")
        + f"Wall time {headline['runtime_s']:.0f} s on this machine."
    )
    rep.add_text(
        "Data (real, see `../shared/data/README.md`): NCEP/NCAR Reanalysis 1 predictors "
        "(Kalnay et al. 1996), E-OBS v14 precipitation (Haylock et al. 2008; ECA&D, "
        "non-commercial research use), CNRM-CM5 r1i1p1 historical and RCP8.5 (CMIP5), via "
        "SantanderMetGroup/climate4R.datasets (LGPL-3). Winters (DJF) only. Predictors are "
        "bilinearly regridded onto the bundle's coarse grid; QDM is fitted on that grid per "
        "cell and calendar month (NCEP 1982-12..1997-02 as reference, CNRM-CM5 historical over "
        "the same winters); the ESM's own precipitation is bilinearly interpolated onto the fine "
        "grid; E-OBS sea cells are excluded. 'Mean absolute bias' (MAB) is the unweighted mean "
        "over land cells of |time-mean bias|, as in the paper; the area-weighted value is given "
        "beside it."
    )
    rep.add_heading("(a) Reanalysis-driven, held-out winters, against E-OBS")
    rep.add_text(
        f"{vi_n.size} validation days from {config.validation_start}, {config.members} members. "
        "The regression baseline is the regression's coarse field interpolated bilinearly to "
        "the fine grid (deterministic: its CRPS equals its MAE). The MAE row of 'generated' is "
        "that of the ensemble mean."
    )
    rep.add_table(TABLE_COLUMNS, ev.rows)
    extra = [
        ["CRPS, fair estimator", ev.scalars.get("crps_fair_generated", float("nan"))],
        ["spread-skill ratio (1 = calibrated)", headline["a_spread_skill_ratio"]],
        ["p99 of member 0 (mm/day)", ev.scalars["p99_generated_member0"]],
        ["wet-day frequency of member 0", ev.scalars["wet_day_frequency_generated_member0"]],
        [
            "water mass: fine total / coarse total - 1",
            ev.scalars.get("water_mass_relative_total_error", float("nan")),
        ],
        [
            "water mass: block-mean MAE / coarse mean",
            ev.scalars.get("water_mass_block_relative_mae", float("nan")),
        ],
    ]
    rep.add_table(["quantity", "value"], extra)
    captions = {
        "bias": "Bias of the validation-period mean against E-OBS",
        "spectra": "Radially averaged power spectra (cycles per degree)",
        "qq": "Quantile-quantile plot against E-OBS",
        "spread_skill": "Binned spread against RMSE of the ensemble mean",
        "rank_histogram": "Rank histogram of E-OBS among the members",
    }
    for k, fpath in fig_a.items():
        rep.add_figure(fpath, out, captions[k])
    rep.add_heading("(b) ESM-driven (CNRM-CM5 historical), climatology against E-OBS")
    rep.add_text(
        f"Generated products: {sh.size} of the {len(t_esm_h)} historical winter days (evenly "
        f"spaced), {m} member(s), and the ESM's own precipitation on the same days; E-OBS: "
        "all days. The time "
        "mean of each product is compared with the E-OBS mean of the same winters (a model's "
        "free-running weather is not comparable day by day). This is the paper's headline row "
        "(GFDL-ESM4 vs ERA5: 0.424 -> 0.091 mm/day) for this data set; QDM is fitted and "
        "applied on the same historical period."
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
    rep.add_figure(fig_b, out, "Bias of the historical DJF mean against E-OBS")
    rep.add_figure(qq_b, out, "QQ plot of the historical products against E-OBS")
    rep.add_heading("(c) RCP8.5: change signal of generated vs the ESM's own precipitation")
    rep.add_text(
        f"{sf.size} of {len(t_esm_f)} RCP8.5 winter days (2080-12..2100-02, evenly spaced) "
        "against the historical runs above (the ESM's own precipitation on the same days). QDM "
        "tables from the historical fit are applied to the RCP8.5 predictors with the projection "
        "period's own CDF (trend-preserving). Relative changes of the land-mean DJF mean and of "
        "pooled quantiles; 'pattern corr.' is the spatial correlation of the change map with "
        "the ESM's own change map; n/a where the historical quantile is 0 (dry)."
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
    rep.add_figure(fig_c, out, "Relative change per quantile")
    rep.add_figure(fig_cm, out, "Relative change maps (%)")
    rep.add_text(
        "QDM of the predictors: historical mean bias (ESM - NCEP) before, and mean absolute "
        "bias against NCEP before and after correction (in-sample), and the ESM's change per "
        "quantile (q0.1, q0.5, q0.9; relative for multiplicative, absolute for additive "
        "variables) before and after correction."
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
        ],
        rows_q,
        digits=4,
    )
    rep.add_text(
        "Files: `metrics.json` (headline numbers and all (a) scores), "
        "`a_reanalysis_metrics.nc`, `b_c_esm_metrics.nc` (maps and curves), "
        "`qdm_tables.safetensors` (the fitted tables)."
    )
    rep.write(out / "README.md", command)
    say(f"done in {headline['runtime_s']:.0f} s: {out / 'README.md'}")
    return headline
