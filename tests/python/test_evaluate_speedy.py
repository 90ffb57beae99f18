"""precipdiff.offline.evaluate.speedy on synthetic runs in the SPEEDY driver's format.

The real runs take hours (scripts/speedy/run_experiment.py); here every part runs on a
few synthetic days per "year" with a tiny random bundle on SPEEDY's grids, checking that
the report, the figures and the headline numbers are produced and that the numbers mean
what they say (a run equal to the control has no drift, a perturbed one does).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from precipdiff.errors import ConfigError, InputError
from precipdiff.grids import LatLonGrid, coarsen_grid
from precipdiff.offline import metrics
from precipdiff.offline.evaluate.speedy import (
    SpeedyConfig,
    annual_means,
    cell_qdm_out_of_sample,
    read_run,
    read_series,
    run_speedy,
)
from precipdiff.qdm import QDMConfig
from precipdiff.testing.models import make_tiny_bundle

NDAYS = 45  # days per synthetic "year" (January and half of February)


def speedy_lat_lon() -> tuple[np.ndarray, np.ndarray]:
    j = np.arange(1, 25, dtype=np.float32)
    s = np.cos(np.float32(3.141592654) * (j - np.float32(0.25)) / np.float32(48.5))
    lat = np.degrees(np.arcsin(np.concatenate([-s, s[::-1]]).astype(np.float64)))
    return lat, np.arange(96) * 3.75


MAPS = ("pr", "pr_speedy", "prc", "pr_precipdiff", "pr_limited", "evspsbl", "prw", "ps", "psl")
MAPS += ("hus850", "ua850", "va850", "ta850", "ts", "tas")
SERIES = (
    "global_prw global_condensate global_evap global_pr global_pr_speedy global_pr_precipdiff "
    "global_pr_limited global_pr_overflow water_fixer budget_residual adjustment_water_intended "
    "adjustment_water_applied latent_heat_intended latent_heat_applied global_ts global_tas "
    "nan_count wall_s plugin_s"
).split()


def write_year(path: Path, year: int, seed: int, sst: float = 0.0, wet: float = 1.0) -> None:
    import netCDF4

    rng = np.random.default_rng(seed)
    lat, lon = speedy_lat_lon()
    t = NDAYS
    shape = (t, lat.size, lon.size)
    base = np.cos(np.deg2rad(lat))[None, :, None]
    q = (0.004 + 0.008 * base**2) * (1 + 0.07 * sst) * (1 + 0.1 * rng.standard_normal(shape))
    pr = np.maximum(0.0, wet * 86400 * 4e-5 * (q / 0.01) ** 2 * rng.gamma(0.6, 1.7, shape))
    fields = {
        "hus850": np.clip(q, 1e-5, 0.04),
        "ua850": 8 * rng.standard_normal(shape),
        "va850": 5 * rng.standard_normal(shape),
        "psl": 101300 + 800 * rng.standard_normal(shape),
        "ta850": 270 + 20 * base + sst + rng.standard_normal(shape),
        "ps": 98000 + 500 * rng.standard_normal(shape),
        "prw": 25 * base + 3,
        "ts": 280 + 20 * base + sst + np.zeros(shape),
        "tas": 279 + 20 * base + sst + np.zeros(shape),
        "pr": pr / 86400,
        "pr_speedy": pr / 86400,
        "prc": 0.6 * pr / 86400,
        "pr_precipdiff": pr[::-1] / 86400,
        "pr_limited": 0.0 * pr,
        "evspsbl": np.full(shape, 3.0 / 86400),
    }
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("time", None)
        ds.createDimension("lat", lat.size)
        ds.createDimension("lon", lon.size)
        ds.createDimension("bnds", 2)
        tv = ds.createVariable("time", "f8", ("time",))
        tv.units = "days since 1980-01-01 00:00:00"
        tv.calendar = "standard"
        first = (np.datetime64(f"{year}-01-01") - np.datetime64("1980-01-01")).astype(int)
        tv[:] = first + np.arange(t) + 0.5
        ds.createVariable("lat", "f8", ("lat",))[:] = lat
        ds["lat"].units = "degrees_north"
        ds.createVariable("lon", "f8", ("lon",))[:] = lon
        ds["lon"].units = "degrees_east"
        units = {
            "hus850": "kg kg-1",
            "ua850": "m s-1",
            "va850": "m s-1",
            "psl": "Pa",
            "ta850": "K",
            "ps": "Pa",
            "prw": "kg m-2",
            "ts": "K",
            "tas": "K",
        }
        for n in MAPS:
            v = ds.createVariable(n, "f4", ("time", "lat", "lon"))
            v.units = units.get(n, "kg m-2 s-1")
            v[:] = fields[n]
        gm = {n: float(np.mean(fields[n])) for n in ("prw", "ts", "tas")}
        for n in SERIES:
            v = ds.createVariable(n, "f8", ("time",))
            if n == "global_prw":
                v[:] = gm["prw"] + 0.01 * np.arange(t)
            elif n in ("global_ts", "global_tas"):
                v[:] = gm[n[7:]] + 0.1 * rng.standard_normal(t)
            elif n in ("global_pr", "global_pr_speedy", "global_pr_precipdiff"):
                v[:] = 3.0 + 0.05 * rng.standard_normal(t)
            elif n == "global_evap":
                v[:] = 3.0
            elif n == "global_pr_overflow":
                v[:] = 0.3
            elif n in ("wall_s",):
                v[:] = 0.5
            elif n == "plugin_s":
                v[:] = 0.1
            else:
                v[:] = 0.0


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("speedy_world")
    runs = root / "runs"
    spec = {
        "control": (1981, 1984, 0.0, 1.0),
        "biased": (1981, 1982, 0.0, 3.0),
        "sst+2k": (1981, 1982, 2.0, 1.0),
        "sst+4k": (1981, 1982, 4.0, 1.0),
        "diagnostic": (1981, 1983, 0.0, 1.0),
        "interactive": (1981, 1983, 0.0, 1.0),
    }
    for k, (name, (a, b, sst, wet)) in enumerate(spec.items()):
        d = runs / name
        d.mkdir(parents=True)
        for y in range(a, b + 1):
            write_year(d / f"speedy_{y}.nc", y, seed=100 * k + y, sst=sst, wet=wet)
    lat, lon = speedy_lat_lon()
    fine = LatLonGrid(lat=lat, lon=lon)
    bundle = make_tiny_bundle(
        root / "bundle",
        coarse_grid=coarsen_grid(fine, 4),
        fine_grid=fine,
        variables=["hus850", "ua850", "va850", "psl"],
        precip_stats=(3.4, 0.5),
    )
    return runs, bundle


def test_config_checks() -> None:
    with pytest.raises(ConfigError, match="unknown part"):
        SpeedyConfig(parts=("heldout", "nope"))
    with pytest.raises(ConfigError, match="members"):
        SpeedyConfig(members=1)
    with pytest.raises(ConfigError, match="empty"):
        SpeedyConfig(heldout_years=(1992, 1991))


def test_readers(world: tuple[Path, Path]) -> None:
    runs, _ = world
    fields, times, lat, lon = read_run(runs / "control", (1981, 1982), ["pr", "hus850", "prw"])
    assert fields["pr"].shape == (2 * NDAYS, 48, 96)
    assert str(times[0])[:10] == "1981-01-01"
    assert lat[0] < lat[-1] and lon.size == 96
    assert float(fields["pr"].mean()) > 0.1  # mm/day, converted from kg m-2 s-1
    s = read_series(runs / "control", (1981, 1983), ["global_pr", "wall_s"])
    assert s["global_pr"].shape == (3 * NDAYS,)
    years, means = annual_means(s["wall_s"], s["year"])
    np.testing.assert_array_equal(years, [1981, 1982, 1983])
    np.testing.assert_allclose(means, 0.5)
    with pytest.raises(InputError, match=r"run scripts/speedy/run_experiment\.py"):
        read_run(runs / "control", (1979, 1981), ["pr"])


def test_all_parts(world: tuple[Path, Path], tmp_path: Path) -> None:
    runs, bundle = world
    cfg = SpeedyConfig(
        runs=runs,
        bundle=bundle,
        out=tmp_path / "out",
        members=3,
        heldout_years=(1984, 1984),
        analysis_years=(1982, 1982),
        coupled_years=(1981, 1983),
        max_days=20,
        esm_max_days=30,
        n_quantiles=10,
        device="cpu",
    )
    head = run_speedy(cfg, command="test")
    out = tmp_path / "out"
    text = (out / "README.md").read_text()
    for heading in ("Held-out years", "A biased ESM", "A warmer climate", "coupled-stability"):
        assert heading in text
    for png in (
        "heldout_bias_maps.png",
        "heldout_zonal_spectra.png",
        "biased_bias_maps.png",
        "warming_zonal_change.png",
        "coupled_annual_means.png",
        "coupled_zonal_mean_pr.png",
    ):
        assert (out / png).stat().st_size > 5_000, png
    assert np.isfinite(head["heldout_crps_generated"])
    assert np.isfinite(head["heldout_spread_skill_ratio"])
    # The biased run is 3x wetter everywhere: its own MAB is far above the floor.
    assert head["biased_mab_own"] > 3 * head["biased_mab_natural_variability_floor"]
    assert head["biased_mab_cell_qdm"] < head["biased_mab_own"]
    # one analysis year: nothing to fit an out-of-sample per-cell QDM on; said, not faked
    assert np.isnan(head["biased_mab_cell_qdm_oos"])
    assert "per-cell QDM of the biased precipitation, in sample" in text
    assert "out-of-sample per-cell QDM (leave-one-year-out) is not computed" in text
    assert "needs at least two years" in text
    # 30 of the 45 days: the subsampling floor (SPEEDY's own pr on those days) is reported
    assert 0 < head["biased_mab_sampling_floor"] < head["biased_mab_own"]
    assert "generated products' 30 days (sampling floor)" in text
    # the predictors' QDM tables are kept next to the biased run, not in the report
    assert (runs / "biased" / "qdm_tables_1982-1982.safetensors").is_file()
    assert not list(out.glob("*.safetensors"))
    # humidity biases (~1e-5 kg kg-1) keep significant digits in the predictor table
    hus_row = next(ln for ln in text.splitlines() if ln.startswith("| hus850 | kg kg-1 |"))
    cells = [c.strip() for c in hus_row.strip("|").split("|")]
    assert float(cells[3]) > 0  # the MAB (was printed 0.0000)
    # Warmer synthetic runs are moister: the change of hus850 is positive.
    assert head["warming_4k_hus850_change_pct"] > head["warming_2k_hus850_change_pct"] > 0
    # The synthetic coupled runs equal the control in distribution: no NaN, small drift.
    assert head["coupled_nan_total"] == 0
    assert abs(head["coupled_interactive_ts_drift_k"]) < 0.2
    assert head["coupled_plugin_share_interactive"] == pytest.approx(0.2)
    # The condensate overflow is reported, and the share of what fell that is precipdiff's.
    assert head["coupled_interactive_overflow_mm_day"] == pytest.approx(0.3)
    assert head["coupled_interactive_precipdiff_share"] == pytest.approx(1.0, abs=0.05)
    saved = json.loads((out / "metrics.json").read_text())["headline"]
    assert saved["heldout_crps_generated"] == pytest.approx(head["heldout_crps_generated"])
    assert saved["all_runtime_s"] == pytest.approx(head["all_runtime_s"])


def test_one_part_keeps_other_headlines(world: tuple[Path, Path], tmp_path: Path) -> None:
    runs, bundle = world
    out = tmp_path / "o"
    out.mkdir()
    earlier = {"earlier": 1.0, "runtime_s": 5.0}  # unnamed wall time of an older file
    (out / "metrics.json").write_text(json.dumps({"headline": earlier}))
    cfg = SpeedyConfig(
        runs=runs,
        bundle=bundle,
        out=out,
        parts=("coupled",),
        coupled_years=(1981, 1983),
        device="cpu",
    )
    run_speedy(cfg)
    assert (out / "README_coupled.md").is_file()
    saved = json.loads((out / "metrics.json").read_text())["headline"]
    assert saved["earlier"] == 1.0
    assert "coupled_interactive_pr_drift_mm_day" in saved
    # the wall time is named by the parts: a later part does not overwrite this one's
    assert saved["coupled_runtime_s"] > 0
    cfg.parts = ("warming", "biased")
    cfg.analysis_years = (1982, 1982)
    cfg.esm_max_days = 10
    cfg.n_quantiles = 10
    run_speedy(cfg)
    assert (out / "README_biased_warming.md").is_file()
    again = json.loads((out / "metrics.json").read_text())["headline"]
    assert again["coupled_runtime_s"] == saved["coupled_runtime_s"]
    assert again["biased_warming_runtime_s"] > 0
    assert "runtime_s" not in again


def test_cli_years(
    world: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--coupled-years etc. reach the config (short runs are evaluated over their years)."""
    from precipdiff.offline.cli.main import main

    runs, bundle = world
    out = tmp_path / "cli"
    argv = ["evaluate", "speedy", "--runs", str(runs), "--bundle", str(bundle)]
    argv += ["--out", str(out), "--parts", "coupled", "--device", "cpu"]
    assert main([*argv, "--coupled-years", "1981", "1982", "--condensate-max", "3.5"]) == 0
    text = (out / "README_coupled.md").read_text()
    assert "1981-1982" in text and "1981-1983" not in text
    assert "condensate above 3.5 kg m-2 falls as overflow" in text
    # Years the runs do not have: a one-line error naming the missing run files.
    capsys.readouterr()
    assert main([*argv, "--coupled-years", "1981", "1984"]) == 2
    assert "scripts/speedy/run_experiment.py" in capsys.readouterr().err


def test_one_coupled_year(world: tuple[Path, Path], tmp_path: Path) -> None:
    """A one-year coupled run: drift against the spread of all control years, no trend."""
    runs, bundle = world
    cfg = SpeedyConfig(
        runs=runs,
        bundle=bundle,
        out=tmp_path / "one",
        parts=("coupled",),
        coupled_years=(1981, 1981),
        device="cpu",
    )
    head = run_speedy(cfg)
    assert np.isfinite(head["coupled_interactive_ts_drift_k"])
    # spread from the 4 control years of the synthetic world, not from the one coupled year
    assert np.isfinite(head["coupled_interactive_ts_drift_in_sigma"])
    text = (tmp_path / "one" / "README_coupled.md").read_text()
    assert "all its 4 years" in text


def test_coupled_without_diagnostic_run(world: tuple[Path, Path], tmp_path: Path) -> None:
    """The diagnostic run is optional: the interactive run is compared alone."""
    runs, bundle = world
    only = tmp_path / "runs"
    only.mkdir()
    for name in ("control", "interactive"):
        (only / name).symlink_to(runs / name)
    cfg = SpeedyConfig(
        runs=only,
        bundle=bundle,
        out=tmp_path / "nodiag",
        parts=("coupled",),
        coupled_years=(1981, 1982),
        device="cpu",
    )
    head = run_speedy(cfg)
    assert head["coupled_nan_total"] == 0
    assert np.isfinite(head["coupled_interactive_pr_drift_mm_day"])
    assert "coupled_diagnostic_daily_mae" not in head
    text = (tmp_path / "nodiag" / "README_coupled.md").read_text()
    assert "No diagnostic run for 1981-1982" in text


def test_daily_budget_script(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """scripts/speedy/daily_budget.py: one line per printed day plus the means, the
    series as written, tropical means of the maps, '-' for what a file lacks."""
    import netCDF4
    from script_helpers import load_script

    mod = load_script("scripts/speedy/daily_budget.py")
    nc = tmp_path / "speedy_1981.nc"
    write_year(nc, 1981, seed=3)
    lines = mod.budget_table(nc, every=10)
    rows = [ln.split() for ln in lines[2:]]
    assert [r[0] for r in rows] == ["1", "11", "21", "31", "41", "45", "mean"]
    with netCDF4.Dataset(nc) as ds:
        evap = np.asarray(ds["global_evap"][:])
        prw = np.asarray(ds["prw"][:])
        lat = np.asarray(ds["lat"][:])
    head = lines[1].split()
    assert float(rows[1][head.index("evap")]) == pytest.approx(evap[10], abs=1e-3)
    assert float(rows[1][head.index("overflow")]) == pytest.approx(0.3, abs=1e-3)
    trop = np.abs(lat) <= 20
    w = np.cos(np.deg2rad(lat[trop]))
    expect = float((prw[0][trop].mean(axis=1) * w).sum() / w.sum())
    assert float(rows[0][head.index("tr_prw")]) == pytest.approx(expect, abs=1e-3)
    assert -1.0 <= float(rows[0][-1]) <= 1.0  # pattern correlation
    # a run without the overflow series (written before 2026-12-01) prints '-'
    with netCDF4.Dataset(nc, "a") as ds:
        ds.renameVariable("global_pr_overflow", "other")
    assert mod.budget_table(nc)[2].split()[head.index("overflow")] == "-"
    assert mod.main([str(tmp_path / "missing.nc")]) == 2
    assert mod.main([str(nc), "--every", "50"]) == 0
    assert "mean" in capsys.readouterr().out


# ------------------------------------------- per-cell QDM out of sample (issue #10)

# the per-cell precipitation QDM of part_biased, with the default 50 quantiles
PR_QDM = QDMConfig(
    n_quantiles=50, group="month", kinds={"pr": "multiplicative"}, trace={"pr": 0.05}
)


def two_runs(
    years: tuple[int, ...] = (1982, 1983, 1984), seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 'control' and a 2.5x wetter 'biased' precipitation, independent noise every
    year (stationary climate), January-February on a 3 x 4 grid, and the times."""
    rng = np.random.default_rng(seed)
    days = np.concatenate([np.datetime64(f"{y}-01-01") + np.arange(59) for y in years])
    times = days.astype("datetime64[h]") + np.timedelta64(12, "h")  # day middles
    shape = (times.size, 3, 4)
    ctl = rng.gamma(0.8, 2.0, shape) * (rng.random(shape) < 0.6)
    bia = 2.5 * rng.gamma(0.8, 2.0, shape) * (rng.random(shape) < 0.6)
    return ctl, bia, times


def test_cell_qdm_out_of_sample_is_worse_than_the_memorising_in_sample_fit() -> None:
    """In sample the per-cell QDM reproduces the control per cell and month by
    construction; fitted on the other years it cannot know this year's noise."""
    from precipdiff.offline.qdm_fit import apply_qdm, fit_qdm

    ctl, bia, times = two_runs()
    tab = fit_qdm({"pr": ctl}, {"pr": bia}, times, times, PR_QDM)
    in_sample = np.asarray(apply_qdm(tab, "pr", bia, times), np.float64)
    oos, years = cell_qdm_out_of_sample(ctl, bia, times, times, PR_QDM)
    assert years == [1982, 1983, 1984]
    assert oos.shape == bia.shape and np.isfinite(oos).all()
    mab_own = metrics.mean_absolute_bias(bia, ctl)
    mab_in = metrics.mean_absolute_bias(in_sample, ctl)
    mab_oos = metrics.mean_absolute_bias(oos, ctl)
    assert mab_in < 0.25 * mab_oos  # the in-sample fit memorises the noise (0.012 / 0.112)
    assert mab_oos < 0.5 * mab_own  # out of sample it still removes most of the bias


def test_cell_qdm_out_of_sample_never_fits_on_the_evaluated_year(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from precipdiff.calendars import time_fields
    from precipdiff.offline import qdm_fit

    ctl, bia, times = two_runs()
    calls: list[tuple[str, set[int], set[int]]] = []
    fit, apply = qdm_fit.fit_qdm, qdm_fit.apply_qdm

    def years_of(t: np.ndarray) -> set[int]:
        return {int(y) for y in time_fields(t).year}

    def fit_spy(ref: Any, hist: Any, ref_times: Any, hist_times: Any, *a: Any, **k: Any) -> Any:
        calls.append(("fit", years_of(ref_times), years_of(hist_times)))
        return fit(ref, hist, ref_times, hist_times, *a, **k)

    def apply_spy(tables: Any, name: str, x: Any, t: Any, **k: Any) -> Any:
        calls.append(("apply", years_of(t), years_of(t)))
        return apply(tables, name, x, t, **k)

    monkeypatch.setattr(qdm_fit, "fit_qdm", fit_spy)
    monkeypatch.setattr(qdm_fit, "apply_qdm", apply_spy)
    cell_qdm_out_of_sample(ctl, bia, times, times, PR_QDM)
    assert [c[0] for c in calls] == ["fit", "apply"] * 3
    for (_, ref_years, hist_years), (_, applied, _) in zip(calls[::2], calls[1::2], strict=True):
        assert len(applied) == 1
        assert ref_years == hist_years == {1982, 1983, 1984} - applied
    monkeypatch.undo()
    # The data say the same: a control year changed beyond recognition leaves that
    # year's correction bitwise unchanged (it is not in its fit) and moves the others'.
    base, _ = cell_qdm_out_of_sample(ctl, bia, times, times, PR_QDM)
    y = time_fields(times).year
    changed = ctl.copy()
    changed[y == 1983] = 3.0 * changed[y == 1983] + 1.0
    moved, _ = cell_qdm_out_of_sample(changed, bia, times, times, PR_QDM)
    np.testing.assert_array_equal(moved[y == 1983], base[y == 1983])
    assert not np.allclose(moved[y != 1983], base[y != 1983])


def test_cell_qdm_out_of_sample_needs_two_years() -> None:
    ctl, bia, times = two_runs(years=(1982,))
    with pytest.raises(InputError, match=r"at least two years .* got only \[1982\]"):
        cell_qdm_out_of_sample(ctl, bia, times, times, PR_QDM)


def test_biased_part_reports_the_out_of_sample_row(
    world: tuple[Path, Path], tmp_path: Path
) -> None:
    """With two analysis years the report and the headline carry the out-of-sample
    per-cell QDM next to the in-sample one, which it cannot beat here."""
    runs, bundle = world
    cfg = SpeedyConfig(
        runs=runs,
        bundle=bundle,
        out=tmp_path / "b",
        parts=("biased",),
        analysis_years=(1981, 1982),
        esm_max_days=10,
        n_quantiles=10,
        device="cpu",
    )
    head = run_speedy(cfg)
    text = (tmp_path / "b" / "README_biased.md").read_text()
    rows = {ln.split("|")[1].strip(): ln for ln in text.splitlines() if ln.startswith("| ")}
    assert "per-cell QDM of the biased precipitation, in sample" in rows
    assert "per-cell QDM of the biased precipitation, out of sample" in rows
    assert "leave-one-year-out" in text
    assert np.isfinite(head["biased_mab_cell_qdm_oos"])
    assert head["biased_mab_cell_qdm"] < head["biased_mab_cell_qdm_oos"]
    assert head["biased_mab_cell_qdm_oos"] < head["biased_mab_own"]
    saved = json.loads((tmp_path / "b" / "metrics.json").read_text())["headline"]
    assert saved["biased_mab_cell_qdm_oos"] == pytest.approx(head["biased_mab_cell_qdm_oos"])


def test_cell_qdm_out_of_sample_adds_no_wet_bias_in_a_stationary_climate() -> None:
    """Applied year by year, trend-preserving QDM re-estimates each cell's CDF from one
    year and keeps its noise as a 'change' (a systematic wet bias on skewed, intermittent
    precipitation); the default quantile mapping through the fitted tables does not."""
    ctl, bia, times = two_runs(years=(1982, 1983, 1984, 1985, 1986), seed=3)
    static, _ = cell_qdm_out_of_sample(ctl, bia, times, times, PR_QDM)
    own = cell_qdm_out_of_sample(ctl, bia, times, times, PR_QDM, projection="self")[0]
    bias_static = metrics.mean_bias(static, ctl)
    bias_self = metrics.mean_bias(own, ctl)
    # fixed seed: 0.049 against 0.083 mm/day (mean 0.94); on SPEEDY 0.111 against 0.413
    assert abs(bias_static) < 0.06 * float(np.mean(ctl))
    assert bias_self > 1.4 * abs(bias_static)
