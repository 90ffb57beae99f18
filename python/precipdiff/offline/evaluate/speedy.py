"""The SPEEDY experiments: a perfect-model world and the coupled-stability answer.

One call of :func:`run_speedy` (``precipdiff evaluate speedy``) reads the daily output
of the SPEEDY runs made by ``scripts/speedy/run_experiment.py`` (``out/speedy/<run>/
speedy_YYYY.nc``) and writes every number, table and figure of ``docs/results/speedy``
(SPEEDY: Molteni 2003, Kucharski et al. 2006, 2013). Parts:

``heldout``
    The bundle against the held-out SPEEDY years of the control run (SPEEDY's own
    predictors and precipitation; the truth is known): CRPS, spread-skill, p99, wet-day
    frequency, spectra, against SPEEDY's own coarse field (its 4x4 block mean)
    interpolated back to the fine grid, and the upsampled regression.
``biased``
    "A biased ESM": SPEEDY with an SST error pattern, run through QDM fitted against the
    control: mean absolute bias (MAB) of the time mean against the control truth of the
    generated climatology, of the biased model's own precipitation and of a per-cell QDM
    of that precipitation, fitted on the evaluated years (in sample) and by
    leave-one-year-out cross-fitting (out of sample, :func:`cell_qdm_out_of_sample`).
``warming``
    SST + 2 K and + 4 K: change of global and zonal-mean precipitation, generated
    (from the warmer runs' predictors) against SPEEDY's own.
``coupled``
    The ``interactive`` and ``diagnostic`` runs (``coupled_years``: 10 in the standard
    runs, one or more) next to the control over the same years: NaN, daily water
    closure, drift of global-mean precipitation, column water and surface temperature
    against the interannual spread of every control year, zonal means, maps, spectra,
    wall time per simulated day and precipdiff's share.

Predictors are taken from the run files (fine grid = SPEEDY's 96x48 grid) and
conservatively remapped onto the bundle's coarse grid, as the plugin does inside the
model. Time means are compared as climatologies (free-running weather is not comparable
day by day).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from numpy.typing import NDArray

from precipdiff.errors import ConfigError, InputError
from precipdiff.offline import metrics
from precipdiff.offline.evaluate import plots
from precipdiff.offline.evaluate.report import (
    TABLE_COLUMNS,
    Report,
    evaluate_ensemble,
    evenly_spaced,
    figures_for,
    write_metrics_netcdf,
)

if TYPE_CHECKING:
    from precipdiff.qdm import QDMConfig

__all__ = [
    "PARTS",
    "SpeedyConfig",
    "annual_means",
    "cell_qdm_out_of_sample",
    "read_run",
    "read_series",
    "run_speedy",
]

PARTS = ("heldout", "biased", "warming", "coupled")
CITATION = (
    "SPEEDY (speedy.f90, T30; Molteni 2003, Kucharski et al. 2006, 2013; MIT licence, "
    "Copyright (c) 2020 Fred Kucharski, Franco Molteni, Sam Hatfield)"
)
Array = NDArray[np.float64]


@dataclass
class SpeedyConfig:
    """Settings of the SPEEDY evaluation.

    Parameters
    ----------
    runs
        Directory of the runs (``out/speedy``: ``control/``, ``biased/``, ...).
    bundle
        The perfect-model bundle (``models/speedy-t30``).
    out
        Output directory (``docs/results/speedy``).
    parts
        Which parts to run (subset of :data:`PARTS`).
    members
        Ensemble size of the held-out evaluation.
    heldout_years
        First and last held-out year of the control run.
    analysis_years
        Years compared in the biased and warming experiments (the first year of those
        runs is left out: the atmosphere adjusts to the changed SST).
    coupled_years
        Years of the coupled runs and of the control they are compared with.
    max_days
        Held-out days used (evenly spaced); ``None``: all.
    esm_max_days
        Days generated per product in ``biased`` and ``warming`` (evenly spaced;
        climatologies of SPEEDY itself always use every day); ``None``: all.
    steps
        Sampler steps (``None``: the bundle's default).
    n_quantiles
        Quantile nodes of the QDM fits.
    seed
        Base seed of the generation.
    device
        ``"auto"``, ``"cpu"`` or ``"cuda"``.
    """

    runs: Path = Path("out/speedy")
    bundle: Path = Path("models/speedy-t30")
    out: Path = Path("docs/results/speedy")
    parts: Sequence[str] = PARTS
    members: int = 8
    heldout_years: tuple[int, int] = (1991, 1992)
    analysis_years: tuple[int, int] = (1982, 1986)
    coupled_years: tuple[int, int] = (1981, 1990)
    max_days: int | None = None
    esm_max_days: int | None = None
    steps: int | None = None
    n_quantiles: int = 50
    seed: int = 0
    device: str = "auto"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.runs = Path(self.runs)
        self.bundle = Path(self.bundle)
        self.out = Path(self.out)
        unknown = sorted(set(self.parts) - set(PARTS))
        if unknown:
            raise ConfigError(f"unknown part(s) {unknown}; known: {', '.join(PARTS)}")
        if self.members < 2:
            raise ConfigError(f"members must be >= 2 for CRPS and spread, got {self.members}")
        for key in ("heldout_years", "analysis_years", "coupled_years"):
            a, b = getattr(self, key)
            if b < a:
                raise ConfigError(f"{key} = {(a, b)} is empty")
        for key in ("max_days", "esm_max_days"):
            v = getattr(self, key)
            if v is not None and v < 10:
                raise ConfigError(f"{key} must be >= 10, got {v}")


# ----------------------------------------------------------------------------- reading


def run_files(run_dir: Path, years: tuple[int, int]) -> list[Path]:
    """List the yearly files ``speedy_YYYY.nc`` of a run for ``years`` (all must exist).

    Parameters
    ----------
    run_dir
        Directory of the run.
    years
        First and last year.

    Returns
    -------
    list of pathlib.Path
        The files in time order.
    """
    files = [run_dir / f"speedy_{y}.nc" for y in range(years[0], years[1] + 1)]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise InputError(
            f"missing SPEEDY output {', '.join(missing)}: run scripts/speedy/run_experiment.py "
            f"{run_dir.name} first"
        )
    return files


def read_run(
    run_dir: Path, years: tuple[int, int], names: Sequence[str]
) -> tuple[dict[str, Array], NDArray[Any], NDArray[np.float64], NDArray[np.float64]]:
    """Daily maps of a run in canonical units (precipitation in mm/day).

    Parameters
    ----------
    run_dir
        Directory of the run.
    years
        First and last year.
    names
        Canonical names (``hus850``, ``psl``, ``pr``, ...; other file variables such as
        ``pr_precipdiff`` are read as they are, precipitation fluxes converted to mm/day).

    Returns
    -------
    fields, times, lat, lon
        ``{name: (time, lat, lon) float64}``, ``datetime64`` times (day middles),
        latitudes (ascending) and longitudes.
    """
    from precipdiff.io import import_netcdf4
    from precipdiff.io.readers import open_predictors

    files = run_files(run_dir, years)
    canonical = [n for n in names if _is_canonical(n)]
    other = [n for n in names if not _is_canonical(n)]
    out: dict[str, Array] = {}
    ds = open_predictors([str(f) for f in files], canonical or ["pr"])
    try:
        times = np.asarray(ds["time"].values)
        lat = np.asarray(ds["lat"].values, dtype=np.float64)
        lon = np.asarray(ds["lon"].values, dtype=np.float64)
        for n in canonical:
            out[n] = np.asarray(ds[n].values, dtype=np.float64)
    finally:
        ds.close()
    if other:
        nc4 = import_netcdf4()
        parts: dict[str, list[Array]] = {n: [] for n in other}
        for f in files:
            with nc4.Dataset(f) as d:
                d.set_auto_mask(False)
                for n in other:
                    if n not in d.variables:
                        raise InputError(f"{f} has no variable {n!r}")
                    v = d.variables[n]
                    a = np.asarray(v[:], dtype=np.float64)
                    if getattr(v, "units", "") == "kg m-2 s-1":
                        a = a * 86400.0
                    parts[n].append(a)
        for n in other:
            out[n] = np.concatenate(parts[n])
    return out, times, lat, lon


def _is_canonical(name: str) -> bool:
    from precipdiff.variables import get_variable

    try:
        get_variable(name)
    except Exception:
        return False
    return True


def read_series(run_dir: Path, years: tuple[int, int], names: Sequence[str]) -> dict[str, Array]:
    """Daily global series (``global_pr``, ``wall_s``, ...) of a run, concatenated.

    Parameters
    ----------
    run_dir
        Directory of the run.
    years
        First and last year.
    names
        Series variables.

    Returns
    -------
    dict
        ``{name: (time,) float64}`` plus ``"year"`` (the year of each day).
    """
    from precipdiff.io import import_netcdf4

    nc4 = import_netcdf4()
    files = run_files(run_dir, years)
    out: dict[str, list[Array]] = {n: [] for n in [*names, "year"]}
    for year, f in zip(range(years[0], years[1] + 1), files, strict=True):
        with nc4.Dataset(f) as d:
            d.set_auto_mask(False)
            nt = d.dimensions["time"].size
            for n in names:
                if n not in d.variables:
                    raise InputError(f"{f} has no series {n!r}")
                out[n].append(np.asarray(d.variables[n][:], dtype=np.float64))
            out["year"].append(np.full(nt, float(year)))
    return {k: np.concatenate(v) for k, v in out.items()}


def annual_means(x: Array, year: Array) -> tuple[Array, Array]:
    """Mean of a daily series per year.

    Parameters
    ----------
    x
        Daily values.
    year
        The year of each value.

    Returns
    -------
    years, means
        Sorted years and the mean of each.
    """
    ys = np.unique(year)
    return ys, np.array([float(np.mean(x[year == y])) for y in ys])


def cell_qdm_out_of_sample(
    ref: Array,
    hist: Array,
    ref_times: Any,
    hist_times: Any,
    config: QDMConfig,
    *,
    name: str = "pr",
    units: str = "mm/day",
    projection: Literal["self", "static"] = "static",
) -> tuple[Array, list[int]]:
    """Per-cell QDM of ``hist`` onto ``ref``, fitted out of sample (leave one year out).

    For each year of ``hist`` the tables are fitted
    (:func:`~precipdiff.offline.qdm_fit.fit_qdm`) on the *other* years of both ``ref``
    and ``hist`` and applied (:func:`~precipdiff.offline.qdm_fit.apply_qdm`) to that
    year of ``hist``; the corrected years are put back in ``hist``'s order. Fitted and
    applied to the same years instead, QDM reproduces the reference's distribution per
    cell and group by construction, which flatters it.

    The default application is quantile mapping through the fitted tables
    (``projection="static"``: ``tau = F_hist(x)``): the runs are stationary, and the
    trend-preserving ``"self"`` would re-estimate each cell's CDF from the single
    held-out year (about 30 days per cell and month) and preserve its sampling noise as
    if it were a climate change -- on SPEEDY's biased run that adds a global wet bias
    of +0.41 mm/day (``docs/speedy.md`` §5.1).

    Parameters
    ----------
    ref
        ``(time, lat, lon)`` reference series (the truth, e.g. the control run).
    hist
        ``(time, lat, lon)`` series to correct (e.g. the biased run), same grid.
    ref_times, hist_times
        Their time coordinates (``datetime64`` or what
        :func:`precipdiff.calendars.time_fields` reads).
    config
        The :class:`precipdiff.qdm.QDMConfig` of the fits.
    name
        Variable name in the tables (its ``kinds`` and ``trace`` in ``config``).
    units
        Units recorded in the tables.
    projection
        :func:`~precipdiff.offline.qdm_fit.apply_qdm`'s ``projection`` for the held-out
        year (``"static"``: quantile mapping, the default; see above).

    Returns
    -------
    corrected, years
        The corrected series (float64, shape of ``hist``) and the years left out in
        turn (those of ``hist``, ascending).

    Raises
    ------
    InputError
        When ``hist`` covers fewer than two years (nothing to fit on when its only year
        is left out) or ``ref`` has no data outside one of ``hist``'s years.
    """
    from precipdiff.calendars import time_fields
    from precipdiff.offline import qdm_fit

    rt = np.asarray(getattr(ref_times, "values", ref_times))
    ht = np.asarray(getattr(hist_times, "values", hist_times))
    ry = time_fields(rt).year
    hy = time_fields(ht).year
    years = [int(y) for y in np.unique(hy)]
    if len(years) < 2:
        raise InputError(
            f"out-of-sample per-cell QDM needs at least two years (each is corrected with "
            f"tables fitted on the others), got only {years}"
        )
    a = np.asarray(hist, dtype=np.float64)
    r = np.asarray(ref, dtype=np.float64)
    out = np.full(a.shape, np.nan)
    for y in years:
        fit_r, fit_h, held = ry != y, hy != y, hy == y
        if not fit_r.any():
            raise InputError(
                f"out-of-sample per-cell QDM: the reference has no data outside {y}, "
                "nothing to fit the correction of that year on"
            )
        tables = qdm_fit.fit_qdm(
            {name: r[fit_r]}, {name: a[fit_h]}, rt[fit_r], ht[fit_h], config, units={name: units}
        )
        out[held] = qdm_fit.apply_qdm(tables, name, a[held], ht[held], projection=projection)
    return out, years


def gaussian_weights(lat: Array, nlon: int) -> Array:
    """Global-mean weights ``(lat, lon)`` of SPEEDY's grid from the row latitudes.

    Uses cos(latitude) normalised to sum 1 (the Gaussian weights differ by < 0.2 %).

    Parameters
    ----------
    lat
        Row latitudes in degrees.
    nlon
        Number of longitudes.

    Returns
    -------
    numpy.ndarray
        Weights summing to 1.
    """
    w = np.cos(np.deg2rad(lat))
    w = np.repeat(w[:, None], nlon, axis=1)
    return w / w.sum()


def _gmean(x: Array, w: Array) -> float:
    """Area-weighted mean over everything (time and cells)."""
    a = np.asarray(x, dtype=np.float64)
    m = a.reshape((-1, *w.shape)).mean(axis=0)
    return float((m * w).sum())


def _zonal(x: Array) -> Array:
    a = np.asarray(x, dtype=np.float64)
    return a.reshape((-1, *a.shape[-2:])).mean(axis=(0, 2))


# --------------------------------------------------------------------------- the parts


class _Context:
    """What the parts share: the generator, grids, regridders, the report."""

    def __init__(self, cfg: SpeedyConfig, say: Callable[[str], None]) -> None:
        from precipdiff.generator import PrecipGenerator

        self.cfg = cfg
        self.say = say
        self.gen = PrecipGenerator.from_bundle(cfg.bundle, device=cfg.device)
        self.man = self.gen.manifest
        self.names = list(self.man.variable_names())
        self.cgrid, self.fgrid = self.gen.coarse_grid, self.gen.fine_grid
        self.factor = self.fgrid.shape[0] // self.cgrid.shape[0]
        self.headline: dict[str, float] = {}
        # (day indices, generated fields) of the control years, shared by biased/warming
        self.generated_control: tuple[NDArray[np.int64], Array] | None = None
        self.report = Report("precipdiff in SPEEDY: perfect-model experiments and coupled runs")
        self._down: Any = None
        self._up: Any = None

    def coarse(self, fields: Mapping[str, Array], lat: Array, lon: Array) -> dict[str, Array]:
        """Conservative remap of fine-grid fields onto the bundle's coarse grid."""
        from precipdiff.grids import LatLonGrid, Regridder

        if self._down is None:
            self._down = Regridder(LatLonGrid(lat=lat, lon=lon), self.cgrid, "conservative")
        return {k: np.asarray(self._down(v), dtype=np.float64) for k, v in fields.items()}

    def upsample(self, coarse: Array) -> Array:
        """Bilinear interpolation of a coarse field to the fine grid."""
        from precipdiff.grids import Regridder

        if self._up is None:
            self._up = Regridder(self.cgrid, self.fgrid, "bilinear")
        return np.asarray(self._up(coarse), dtype=np.float64)

    def generate(self, coarse: Mapping[str, Array], members: int, seed: int) -> Any:
        """Ensemble from coarse-grid predictors."""
        return self.gen.generate(
            {k: coarse[k].astype(np.float32) for k in self.names},
            members=members,
            seed=seed,
            steps=self.cfg.steps,
        )


def explained_by_block_mean(
    x: Array, lat: Array, lon: Array, factor: int, w: Array | None = None
) -> float:
    """Fraction of the variance of daily anomalies kept by a block mean.

    The field is conservatively averaged over ``factor`` x ``factor`` blocks and
    interpolated back bilinearly; returned is 1 - (area-weighted variance of what that
    loses) / (variance of the daily anomalies from the time mean).

    Parameters
    ----------
    x
        ``(time, lat, lon)`` daily fields on a periodic lat-lon grid.
    lat, lon
        Coordinates.
    factor
        Block size.
    w
        Area weights ``(lat, lon)`` (default: cos latitude).

    Returns
    -------
    float
        The explained fraction (1: nothing below the block scale).
    """
    from precipdiff.grids import LatLonGrid, Regridder, coarsen_grid

    fine = LatLonGrid(lat=lat, lon=lon)
    coarse = coarsen_grid(fine, factor)
    down = Regridder(fine, coarse, "conservative")
    up = Regridder(coarse, fine, "bilinear")
    ww = gaussian_weights(lat, lon.size) if w is None else w
    clim = x.mean(axis=0)
    anom = x - clim
    rec = np.asarray(up(down(x)), dtype=np.float64) - clim
    err = float(((anom - rec) ** 2 * ww).sum(axis=(1, 2)).mean())
    tot = float((anom**2 * ww).sum(axis=(1, 2)).mean())
    return 1.0 - err / tot if tot > 0 else float("nan")


def part_heldout(ctx: _Context) -> dict[str, Any]:
    """Score the bundle on the held-out control years (see the module docstring)."""
    cfg, out = ctx.cfg, ctx.cfg.out
    fields, _times, lat, lon = read_run(cfg.runs / "control", cfg.heldout_years, [*ctx.names, "pr"])
    sel = evenly_spaced(fields["pr"].shape[0], cfg.max_days)
    obs = fields["pr"][sel]
    coarse = ctx.coarse({k: fields[k][sel] for k in ctx.names}, lat, lon)
    ctx.say(f"heldout: {sel.size} days x {cfg.members} members")
    res = ctx.generate(coarse, cfg.members, cfg.seed)
    truth_coarse = ctx.coarse({"pr": obs}, lat, lon)["pr"]
    baselines = {
        "SPEEDY's coarse field (bilinear)": ctx.upsample(truth_coarse),
        "regression (bilinear)": ctx.upsample(np.asarray(res.coarse, dtype=np.float64)),
    }
    ev = evaluate_ensemble(
        np.asarray(res.fine, dtype=np.float64),
        obs,
        lat,
        lon,
        baselines=baselines,
        coarse=np.asarray(res.coarse, dtype=np.float64),
        factor=ctx.factor,
        label="generated",
    )
    figs = figures_for(
        ev,
        obs,
        {"generated (member 0)": res.fine[:, 0], **baselines},
        lat,
        lon,
        out,
        prefix="heldout_",
    )
    zonal = {
        "SPEEDY (truth)": metrics.power_spectrum_zonal(obs),
        "generated (member 0)": metrics.power_spectrum_zonal(res.fine[:, 0]),
        **{k: metrics.power_spectrum_zonal(v) for k, v in baselines.items()},
    }
    figs["zonal_spectra"] = plots.plot_spectra(
        {k: (w[1:], p[1:]) for k, (w, p) in zonal.items()},
        out / "heldout_zonal_spectra.png",
        xlabel="zonal wavenumber (cycles per circle)",
        title="Zonal power spectrum of daily precipitation, held-out years",
    )
    write_metrics_netcdf(
        out / "heldout_metrics.nc",
        ev.scalars,
        ev.arrays,
        {"lat": lat, "lon": lon, **ev.coords},
        {"experiment": f"models/speedy-t30 vs SPEEDY control {cfg.heldout_years}"},
    )
    s = ev.scalars
    crps_c = s["crps_SPEEDY's coarse field (bilinear)"]
    head = {
        "heldout_crps_generated": s["crps_generated"],
        "heldout_crps_coarse_truth_bilinear": crps_c,
        "heldout_crps_regression_bilinear": s["crps_regression (bilinear)"],
        "heldout_spread_skill_ratio": s.get("spread_skill_ratio_generated", float("nan")),
        "heldout_p99_generated_member0": s["p99_generated_member0"],
        "heldout_p99_truth": float(metrics.quantiles(obs, (0.99,))[0]),
        "heldout_wet_day_frequency_member0": s["wet_day_frequency_generated_member0"],
        "heldout_wet_day_frequency_truth": float(np.mean(metrics.wet_day_frequency(obs))),
    }
    # Why 4x4 blocks: how much of each field's daily variability a block mean keeps.
    scale_rows: list[list[Any]] = []
    for k in ["pr", *ctx.names]:
        kept = [explained_by_block_mean(fields[k][sel], lat, lon, f) for f in (2, 4)]
        scale_rows.append([k, *kept])
        head[f"heldout_block4_explained_{k}"] = kept[1]
    rep = ctx.report
    rep.add_heading("Held-out years: the bundle against SPEEDY's own precipitation")
    rep.add_text(
        f"Control run, {cfg.heldout_years[0]}-{cfg.heldout_years[1]} (held out of training), "
        f"{sel.size} days, {cfg.members} members. Predictors: SPEEDY's daily means "
        f"({', '.join(ctx.names)}) conservatively remapped onto the {ctx.cgrid.shape[0]}x"
        f"{ctx.cgrid.shape[1]} coarse grid, as the plugin does in the model. Baselines: "
        "SPEEDY's own precipitation block-averaged to the coarse grid and interpolated back "
        "bilinearly (deterministic: its CRPS is its MAE; it knows the true coarse field), "
        "and the regression's coarse field interpolated bilinearly."
    )
    rep.add_text(
        "How much of the daily variability (variance of daily anomalies from the time mean, "
        "area-weighted) survives a block mean interpolated back to SPEEDY's grid: the coarse "
        "grid of 4x4 blocks keeps most of the predictors' large-scale state but little of the "
        "precipitation's, the situation of a coarse ESM against a fine target (2x2 blocks "
        "would keep nearly all of SPEEDY's T30 state):"
    )
    rep.add_table(["field", "2x2 blocks (7.5 deg)", "4x4 blocks (15 deg)"], scale_rows)
    rep.add_table(TABLE_COLUMNS, ev.rows)
    rep.add_table(
        ["quantity", "value"],
        [
            ["CRPS, fair estimator", s.get("crps_fair_generated", float("nan"))],
            ["spread-skill ratio (1 = calibrated)", head["heldout_spread_skill_ratio"]],
            [
                "p99 member 0 / truth (mm/day)",
                f"{head['heldout_p99_generated_member0']:.2f} / {head['heldout_p99_truth']:.2f}",
            ],
            [
                "wet-day frequency member 0 / truth",
                f"{head['heldout_wet_day_frequency_member0']:.3f}"
                f" / {head['heldout_wet_day_frequency_truth']:.3f}",
            ],
            [
                "water mass: fine total / coarse total - 1",
                s.get("water_mass_relative_total_error", float("nan")),
            ],
        ],
    )
    captions = {
        "bias": "Bias of the held-out mean against SPEEDY",
        "spectra": "Radially averaged power spectra (cycles per degree)",
        "qq": "Quantile-quantile plot against SPEEDY",
        "spread_skill": "Binned spread against RMSE of the ensemble mean",
        "rank_histogram": "Rank histogram of SPEEDY among the members",
        "zonal_spectra": "Zonal power spectra (the global grid is periodic)",
    }
    for k, p in figs.items():
        rep.add_figure(p, out, captions.get(k, k))
    ctx.headline.update(head)
    return {"scalars": s, "rows": ev.rows, "figures": figs, "headline": head}


def part_biased(ctx: _Context) -> dict[str, Any]:
    """Run the biased ESM through QDM (see the module docstring)."""
    from precipdiff.offline.qdm_fit import apply_qdm, fit_qdm
    from precipdiff.qdm import QDMConfig

    cfg, out = ctx.cfg, ctx.cfg.out
    yrs = cfg.analysis_years
    ctl, t_ctl, lat, lon = read_run(cfg.runs / "control", yrs, [*ctx.names, "pr"])
    bia, t_bia, _, _ = read_run(cfg.runs / "biased", yrs, [*ctx.names, "pr"])
    w = gaussian_weights(lat, lon.size)
    c_ctl = ctx.coarse({k: ctl[k] for k in ctx.names}, lat, lon)
    c_bia = ctx.coarse({k: bia[k] for k in ctx.names}, lat, lon)
    units = {str(v["name"]): str(v["units"]) for v in ctx.man.variables}
    qcfg = QDMConfig(n_quantiles=cfg.n_quantiles, group="month")
    tables = fit_qdm(c_ctl, c_bia, t_ctl, t_bia, qcfg, units=units)
    # next to the run, not in the report's directory (5.5 MB for 50 quantiles x 12
    # months on the 24 x 12 grid: a derived artefact, not a result page)
    tables_path = cfg.runs / "biased" / f"qdm_tables_{yrs[0]}-{yrs[1]}.safetensors"
    tables.save(tables_path)
    c_bia_q = {k: np.asarray(apply_qdm(tables, k, c_bia[k], t_bia), np.float64) for k in ctx.names}
    pr_cfg = QDMConfig(
        n_quantiles=cfg.n_quantiles,
        group="month",
        kinds={"pr": "multiplicative"},
        trace={"pr": 0.05},
    )
    pr_tab = fit_qdm(
        {"pr": ctl["pr"]}, {"pr": bia["pr"]}, t_ctl, t_bia, pr_cfg, units={"pr": "mm/day"}
    )
    pr_qdm = np.asarray(apply_qdm(pr_tab, "pr", bia["pr"], t_bia), dtype=np.float64)
    # The in-sample fit above memorises the control's distribution per cell and month;
    # the fair baseline corrects each year with tables fitted on the other years.
    pr_qdm_oos: Array | None = None
    oos_note = ""
    try:
        pr_qdm_oos, oos_years = cell_qdm_out_of_sample(
            ctl["pr"], bia["pr"], t_ctl, t_bia, pr_cfg, name="pr", units="mm/day"
        )
        oos_note = (
            f"Out of sample: each of the {len(oos_years)} years {oos_years[0]}-{oos_years[-1]} "
            "is corrected with tables fitted on the other years of both runs "
            "(leave-one-year-out), the corrected years concatenated; in sample: fitted on "
            "all the evaluated years and applied to them, which reproduces the control's "
            "distribution per cell and month by construction and flatters this baseline."
        )
    except InputError as exc:
        ctx.say(f"biased: no out-of-sample per-cell QDM: {exc}")
        oos_note = (
            "The out-of-sample per-cell QDM (leave-one-year-out) is not computed: "
            f"{exc}. The in-sample row is fitted on the evaluated years themselves and "
            "flatters this baseline."
        )
    sb = evenly_spaced(len(t_bia), cfg.esm_max_days)
    sc = evenly_spaced(len(t_ctl), cfg.esm_max_days)
    ctx.say(f"biased: generating {sb.size} days (QDM off, on) and {sc.size} control days")
    g_off = ctx.generate({k: v[sb] for k, v in c_bia.items()}, 1, cfg.seed + 1).fine[:, 0]
    g_on = ctx.generate({k: v[sb] for k, v in c_bia_q.items()}, 1, cfg.seed + 2).fine[:, 0]
    g_ctl = ctx.generate({k: v[sc] for k, v in c_ctl.items()}, 1, cfg.seed + 3).fine[:, 0]
    ctx.generated_control = (sc, np.asarray(g_ctl, np.float64))
    truth = ctl["pr"]
    products: dict[str, Array] = {
        "biased SPEEDY's own precipitation": bia["pr"],
        "per-cell QDM of the biased precipitation, in sample": pr_qdm,
    }
    if pr_qdm_oos is not None:
        products["per-cell QDM of the biased precipitation, out of sample"] = pr_qdm_oos
    products.update(
        {
            "generated from the biased run, QDM off": np.asarray(g_off, np.float64),
            "generated from the biased run, QDM on": np.asarray(g_on, np.float64),
            "generated from the control run (perfect inputs)": np.asarray(g_ctl, np.float64),
        }
    )
    # Sampling noise: other control years against these (natural variability of a
    # 5-year mean) -- a floor no product can beat.
    floor_years = (yrs[1] + 1, yrs[1] + 1 + (yrs[1] - yrs[0]))
    rows: list[list[Any]] = []
    maps: dict[str, Array] = {}
    mab: dict[str, float] = {}
    for k, p in products.items():
        maps[k] = metrics.time_mean_bias(p, truth)
        mab[k] = metrics.mean_absolute_bias(p, truth)
        rows.append(
            [
                k,
                mab[k],
                metrics.mean_absolute_bias(p, truth, lat),
                metrics.mean_bias(p, truth),
                float(np.mean(metrics.wet_day_frequency(p))),
                float(metrics.quantiles(p, (0.99,))[0]),
            ]
        )
    try:
        other, _, _, _ = read_run(cfg.runs / "control", floor_years, ["pr"])
        fl = metrics.mean_absolute_bias(other["pr"], truth)
        rows.append(
            [
                f"control {floor_years[0]}-{floor_years[1]} (natural-variability floor)",
                fl,
                metrics.mean_absolute_bias(other["pr"], truth, lat),
                metrics.mean_bias(other["pr"], truth),
                float(np.mean(metrics.wet_day_frequency(other["pr"]))),
                float(metrics.quantiles(other["pr"], (0.99,))[0]),
            ]
        )
    except InputError:
        fl = float("nan")
    # The generated products are means over sc.size days only: SPEEDY's own
    # precipitation on the same days is what that subsampling alone costs.
    sub_floor = float("nan")
    if sc.size < len(t_ctl):
        sub = truth[sc]
        sub_floor = metrics.mean_absolute_bias(sub, truth)
        rows.append(
            [
                f"control on the generated products' {sc.size} days (sampling floor)",
                sub_floor,
                metrics.mean_absolute_bias(sub, truth, lat),
                metrics.mean_bias(sub, truth),
                float(np.mean(metrics.wet_day_frequency(sub))),
                float(metrics.quantiles(sub, (0.99,))[0]),
            ]
        )
    rows.append(
        [
            "control (truth)",
            0.0,
            0.0,
            0.0,
            float(np.mean(metrics.wet_day_frequency(truth))),
            float(metrics.quantiles(truth, (0.99,))[0]),
        ]
    )
    short = {
        k: k.replace("generated from the ", "gen. ")
        .replace("biased SPEEDY's own precipitation", "biased SPEEDY")
        .replace(" of the biased precipitation", "")
        for k in maps
    }
    fig = plots.plot_bias_maps(
        {short[k]: v for k, v in maps.items()},
        lat,
        lon,
        out / "biased_bias_maps.png",
        title=f"Bias of the {yrs[0]}-{yrs[1]} mean against the control (mm/day)",
        scores={short[k]: v for k, v in mab.items()},
    )
    # What the SST bias did to the predictors, and what QDM left of it.
    prow = []
    for k in ctx.names:
        # three significant digits: humidity biases in kg kg-1 are ~1e-5 (0.0000 at 4 decimals)
        prow.append(
            [
                k,
                units[k],
                f"{metrics.mean_bias(c_bia[k], c_ctl[k]):.3g}",
                f"{metrics.mean_absolute_bias(c_bia[k], c_ctl[k]):.3g}",
                f"{metrics.mean_absolute_bias(c_bia_q[k], c_ctl[k]):.3g}",
            ]
        )
    head = {
        "biased_mab_own": mab["biased SPEEDY's own precipitation"],
        "biased_mab_cell_qdm": mab["per-cell QDM of the biased precipitation, in sample"],
        "biased_mab_cell_qdm_oos": mab.get(
            "per-cell QDM of the biased precipitation, out of sample", float("nan")
        ),
        "biased_mab_generated_qdm_off": mab["generated from the biased run, QDM off"],
        "biased_mab_generated_qdm_on": mab["generated from the biased run, QDM on"],
        "biased_mab_generated_control": mab["generated from the control run (perfect inputs)"],
        "biased_mab_natural_variability_floor": fl,
        "biased_mab_sampling_floor": sub_floor,
        "biased_global_mean_pr_control": _gmean(truth, w),
        "biased_global_mean_pr_biased": _gmean(bia["pr"], w),
    }
    rep = ctx.report
    rep.add_heading("A biased ESM through QDM")
    rep.add_text(
        f"The biased run is SPEEDY with an idealised coupled-model SST error "
        "(`sst_bias = 'esm_like'`: equatorial Pacific cold tongue 2 K too cold and too far "
        "west, Southern Ocean 2 K too warm, south-east Pacific and Atlantic upwelling regions "
        f"1.5 K too warm). Years {yrs[0]}-{yrs[1]} of both runs (the first year, 1981, is "
        "left out: the atmosphere adjusts). QDM is fitted on the coarse grid per cell and "
        "calendar month with the control's predictors as reference and the biased run's as "
        "'historical', and applied to the same years (the paper's historical setting). The "
        "per-cell QDM of precipitation maps the biased run's precipitation onto the "
        f"control's, cell by cell on the fine grid (multiplicative, trace 0.05 mm/day). "
        f"{oos_note} "
        f"Generated products: {sb.size} days of 1 member; SPEEDY climatologies use every "
        "day. MAB: unweighted mean over cells of |bias of the time mean| (the paper's "
        "metric); area-weighted beside it."
    )
    rep.add_table(
        ["product", "MAB (mm/day)", "MAB area-weighted", "mean bias", "wet-day freq.", "p99"],
        rows,
    )
    rep.add_text("The SST bias in the predictors (coarse grid), and after QDM:")
    rep.add_table(["predictor", "units", "mean bias", "MAB", "MAB after QDM"], prow)
    rep.add_text(f"The predictors' QDM tables: `{tables_path}`.")
    rep.add_figure(fig, out, "Bias maps of the time mean against the control")
    ctx.headline.update(head)
    return {"rows": rows, "headline": head}


def part_warming(ctx: _Context) -> dict[str, Any]:
    """Compare the SST + 2 K and + 4 K changes (see the module docstring)."""
    cfg, out = ctx.cfg, ctx.cfg.out
    yrs = cfg.analysis_years
    ctl, t_ctl, lat, lon = read_run(cfg.runs / "control", yrs, [*ctx.names, "pr"])
    w = gaussian_weights(lat, lon.size)
    c_ctl = ctx.coarse({k: ctl[k] for k in ctx.names}, lat, lon)
    cached = ctx.generated_control
    sc = evenly_spaced(len(t_ctl), cfg.esm_max_days)
    if cached is not None and np.array_equal(cached[0], sc):
        g_ctl = np.asarray(cached[1], np.float64)
    else:
        ctx.say(f"warming: generating {sc.size} control days")
        g_ctl = np.asarray(
            ctx.generate({k: v[sc] for k, v in c_ctl.items()}, 1, cfg.seed + 3).fine[:, 0],
            np.float64,
        )
    rows: list[list[Any]] = []
    zonal: dict[str, Array] = {
        "SPEEDY control": _zonal(ctl["pr"]),
        "generated control": _zonal(g_ctl),
    }
    head: dict[str, float] = {}
    p_ctl, p_gctl = _gmean(ctl["pr"], w), _gmean(g_ctl, w)
    for run, dk in (("sst+2k", 2), ("sst+4k", 4)):
        if not (cfg.runs / run).is_dir():
            ctx.say(f"warming: {run} not found, skipped")
            continue
        warm, t_w, _, _ = read_run(cfg.runs / run, yrs, [*ctx.names, "pr"])
        c_w = ctx.coarse({k: warm[k] for k in ctx.names}, lat, lon)
        sw = evenly_spaced(len(t_w), cfg.esm_max_days)
        ctx.say(f"warming: generating {sw.size} days of {run}")
        g_w = np.asarray(
            ctx.generate({k: v[sw] for k, v in c_w.items()}, 1, cfg.seed + 10 + dk).fine[:, 0],
            np.float64,
        )
        p_w, p_gw = _gmean(warm["pr"], w), _gmean(g_w, w)
        own = p_w / p_ctl - 1.0
        gen = p_gw / p_gctl - 1.0
        dq = _gmean(warm["hus850"], w) / _gmean(ctl["hus850"], w) - 1.0
        zc_own = _zonal(warm["pr"]) - zonal["SPEEDY control"]
        zc_gen = _zonal(g_w) - zonal["generated control"]
        corr = float(np.corrcoef(zc_own, zc_gen)[0, 1])
        rows.append([f"+{dk} K", p_ctl, p_w, 100 * own, p_gctl, p_gw, 100 * gen, 100 * dq, corr])
        zonal[f"SPEEDY +{dk} K"] = _zonal(warm["pr"])
        zonal[f"generated +{dk} K"] = _zonal(g_w)
        head.update(
            {
                f"warming_{dk}k_rel_change_speedy_pct": 100 * own,
                f"warming_{dk}k_rel_change_generated_pct": 100 * gen,
                f"warming_{dk}k_zonal_change_corr": corr,
                f"warming_{dk}k_hus850_change_pct": 100 * dq,
            }
        )
    fig = _plot_zonal_changes(zonal, lat, out / "warming_zonal_change.png")
    rep = ctx.report
    rep.add_heading("A warmer climate: SST + 2 K and + 4 K")
    rep.add_text(
        f"SPEEDY with SST raised uniformly over open sea (`sst_offset_k`), years {yrs[0]}-"
        f"{yrs[1]} against the control's. 'Generated' is the bundle applied to the warmer "
        "run's own predictors without QDM (the perfect model has no bias to correct; the "
        "question is whether the learned relation extrapolates to a warmer, moister "
        "atmosphere), against the bundle applied to the control's predictors on the same "
        f"number of days ({sc.size}). Global means area-weighted, mm/day."
    )
    rep.add_table(
        [
            "SST change",
            "SPEEDY control",
            "SPEEDY warm",
            "SPEEDY change %",
            "generated control",
            "generated warm",
            "generated change %",
            "hus850 change %",
            "zonal-mean change correlation",
        ],
        rows,
    )
    rep.add_figure(fig, out, "Zonal-mean precipitation change, SPEEDY's own and generated")
    ctx.headline.update(head)
    return {"rows": rows, "headline": head}


def _plot_zonal_changes(zonal: Mapping[str, Array], lat: Array, path: Path) -> Path:
    plt = plots._pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for k, v in zonal.items():
        axes[0].plot(lat, v, label=k, ls="-" if k.startswith("SPEEDY") else "--")
    axes[0].set_xlabel("latitude")
    axes[0].set_ylabel("zonal-mean precipitation (mm/day)")
    axes[0].legend(fontsize=7)
    for dk in (2, 4):
        if f"SPEEDY +{dk} K" in zonal:
            axes[1].plot(
                lat, zonal[f"SPEEDY +{dk} K"] - zonal["SPEEDY control"], label=f"SPEEDY +{dk} K"
            )
            axes[1].plot(
                lat,
                zonal[f"generated +{dk} K"] - zonal["generated control"],
                ls="--",
                label=f"generated +{dk} K",
            )
    axes[1].axhline(0, color="k", lw=0.5)
    axes[1].set_xlabel("latitude")
    axes[1].set_ylabel("change (mm/day)")
    axes[1].legend(fontsize=7)
    for ax in axes:
        ax.grid(alpha=0.3)
    return plots._save(fig, path)


COUPLED_SERIES = (
    "global_pr",
    "global_pr_speedy",
    "global_pr_precipdiff",
    "global_pr_limited",
    "global_prw",
    "global_condensate",
    "global_evap",
    "global_ts",
    "global_tas",
    "budget_residual",
    "water_fixer",
    "latent_heat_intended",
    "latent_heat_applied",
    "nan_count",
    "wall_s",
    "plugin_s",
)


def part_coupled(ctx: _Context) -> dict[str, Any]:
    """Compare the coupled runs with the control (module docstring)."""
    cfg, out = ctx.cfg, ctx.cfg.out
    yrs = cfg.coupled_years
    runs = {r: cfg.runs / r for r in ("control", "diagnostic", "interactive")}
    # The diagnostic run is optional (SPEEDY's trajectory in it is the control's; what it
    # adds is precipdiff's field on the same days): compared when its years exist.
    try:
        run_files(runs["diagnostic"], yrs)
    except InputError as exc:
        ctx.say(f"coupled: no diagnostic run ({exc}); comparing the interactive run alone")
        del runs["diagnostic"]
    coupled = [r for r in ("diagnostic", "interactive") if r in runs]
    series = {r: read_series(d, yrs, COUPLED_SERIES) for r, d in runs.items()}
    # Interannual spread from every control year there is (12 for the standard runs), so
    # that a short coupled run is judged against the control's natural variability too.
    ctl_years = sorted(
        int(f.stem.split("_")[1]) for f in runs["control"].glob("speedy_[0-9][0-9][0-9][0-9].nc")
    )
    spread_series = {
        y: read_series(
            runs["control"],
            (y, y),
            [
                "global_pr",
                "global_prw",
                "global_condensate",
                "global_evap",
                "global_ts",
                "global_tas",
            ],
        )
        for y in ctl_years
    }
    quantities = {
        "precipitation that left the atmosphere (mm/day)": "global_pr",
        "column water vapour + condensate (kg m-2)": None,
        "evaporation (mm/day)": "global_evap",
        "surface temperature (K)": "global_ts",
        "lowest-level air temperature (K)": "global_tas",
    }
    rows: list[list[Any]] = []
    annual: dict[str, dict[str, Array]] = {}
    bands: dict[str, tuple[float, float]] = {}
    head: dict[str, float] = {}
    for label, key in quantities.items():
        annual[label] = {}
        for r, s in series.items():
            x = s["global_prw"] + s["global_condensate"] if key is None else s[key]
            _years, am = annual_means(x, s["year"])
            annual[label][r] = am
        c = annual[label]["control"]
        all_c = np.array(
            [
                float(np.mean(v["global_prw"] + v["global_condensate"] if key is None else v[key]))
                for v in spread_series.values()
            ]
        )
        spread = float(np.std(all_c, ddof=1)) if all_c.size > 1 else float("nan")
        bands[label] = (float(np.mean(all_c)), spread)
        for r in coupled:
            a = annual[label][r]
            drift = float(np.mean(a) - np.mean(c))
            # trends need at least 3 years to mean anything
            slope, slope_c = float("nan"), float("nan")
            if a.size >= 3:
                slope = float(np.polyfit(np.arange(a.size), a, 1)[0]) * 10.0
                slope_c = float(np.polyfit(np.arange(c.size), c, 1)[0]) * 10.0
            rows.append(
                [
                    label,
                    r,
                    float(np.mean(c)),
                    float(np.mean(a)),
                    drift,
                    spread,
                    drift / spread if spread > 0 else float("nan"),
                    slope,
                    slope_c,
                ]
            )
    it = series["interactive"]
    # The condensate bound's overflow (driver since 2026-12-01): runs made before it have
    # none, i.e. zero.
    try:
        ovf = read_series(runs["interactive"], yrs, ["global_pr_overflow"])["global_pr_overflow"]
    except InputError:
        ovf = np.zeros_like(it["global_pr"])
    row = {(rw[0], rw[1]): rw for rw in rows}
    pr_l = "precipitation that left the atmosphere (mm/day)"
    water_l = "column water vapour + condensate (kg m-2)"
    ts_l = "surface temperature (K)"
    budget: list[list[Any]] = []
    for r, s in series.items():
        scale = float(np.max(np.abs(s["global_prw"])))
        budget.append(
            [
                r,
                int(np.sum(s["nan_count"])),
                float(np.max(np.abs(s["budget_residual"]))),
                float(np.max(np.abs(s["budget_residual"]))) / scale,
                float(np.mean(np.abs(s["water_fixer"]))),
                float(np.mean(np.abs(s["water_fixer"]) / s["global_evap"])) * 100,
                float(np.mean(s["wall_s"])),
                float(np.mean(s["plugin_s"])),
            ]
        )
    cost = {b[0]: b for b in budget}
    head.update(
        {
            "coupled_nan_total": float(sum(b[1] for b in budget)),
            "coupled_max_relative_budget_residual": float(max(b[3] for b in budget)),
            "coupled_interactive_pr_drift_mm_day": row[pr_l, "interactive"][4],
            "coupled_interactive_pr_drift_in_sigma": row[pr_l, "interactive"][6],
            "coupled_interactive_water_drift_kg_m2": row[water_l, "interactive"][4],
            "coupled_interactive_water_drift_in_sigma": row[water_l, "interactive"][6],
            "coupled_interactive_ts_drift_k": row[ts_l, "interactive"][4],
            "coupled_interactive_ts_drift_in_sigma": row[ts_l, "interactive"][6],
            "coupled_interactive_limited_mm_day": float(np.mean(it["global_pr_limited"])),
            "coupled_interactive_overflow_mm_day": float(np.mean(ovf)),
            "coupled_interactive_precipdiff_share": float(
                np.mean(it["global_pr_precipdiff"] - it["global_pr_limited"])
                / np.mean(it["global_pr"])
            ),
            "coupled_interactive_condensate_kg_m2": float(np.mean(it["global_condensate"])),
            "coupled_interactive_latent_heat_error_w_m2": float(
                np.mean(np.abs(it["latent_heat_applied"] - it["latent_heat_intended"]))
            ),
            "coupled_wall_per_day_control_s": cost["control"][6],
            "coupled_wall_per_day_interactive_s": cost["interactive"][6],
            "coupled_plugin_share_interactive": cost["interactive"][7] / cost["interactive"][6],
        }
    )
    if "diagnostic" in series:
        di = series["diagnostic"]
        head["coupled_diagnostic_pd_minus_speedy_mm_day"] = float(
            np.mean(di["global_pr_precipdiff"] - di["global_pr_speedy"])
        )
        head["coupled_wall_per_day_diagnostic_s"] = cost["diagnostic"][6]
    fig_ts = _plot_annual(
        annual,
        np.arange(yrs[0], yrs[1] + 1, dtype=np.float64),
        bands,
        out / "coupled_annual_means.png",
    )
    # Maps, zonal means, spectra of the daily precipitation.
    ctl_f, _, lat, lon = read_run(runs["control"], yrs, ["pr", "prw"])
    int_f, _, _, _ = read_run(runs["interactive"], yrs, ["pr", "pr_speedy", "prw"])
    truth = ctl_f["pr"]
    prods: dict[str, Array] = {}
    one_way = None
    if "diagnostic" in runs:
        dia_f, _, _, _ = read_run(runs["diagnostic"], yrs, ["pr_precipdiff", "pr", "prw"])
        # One-way coupling over the whole run: the diagnostic run's SPEEDY is the control.
        one_way = bool(
            np.array_equal(dia_f["pr"], truth) and np.array_equal(dia_f["prw"], ctl_f["prw"])
        )
        # Same weather: precipdiff's daily field against SPEEDY's on the same days.
        pd_day = dia_f["pr_precipdiff"]
        head["coupled_diagnostic_identical_to_control"] = float(one_way)
        head["coupled_diagnostic_daily_mae"] = metrics.mae(pd_day, truth)
        head["coupled_diagnostic_daily_corr"] = float(
            np.corrcoef(pd_day.ravel(), truth.ravel())[0, 1]
        )
        prods["diagnostic: precipdiff"] = pd_day
    prods["interactive: what fell (precipdiff + overflow)"] = int_f["pr"]
    prods["interactive: SPEEDY's condensation"] = int_f["pr_speedy"]
    maps = {k: metrics.time_mean_bias(v, truth) for k, v in prods.items()}
    mabs = {k: metrics.mean_absolute_bias(v, truth) for k, v in prods.items()}
    fig_maps = plots.plot_bias_maps(
        maps,
        lat,
        lon,
        out / "coupled_pr_difference_maps.png",
        title=f"Time-mean precipitation minus the control's, {yrs[0]}-{yrs[1]} (mm/day)",
        scores=mabs,
    )
    fig_prw = plots.plot_bias_maps(
        {"interactive - control": metrics.time_mean_bias(int_f["prw"], ctl_f["prw"])},
        lat,
        lon,
        out / "coupled_prw_difference_map.png",
        title="Time-mean column water vapour, interactive minus control (kg m-2)",
        units="kg m-2",
    )
    zonal = {"control (SPEEDY)": _zonal(truth), **{k: _zonal(v) for k, v in prods.items()}}
    fig_z = _plot_zonal(zonal, lat, out / "coupled_zonal_mean_pr.png")
    spec = {
        "control (SPEEDY)": metrics.power_spectrum_zonal(truth),
        **{k: metrics.power_spectrum_zonal(v) for k, v in prods.items()},
    }
    fig_s = plots.plot_spectra(
        {k: (wn[1:], p[1:]) for k, (wn, p) in spec.items()},
        out / "coupled_zonal_spectra.png",
        xlabel="zonal wavenumber (cycles per circle)",
        title="Zonal power spectrum of daily precipitation",
    )
    q = (0.5, 0.9, 0.99, 0.999)
    dist = [
        [
            k,
            *[float(x) for x in metrics.quantiles(v, q)],
            float(np.mean(metrics.wet_day_frequency(v))),
        ]
        for k, v in {"control (SPEEDY)": truth, **prods}.items()
    ]
    for key, k in (
        ("diagnostic", "diagnostic: precipdiff"),
        ("interactive", "interactive: what fell (precipdiff + overflow)"),
        ("interactive_speedy", "interactive: SPEEDY's condensation"),
    ):
        if k in mabs:
            head[f"coupled_mab_vs_control_{key}"] = mabs[k]
    rep = ctx.report
    rep.add_heading(f"The coupled-stability answer: {yrs[1] - yrs[0] + 1} years inside SPEEDY")
    rep.add_text(
        f"Three runs from the same state (1981-01-01, after a one-year spin-up), "
        f"{yrs[0]}-{yrs[1]}: control (SPEEDY alone), diagnostic (precipdiff one-way; SPEEDY's "
        "trajectory is bitwise the control's) and interactive (precipdiff's precipitation is "
        "the column moisture sink; condensate reservoir, re-evaporation time "
        f"{cfg.extra.get('condensate_days', 1)} day, condensate above "
        f"{cfg.extra.get('condensate_max', 2.0)} kg m-2 falls as overflow). One member a day, "
        "the bundle's default sampler. Drift = the run's mean minus the control's over the "
        "same years; spread = "
        f"standard deviation of the control's annual means over all its {len(ctl_years)} "
        "years; trends per decade of the annual means (least squares; only with 3 years or "
        "more)."
    )
    rep.add_table(
        [
            "global mean",
            "run",
            "control",
            "run mean",
            "drift",
            "control interannual std",
            "drift / std",
            "trend per decade",
            "control trend per decade",
        ],
        rows,
        digits=3,
    )
    if one_way is None:
        rep.add_text(f"No diagnostic run for {yrs[0]}-{yrs[1]}: the interactive run alone.")
    else:
        rep.add_text(
            "Diagnostic run: SPEEDY's fields are bitwise those of the control over the whole "
            f"run: **{one_way}**. On the same days (same weather) precipdiff's member has a "
            f"daily MAE of {head['coupled_diagnostic_daily_mae']:.3f} mm/day against SPEEDY's "
            f"precipitation (correlation {head['coupled_diagnostic_daily_corr']:.3f})."
        )
    rep.add_text(
        "Interactive run: of the precipitation that left the atmosphere "
        f"({np.mean(it['global_pr']):.3f} mm/day), precipdiff's field is "
        f"{100 * head['coupled_interactive_precipdiff_share']:.1f} % "
        f"({np.mean(it['global_pr_precipdiff']):.3f} mm/day generated, "
        f"{head['coupled_interactive_limited_mm_day']:.3f} of it not removable: column limit) "
        f"and the condensate overflow {head['coupled_interactive_overflow_mm_day']:.3f} mm/day; "
        f"SPEEDY's own condensation {np.mean(it['global_pr_speedy']):.3f} mm/day, column "
        f"condensate {head['coupled_interactive_condensate_kg_m2']:.3f} kg m-2."
    )
    rep.add_text("Water budget, stability and cost (daily values over the whole runs):")
    rep.add_table(
        [
            "run",
            "NaN values",
            "max abs. budget residual (kg m-2)",
            "relative to column water",
            "mean abs. fixer (kg m-2/day)",
            "fixer % of evaporation",
            "wall s / day",
            "in precipdiff s / day",
        ],
        # the residuals are round-off: scientific notation, not 0.0000
        [[b[0], b[1], f"{b[2]:.1e}", f"{b[3]:.1e}", *b[4:]] for b in budget],
        digits=4,
    )
    rep.add_text("Distribution of daily precipitation (all cells and days, mm/day):")
    rep.add_table(["product", "median", "p90", "p99", "p99.9", "wet-day freq."], dist)
    for fig_path, caption in (
        (fig_ts, "Annual global means: control spread and the coupled runs"),
        (fig_maps, "Time-mean precipitation minus the control's"),
        (fig_prw, "Column water vapour change of the interactive run"),
        (fig_z, "Zonal-mean precipitation"),
        (fig_s, "Zonal power spectra of daily precipitation"),
    ):
        rep.add_figure(fig_path, out, caption)
    ctx.headline.update(head)
    return {"rows": rows, "budget": budget, "headline": head}


def _plot_annual(
    annual: Mapping[str, Mapping[str, Array]],
    years: Array,
    bands: Mapping[str, tuple[float, float]],
    path: Path,
) -> Path:
    plt = plots._pyplot()
    n = len(annual)
    fig, axes = plt.subplots(1, n, figsize=(3.4 * n, 3.2))
    for ax, (label, runs) in zip(np.atleast_1d(axes), annual.items(), strict=True):
        m, s = bands[label]  # mean and interannual std of all control years
        if np.isfinite(s):
            ax.axhspan(m - 2 * s, m + 2 * s, color="0.85", label="control ±2σ (all years)")
        for r, a in runs.items():
            ax.plot(years, a, marker="o", ms=3, label=r)
        ax.set_title(label, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.xaxis.get_major_locator().set_params(integer=True)
    np.atleast_1d(axes)[0].legend(fontsize=7)
    return plots._save(fig, path)


def _plot_zonal(zonal: Mapping[str, Array], lat: Array, path: Path) -> Path:
    plt = plots._pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for k, v in zonal.items():
        ax.plot(lat, v, label=k)
    ax.set_xlabel("latitude")
    ax.set_ylabel("mm/day")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return plots._save(fig, path)


PART_FUNCS: dict[str, Callable[[_Context], dict[str, Any]]] = {
    "heldout": part_heldout,
    "biased": part_biased,
    "warming": part_warming,
    "coupled": part_coupled,
}


def run_speedy(
    config: SpeedyConfig, log: Callable[[str], None] | None = None, command: str | None = None
) -> dict[str, float]:
    """Run the selected parts; write ``README.md``, ``metrics.json`` and the figures.

    A subset of the parts writes ``README_<parts>.md`` instead of ``README.md`` (the
    parts in the order of :data:`PARTS`, joined by ``_``).

    Parameters
    ----------
    config
        Settings.
    log
        Progress messages.
    command
        The command line, quoted in the report.

    Returns
    -------
    dict
        The headline numbers (also in ``metrics.json``, merged with earlier parts), with
        the wall time as ``<parts>_runtime_s`` (``all_runtime_s``, ``coupled_runtime_s``,
        ``biased_warming_runtime_s``, ...).
    """
    say = log or (lambda _m: None)
    t0 = time.perf_counter()
    config.out.mkdir(parents=True, exist_ok=True)
    ctx = _Context(config, say)
    prov = ctx.man.provenance
    ctx.report.add_text(
        f"Produced by `{command or 'precipdiff evaluate speedy'}` from the runs in "
        f"`{config.runs}` (`scripts/speedy/run_experiment.py`). Model: {CITATION}. Bundle "
        f"`{config.bundle}` ({prov.get('name', '')}): predictors {', '.join(ctx.names)}, coarse "
        f"grid {ctx.cgrid.shape[0]}x{ctx.cgrid.shape[1]}, fine grid {ctx.fgrid.shape[0]}x"
        f"{ctx.fgrid.shape[1]}, sampler steps {config.steps or ctx.man.sampler_config().steps}."
    )
    for part in PARTS:
        if part in config.parts:
            say(f"part {part}")
            PART_FUNCS[part](ctx)
    every = set(config.parts) == set(PARTS)
    label = "all" if every else "_".join(p for p in PARTS if p in config.parts)
    # per part(s): metrics.json merges the headlines of separate invocations, and one
    # 'runtime_s' would be overwritten by whichever part ran last
    runtime = time.perf_counter() - t0
    ctx.headline[f"{label}_runtime_s"] = runtime
    path = config.out / "metrics.json"
    old: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    earlier = dict(old.get("headline", {}))
    earlier.pop("runtime_s", None)  # the unnamed wall time of files written before 2026-12-01
    merged = {**earlier, **ctx.headline}
    path.write_text(json.dumps({"headline": merged}, indent=1, default=float) + "\n")
    name = "README.md" if every else f"README_{label}.md"
    ctx.report.add_text(f"Wall time of this evaluation: {runtime:.0f} s.")
    ctx.report.write(config.out / name, command=command)
    return ctx.headline
