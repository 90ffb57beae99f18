"""Tests of precipdiff.offline.evaluate and the ``precipdiff evaluate``/``qdm`` commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from precipdiff.offline.cli.main import main
from precipdiff.offline.evaluate.report import (
    Report,
    evaluate_ensemble,
    figures_for,
    write_metrics_netcdf,
)

LAT = np.arange(36.25, 40.25, 0.5)  # 8
LON = np.arange(-9.75, -3.75, 0.5)  # 12


def _synthetic(t: int = 40, m: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    obs = rng.gamma(0.5, 4.0, size=(t, LAT.size, LON.size))
    obs[:, 0, :3] = np.nan  # sea
    ens = obs[:, None] * rng.lognormal(0.0, 0.3, size=(t, m, LAT.size, LON.size))
    return ens, obs


def test_report_and_metrics_netcdf(tmp_path: Path) -> None:
    xr = pytest.importorskip("xarray")
    rep = Report("T")
    rep.add_heading("H")
    rep.add_table(["a", "b"], [["x", 1.23456], ["y", float("nan")]])
    md = rep.write(tmp_path / "r.md", command="precipdiff evaluate x").read_text()
    assert "| x | 1.235 |" in md and "| y | n/a |" in md and "`precipdiff evaluate x`" in md
    p = write_metrics_netcdf(
        tmp_path / "m.nc",
        {"mae": 1.5},
        {"bias": (("lat", "lon"), np.ones((2, 3)))},
        {"lat": np.arange(2.0), "lon": np.arange(3.0)},
    )
    with xr.open_dataset(p) as ds:
        assert float(ds["mae"]) == 1.5 and ds["bias"].shape == (2, 3)


def test_evaluate_ensemble_scores_and_figures(tmp_path: Path) -> None:
    ens, obs = _synthetic()
    perfect = np.repeat(obs[:, None], 3, axis=1)
    ev0 = evaluate_ensemble(perfect, obs, LAT, LON, label="gen")
    assert ev0.scalars["crps_gen"] == pytest.approx(0.0, abs=1e-12)
    assert ev0.scalars["mean_absolute_bias_gen"] == pytest.approx(0.0, abs=1e-12)
    ev = evaluate_ensemble(
        ens, obs, LAT, LON, baselines={"smooth": np.mean(ens, axis=1)}, label="gen"
    )
    # an ensemble's CRPS is below its ensemble mean's MAE
    assert ev.scalars["crps_gen"] < ev.scalars["mae_gen"]
    assert ev.scalars["crps_smooth"] == pytest.approx(ev.scalars["mae_smooth"])
    assert ev.rank_hist is not None and ev.rank_hist.sum() == np.isfinite(obs).sum()
    assert ev.arrays["power_spectrum"][1].shape[0] == len(ev.coords["product"])
    figs = figures_for(ev, obs, {"member 0": ens[:, 0]}, LAT, LON, tmp_path)
    assert set(figs) == {"bias", "spectra", "qq", "spread_skill", "rank_histogram"}
    for f in figs.values():
        assert f.stat().st_size > 5000
    with pytest.raises(Exception, match="do not match"):
        evaluate_ensemble(ens[:, :, :-1], obs, LAT, LON)


def test_water_mass_check_is_over_the_scored_cells() -> None:
    from precipdiff.offline.metrics import block_mean

    _, obs = _synthetic()
    land = np.isfinite(obs[0])
    fine = np.where(land, 2.0, 500.0)[None, None].repeat(obs.shape[0], 0).repeat(3, 1)
    coarse = block_mean(np.where(land, fine[:, 0], np.nan), 4, LAT)
    ev = evaluate_ensemble(fine, obs, LAT, LON, coarse=coarse, factor=4, label="gen")
    # the never-trained sea cells (500 mm/day) do not enter the land budget
    assert ev.scalars["water_mass_relative_total_error"] == pytest.approx(0.0, abs=1e-9)


def test_cli_evaluate_files(tmp_path: Path) -> None:
    xr = pytest.importorskip("xarray")
    from precipdiff.grids import LatLonGrid
    from precipdiff.io.writers import write_precip_netcdf

    ens, obs = _synthetic(t=20)
    times = np.arange("2000-01-01", "2000-01-21", dtype="datetime64[D]")
    pred = tmp_path / "pred.nc"
    write_precip_netcdf(
        pred,
        np.nan_to_num(ens).astype(np.float32),
        LatLonGrid(LAT, LON),
        times,
        members=[0, 1, 2, 3],
    )
    obs_path = tmp_path / "obs.nc"
    xr.Dataset(
        {"rr": (("time", "lat", "lon"), obs.astype(np.float32), {"units": "mm day-1"})},
        coords={"time": times, "lat": LAT, "lon": LON},
    ).to_netcdf(obs_path)
    out = tmp_path / "eval"
    rc = main(["evaluate", "files", "--pred", str(pred), "--obs", str(obs_path), "--out", str(out)])
    assert rc == 0
    md = (out / "README.md").read_text()
    assert "| product |" in md and "bias_maps.png" in md
    with xr.open_dataset(out / "metrics.nc") as ds:
        assert float(ds["crps_product"]) > 0


def test_cli_evaluate_iberia_defaults_are_the_config_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import precipdiff.offline.evaluate.iberia as ib

    seen = []

    def fake_run(cfg: ib.IberiaConfig, **kw: object) -> dict[str, float]:
        seen.append(cfg)
        return {}

    monkeypatch.setattr(ib, "run_iberia", fake_run)
    base = ["evaluate", "iberia", "--bundle", str(tmp_path), "--out", str(tmp_path / "o")]
    assert main(base) == 0
    ref = ib.IberiaConfig(bundle=tmp_path, out=tmp_path / "o")
    got = seen[-1]
    assert (
        got.members,
        got.esm_members,
        got.esm_max_days,
        got.bootstrap,
        got.output_calibration,
    ) == (ref.members, ref.esm_members, ref.esm_max_days, ref.bootstrap, True)
    more = ["--members", "4", "--esm-members", "3", "--esm-max-days", "0", "--bootstrap", "0"]
    assert main([*base, *more, "--no-output-calibration"]) == 0
    got = seen[-1]
    assert (got.members, got.esm_members, got.esm_max_days, got.bootstrap) == (4, 3, None, 0)
    assert not got.output_calibration


def test_cli_errors_are_one_line(tmp_path: Path, capsys) -> None:
    rc = main(
        [
            "evaluate",
            "iberia",
            "--bundle",
            str(tmp_path),
            "--out",
            str(tmp_path / "o"),
            "--data",
            str(tmp_path / "nowhere"),
        ]
    )
    assert rc == 2
    assert "climate4r_iberia" in capsys.readouterr().err
    rc = main(["qdm", "apply", "--input", "x.nc", "--out", str(tmp_path / "o.nc")])
    assert rc == 2
    assert "--tables" in capsys.readouterr().err


@pytest.mark.needs_data
def test_qdm_check_on_isimip_gcm(shared_data: Path, tmp_path: Path) -> None:
    """Real biased GCM: historical bias removed, change per quantile preserved (with figures)."""
    xr = pytest.importorskip("xarray")
    from precipdiff.offline.evaluate.qdm_check import QUANTILES, run_qdm_check

    res = run_qdm_check(shared_data, tmp_path)
    # the GCM has too many wet days; QDM brings the frequency to the observed one
    assert res["pr_wet_day_frequency_raw"] - res["pr_wet_day_frequency_obs"] > 0.03
    assert res["pr_wet_day_frequency_qdm"] == pytest.approx(
        res["pr_wet_day_frequency_obs"], abs=0.005
    )
    assert abs(res["pr_mean_bias_qdm"]) < 0.1 * abs(res["pr_mean_bias_raw"])
    assert abs(res["tas_mean_bias_qdm"]) < 0.02 and abs(res["tas_mean_bias_raw"]) > 1.0
    assert res["tas_max_quantile_error_qdm"] < 0.1 < res["tas_max_quantile_error_raw"]
    assert res["pr_max_quantile_error_qdm"] < 0.05
    with xr.open_dataset(tmp_path / "qdm_check_metrics.nc") as ds:
        q = np.asarray(QUANTILES)
        for var, tol_body, tol_tail in (("pr", 0.01, 0.06), ("tas", 0.1, 0.35)):
            d = np.abs(ds[f"{var}_change_qdm"].values - ds[f"{var}_change_gcm"].values)
            assert np.all(d[q <= 0.95] < tol_body), (var, d)
            assert np.all(d < tol_tail), (var, d)
    for name in ("pr_qq_historical.png", "pr_change_per_quantile.png", "README.md"):
        assert (tmp_path / name).is_file()
    from precipdiff.testing.cf import cf_failures

    assert not cf_failures([tmp_path / "qdm_check_metrics.nc"])


def _iberia_grids(shared_data: Path):
    xr = pytest.importorskip("xarray")
    from precipdiff.grids import LatLonGrid, coarsen_grid

    with xr.open_dataset(shared_data / "climate4r_iberia" / "EOBS_Iberia_pr.nc") as e:
        fine = LatLonGrid(e.lat.values[:16], e.lon.values[:28])
    return coarsen_grid(fine, 4), fine


@pytest.mark.needs_data
@pytest.mark.slow
def test_iberia_experiment_quick_run(shared_data: Path, tmp_path: Path) -> None:
    """The whole experiment end to end with a tiny random bundle and a few days."""
    from precipdiff.offline.evaluate.iberia import IberiaConfig, run_iberia
    from precipdiff.qdm import QDMTables
    from precipdiff.testing.models import make_tiny_bundle

    coarse, fine = _iberia_grids(shared_data)
    bundle = make_tiny_bundle(
        tmp_path / "b", coarse_grid=coarse, fine_grid=fine, variables=["hus850", "psl", "ta850"]
    )
    # an output calibration (synthetic tables, "fitted" before the validation winters)
    from precipdiff.offline.output_calibration import attach_output_calibration
    from precipdiff.offline.qdm_fit import fit_qdm
    from precipdiff.qdm import QDMConfig

    rng = np.random.default_rng(0)
    x = rng.gamma(0.7, 3.0, (60, *fine.shape))
    t = np.datetime64("1990-01-01") + np.arange(60).astype("timedelta64[D]")
    qcfg = QDMConfig(n_quantiles=10, group="none", kinds={"pr": "multiplicative"})
    tables = fit_qdm({"pr": 1.3 * x}, {"pr": x}, t, t, qcfg)
    tables.provenance.update({"last_day": "1990-03-01", "days": 60, "members": 1})
    attach_output_calibration(tables, bundle, default=True)
    out = tmp_path / "res"
    cfg = IberiaConfig(
        bundle=bundle,
        out=out,
        data_dir=shared_data,
        members=2,
        steps=1,
        max_days=10,
        esm_max_days=60,
        change_members=3,
        bootstrap=20,
    )
    head = run_iberia(cfg)
    assert all(np.isfinite(v) for k, v in head.items() if not k.startswith("c_change_pattern"))
    # the ESM's own bias does not depend on the model: CNRM-CM5 is wetter than E-OBS here
    assert head["b_mab_esm_own"] > 0.2
    md = (out / "README.md").read_text()
    for part in ("(a) Reanalysis-driven", "(b) ESM-driven", "(c) RCP8.5", "0.424"):
        assert part in md
    assert "runtime returns by default: the output-calibrated product" in md
    assert "| generated, output-calibrated | CRPS" in md
    assert head["a_crps_generated_output_calibrated"] > 0
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["headline"]["a_crps_generated"] > 0
    # the winter-block bootstrap of (c): the ESM against itself is paired exactly
    boot = saved["c_bootstrap_5_95"]
    own = boot["CNRM-CM5 own precipitation"]
    assert own["minus the ESM's"] == "+0.000 to +0.000"
    assert own["q0.99: draws with the ESM's sign"] == 1.0
    assert set(boot) >= {
        "generated, QDM on",
        "generated, QDM on, coarse block mean (bilinear)",
        "per-cell QDM of CNRM-CM5 precipitation",
    }
    assert "Winter-block bootstrap (20 draws)" in md
    # the chain's steps as paired differences, e.g. the output calibration's effect
    steps = saved["c_bootstrap_chain_steps_5_95"]
    assert len(steps) == 4 and all(set(v) == {"mean", "q0.9", "q0.99"} for v in steps.values())
    assert "Where along the chain the change is made" in md
    # the land-only block mean of the members is a finite product like the others
    hist_m, fut_m, rel = saved["c_change"]["generated, QDM on, coarse block mean (bilinear)"][:3]
    assert np.isfinite([hist_m, fut_m, rel]).all() and hist_m > 0
    assert -1.0 <= saved["c_esm_change_map_split_half_corr"] <= 1.0
    tables = QDMTables.load(out / "qdm_tables.safetensors")
    assert tables.stored_groups() == [0, 1, 11]  # DJF only
    for png in ("a_bias_maps.png", "a_spectra.png", "b_esm_bias_maps.png", "c_change_maps.png"):
        assert (out / png).is_file()
    from precipdiff.testing.cf import cf_failures

    assert not cf_failures(sorted(out.glob("*.nc")))  # CF: 0 errors, 0 warnings


@pytest.mark.needs_data
def test_cli_qdm_fit_attach_apply(shared_data: Path, tmp_path: Path) -> None:
    xr = pytest.importorskip("xarray")
    from precipdiff.bundle import read_manifest
    from precipdiff.testing.models import make_tiny_bundle

    coarse, fine = _iberia_grids(shared_data)
    bundle = make_tiny_bundle(
        tmp_path / "b", coarse_grid=coarse, fine_grid=fine, variables=["hus850", "psl", "ta850"]
    )
    d = shared_data / "climate4r_iberia"
    names = ["hus850", "psl", "ta850"]
    rc = main(
        [
            *("qdm", "fit", "--bundle", str(bundle), "--attach", "--n-quantiles", "20"),
            *("--ref", *[str(d / f"NCEP_Iberia_{n}.nc") for n in names]),
            *("--hist", *[str(d / f"CMIP5_Iberia_{n}.nc") for n in names]),
        ]
    )
    assert rc == 0
    slot = read_manifest(bundle).bias_correction
    assert slot is not None and slot["file"] == "qdm_tables.safetensors"
    assert set(slot["variables"]) == set(names)
    assert slot["variables"]["hus850"]["kind"] == "multiplicative"
    out = tmp_path / "hist_qdm.nc"
    rc = main(
        [
            *("qdm", "apply", "--bundle", str(bundle), "--out", str(out)),
            *("--input", *[str(d / f"CMIP5_Iberia_{n}.nc") for n in names]),
        ]
    )
    assert rc == 0
    from precipdiff.io.readers import open_predictors

    ref = open_predictors([d / f"NCEP_Iberia_{n}.nc" for n in names], names, grid=coarse)
    raw = open_predictors([d / f"CMIP5_Iberia_{n}.nc" for n in names], names, grid=coarse)
    with xr.open_dataset(out) as ds:
        for n in names:
            r, h, c = (float(x[n].mean()) for x in (ref, raw, ds))
            # in-sample: the corrected historical mean matches the reanalysis
            assert abs(c - r) < 0.1 * abs(h - r) + 1e-9 * abs(r), (n, r, h, c)
    ref.close()
    raw.close()


@pytest.mark.parametrize(("n", "m"), [(1354, 600), (1804, 600), (271, 600), (10, 3), (7, 7)])
def test_evenly_spaced_days(n: int, m: int) -> None:
    from precipdiff.offline.evaluate.report import evenly_spaced

    idx = evenly_spaced(n, m)
    assert idx.size == min(n, m) and idx[0] == 0 and idx[-1] == n - 1
    assert np.all(np.diff(idx) >= 1)
    gaps = np.diff(idx)
    assert gaps.max() - gaps.min() <= 1  # evenly spaced up to rounding
    np.testing.assert_array_equal(evenly_spaced(n, None), np.arange(n))


def test_djf_winter_counts_december_forward() -> None:
    from precipdiff.offline.evaluate.report import djf_winter

    t = np.array(["1996-12-01", "1996-12-31", "1997-01-15", "1997-02-28", "1997-12-01"])
    np.testing.assert_array_equal(
        djf_winter(t.astype("datetime64[D]")), [1997, 1997, 1997, 1997, 1998]
    )
    cftime = pytest.importorskip("cftime")
    noleap = [cftime.DatetimeNoLeap(2099, 12, 30), cftime.DatetimeNoLeap(2100, 2, 28)]
    np.testing.assert_array_equal(djf_winter(noleap), [2100, 2100])


def test_day_keys_match_across_calendars() -> None:
    cftime = pytest.importorskip("cftime")
    from precipdiff.offline.evaluate.report import day_keys

    greg = np.array(["2000-02-28T12", "2000-02-29", "2000-03-01"], dtype="datetime64[ns]")
    d360 = cftime.num2date([57, 58, 59], "days since 2000-01-01", calendar="360_day")
    np.testing.assert_array_equal(day_keys(greg), [20000228, 20000229, 20000301])
    np.testing.assert_array_equal(day_keys(d360), [20000228, 20000229, 20000230])
    common = np.intersect1d(day_keys(greg), day_keys(d360))
    np.testing.assert_array_equal(common, [20000228, 20000229])


def test_chain_steps_are_paired_differences() -> None:
    """A step that changes nothing has a zero range; a constant shift is found exactly."""
    from precipdiff.offline import metrics
    from precipdiff.offline.evaluate import iberia

    rng = np.random.default_rng(0)
    base = metrics.ChangeDraws(
        mean=rng.normal(-0.1, 0.1, 50), quantile=rng.normal(0, 0.1, (50, 2)), maps=np.zeros(1)
    )
    shifted = metrics.ChangeDraws(
        mean=base.mean + 0.02, quantile=base.quantile - 0.05, maps=np.zeros(1)
    )
    draws = {
        "regression only, QDM on": base,
        iberia.BLOCK_MEAN_ROW: base,
        "generated, QDM on": shifted,
    }
    rows = {r[0]: r[1:] for r in iberia._chain_rows(draws)}
    assert len(rows) == 2  # steps whose products are missing are left out
    large = rows["diffusion stage, large scales (block mean - regression)"]
    assert large == ["+0.000 to +0.000"] * 3
    small = rows["diffusion stage, small scales (fine - block mean)"]
    assert small == ["+0.020 to +0.020", "-0.050 to -0.050", "-0.050 to -0.050"]


def test_predictor_qdm_rows_report_derived_features() -> None:
    """The networks' derived inputs get their own row; an identity QDM keeps every change."""
    from precipdiff.features import parse_features, relative_humidity
    from precipdiff.offline.evaluate import iberia

    rng = np.random.default_rng(1)
    shape = (40, 3, 4)
    t_h = 275.0 + rng.normal(0, 2, shape)
    q_h = 0.004 * np.exp(rng.normal(0, 0.2, shape))
    hist = {"hus850": q_h, "ta850": t_h, "psl": 1.0e5 + rng.normal(0, 500, shape)}
    # warming by a spatial ramp at constant specific humidity: relative humidity falls
    ramp = np.linspace(1.0, 3.0, 12).reshape(3, 4)
    fut = {"hus850": q_h, "ta850": t_h + ramp, "psl": hist["psl"] + 100.0}
    feats = parse_features(["rh850", "psl"])
    series = {
        "esm_v": hist,
        "esm_v_qdm": hist,
        "ncep_v": hist,
        "esm_h": hist,
        "esm_f": fut,
        "esm_h_qdm": hist,
        "esm_f_qdm": fut,
    }
    kinds = {"hus850": "multiplicative", "ta850": "additive", "psl": "additive"}
    units = {"hus850": "kg kg-1", "ta850": "K", "psl": "Pa"}
    rows = {r[0]: r for r in iberia._predictor_qdm_rows(list(kinds), kinds, units, feats, series)}
    assert list(rows) == ["hus850", "ta850", "psl", "rh850"]  # identity psl: no extra row
    rh = rows["rh850"]
    assert rh[2] == "derived (relative_humidity)"
    # identity QDM: raw and mapped changes agree, maps correlate perfectly
    np.testing.assert_allclose(rh[6:9], rh[9:12], rtol=0, atol=1e-7)
    assert rh[12] == pytest.approx(1.0)
    # pooled median of all cells and days
    want = np.quantile(relative_humidity(q_h, t_h + ramp, 85000.0), 0.5) - np.quantile(
        relative_humidity(q_h, t_h, 85000.0), 0.5
    )
    assert want < -0.01
    assert rh[7] == pytest.approx(want, rel=1e-5)
    assert rows["psl"][7] == pytest.approx(100.0, rel=1e-4)
