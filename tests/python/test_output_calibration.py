"""Output calibration: quantile mapping of generated precipitation onto observations.

Unit tier: the mapping against known answers (a known factor, the trace, cells
without observations, named errors). Integration tier: fitted from a tiny bundle's
own output, attached to the bundle, applied by the generator and by the plugin
(namelist choice, restart identity, bit-for-bit restarts).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from precipdiff.bundle.manifest import check_output_calibration as check_entry
from precipdiff.errors import BundleError, ConfigError, InputError
from precipdiff.generator import PrecipGenerator
from precipdiff.grids import LatLonGrid
from precipdiff.offline.output_calibration import (
    attach_output_calibration,
    fit_output_calibration,
)
from precipdiff.offline.qdm_fit import fit_qdm
from precipdiff.qdm import QDMConfig
from precipdiff.qdm.calibration import OutputCalibration
from precipdiff.server import Plugin
from precipdiff.testing.models import make_tiny_bundle

MODEL = LatLonGrid.regular(2.0, lat_min=31.0, lat_max=49.0, lon_min=1.0, lon_max=19.0)
COARSE = LatLonGrid.regular(4.0, lat_min=32.0, lat_max=48.0, lon_min=2.0, lon_max=18.0)
FINE = LatLonGrid.regular(1.0, lat_min=30.5, lat_max=49.5, lon_min=0.5, lon_max=19.5)
DT = 21600.0


def _days(n: int) -> np.ndarray:
    return np.datetime64("2000-01-01") + np.arange(n).astype("timedelta64[D]")


def _tables(gen: np.ndarray, obs: np.ndarray, group: str = "none", trace: float = 0.05) -> object:
    cfg = QDMConfig(
        n_quantiles=20, group=group, kinds={"pr": "multiplicative"}, trace={"pr": trace}
    )
    t = _days(obs.shape[0])
    return fit_qdm({"pr": obs}, {"pr": gen}, t, t, cfg)


# ----------------------------------------------------------------------------- unit tier
def test_known_factor_is_recovered() -> None:
    rng = np.random.default_rng(0)
    gen = rng.exponential(2.0, (4000, 3, 4))
    obs = 1.5 * gen  # every quantile x1.5: the factor is exactly 1.5
    cal = OutputCalibration(_tables(gen, obs, trace=0.0))  # type: ignore[arg-type]
    x = rng.exponential(2.0, (50, 2, 3, 4)).astype(np.float32)
    y = cal.apply(x)
    assert y.shape == x.shape and y.dtype == np.float32
    np.testing.assert_allclose(y / x, 1.5, rtol=1e-5)
    # beyond the outer node the factor is held: relative changes of extremes pass through
    big = np.full((1, 1, 3, 4), 60.0, np.float32)
    np.testing.assert_allclose(cal.apply(2 * big) / cal.apply(big), 2.0, rtol=1e-6)


def test_drizzle_is_removed_by_the_trace_and_order_is_kept() -> None:
    rng = np.random.default_rng(1)
    n = 3000
    wet_obs = rng.random((n, 2, 2)) < 0.3
    obs = np.where(wet_obs, rng.gamma(0.8, 6.0, (n, 2, 2)), 0.0)
    gen = rng.gamma(0.8, 4.0, (n, 2, 2)) + 0.2  # too much drizzle: always >= 0.2
    cal = OutputCalibration(_tables(gen, obs))  # type: ignore[arg-type]
    x = (rng.gamma(0.8, 4.0, (n, 2, 2)) + 0.2).astype(np.float32)
    y = cal.apply(x[:, None])[:, 0]
    wet_frac = float(np.mean(y >= 1.0))
    assert abs(wet_frac - float(np.mean(obs >= 1.0))) < 0.03
    order = np.argsort(x[:, 0, 0])
    assert np.all(np.diff(y[order, 0, 0]) >= 0)  # monotone in every cell


def test_cells_without_observations_are_left_unchanged() -> None:
    rng = np.random.default_rng(2)
    gen = rng.exponential(2.0, (500, 2, 3))
    obs = 2.0 * gen
    obs[:, 0, 0] = np.nan  # a sea cell
    gen[:, 0, 0] = np.nan
    cal = OutputCalibration(_tables(gen, obs))  # type: ignore[arg-type]
    x = rng.exponential(2.0, (5, 1, 2, 3)).astype(np.float32)
    y = cal.apply(x)
    np.testing.assert_array_equal(y[..., 0, 0], x[..., 0, 0])
    assert np.isfinite(y).all()
    # the public factor table says the same: identity on the sea cell, 2 on land
    # (above the lowest node, where the trace treatment of near-zero values acts)
    f = cal.factors(0)
    assert f.shape == (cal.nodes.size, 2, 3)
    np.testing.assert_array_equal(f[:, 0, 0], 1.0)
    land = np.ones((2, 3), bool)
    land[0, 0] = False
    np.testing.assert_allclose(f[1:, land], 2.0, rtol=1e-6)
    f[...] = 0.0  # a copy: the calibration is not changed through it
    np.testing.assert_array_equal(cal.apply(x), y)
    with pytest.raises(BundleError, match="no group 3"):
        cal.factors(3)


def test_monthly_tables_need_dates_and_a_fitted_month() -> None:
    rng = np.random.default_rng(3)
    gen = rng.exponential(2.0, (90, 2, 2))
    cal = OutputCalibration(_tables(gen, 1.2 * gen, group="month"))  # type: ignore[arg-type]
    assert cal.needs_dates
    x = np.ones((2, 1, 2, 2), np.float32)
    with pytest.raises(ConfigError, match="per month"):
        cal.apply(x)
    cal.apply(x, np.array(["2000-01-05", "2000-02-05"], dtype="datetime64[D]"))
    with pytest.raises(InputError, match="no table for season group"):
        cal.apply(x, np.array(["2000-07-05", "2000-07-06"], dtype="datetime64[D]"))
    with pytest.raises(InputError, match="1 dates for 2 time steps"):
        cal.apply(x, np.array(["2000-01-05"], dtype="datetime64[D]"))


def test_bad_fields_are_named() -> None:
    rng = np.random.default_rng(4)
    gen = rng.exponential(2.0, (100, 2, 2))
    cal = OutputCalibration(_tables(gen, gen))  # type: ignore[arg-type]
    with pytest.raises(InputError, match="expected"):
        cal.apply(np.ones((1, 3, 3), np.float32))
    with pytest.raises(InputError, match="non-finite"):
        cal.apply(np.full((1, 2, 2), np.nan, np.float32))
    with pytest.raises(InputError, match="negative"):
        cal.apply(np.full((1, 2, 2), -1.0, np.float32))


def test_only_a_multiplicative_pr_table_is_a_calibration() -> None:
    rng = np.random.default_rng(5)
    t = _days(50)
    x = rng.exponential(2.0, (50, 2, 2))
    other = fit_qdm({"psl": x}, {"psl": x}, t, t, QDMConfig(n_quantiles=5, group="none"))
    with pytest.raises(BundleError, match="exactly the variable 'pr'"):
        OutputCalibration(other)
    additive = fit_qdm(
        {"pr": x}, {"pr": x}, t, t, QDMConfig(n_quantiles=5, group="none", kinds={"pr": "additive"})
    )
    with pytest.raises(BundleError, match="multiplicative"):
        OutputCalibration(additive)
    for entry, msg in (
        ([1], "mapping"),
        ({"method": "qdm"}, "lacks key"),
        ({"method": "x", "file": "f", "sha256": "0", "default": True}, "'qdm'"),
        ({"method": "qdm", "file": "f", "sha256": "0", "default": 1}, "true or false"),
        (
            {"method": "qdm", "file": "f", "sha256": "0", "default": True, "variables": {}},
            "exactly the variable",
        ),
    ):
        with pytest.raises(BundleError, match=msg):
            check_entry(entry)


# ---------------------------------------------------------------------- integration tier
@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny bundle and a copy with an output calibration fitted on its own output."""
    root = tmp_path_factory.mktemp("cal")
    plain = make_tiny_bundle(root / "plain", coarse_grid=COARSE, fine_grid=FINE, seed=1)
    cal = root / "calibrated"
    shutil.copytree(plain, cal)
    gen = PrecipGenerator.from_bundle(plain, device="cpu")
    rng = np.random.default_rng(6)
    nt = 40
    lat2 = np.meshgrid(COARSE.lat, COARSE.lon, indexing="ij")[0]
    pred = {
        "hus850": 0.007 + 0.002 * rng.random((nt, *COARSE.shape)),
        "ua850": 5.0 + 3.0 * rng.standard_normal((nt, *COARSE.shape)),
        "va850": -2.0 + 3.0 * rng.standard_normal((nt, *COARSE.shape)),
        "psl": 101300.0 + 500.0 * np.cos(np.deg2rad(lat2 * 7))[None] + np.zeros((nt, 1, 1)),
    }
    obs = 2.0 * gen.generate(pred, members=1, seed=99).fine[:, 0]  # "observed": twice as wet
    obs[:, 0, :] = np.nan  # a row without observations
    tables = fit_output_calibration(
        gen, pred, obs, _days(nt), members=2, n_quantiles=10, trace=0.0, batch_days=16
    )
    entry = attach_output_calibration(tables, cal, default=True)
    assert entry["default"] is True and entry["provenance"]["days"] == nt
    return plain, cal


def _pred(nt: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "hus850": 0.007 + 0.002 * rng.random((nt, *COARSE.shape)),
        "ua850": 5.0 + 3.0 * rng.standard_normal((nt, *COARSE.shape)),
        "va850": -2.0 + 3.0 * rng.standard_normal((nt, *COARSE.shape)),
        "psl": 101300.0 + 300.0 * rng.standard_normal((nt, *COARSE.shape)),
    }


def test_generator_applies_the_bundles_calibration(calibrated: tuple[Path, Path]) -> None:
    plain, cal = calibrated
    g_plain = PrecipGenerator.from_bundle(plain, device="cpu")
    g_cal = PrecipGenerator.from_bundle(cal, device="cpu")
    assert not g_plain.calibrates() and g_cal.calibrates()
    pred = _pred(6, 7)
    raw = g_plain.generate(pred, members=3, seed=1)
    on = g_cal.generate(pred, members=3, seed=1)
    off = g_cal.generate(pred, members=3, seed=1, output_calibration=False)
    np.testing.assert_array_equal(off.fine, raw.fine)  # same bundle weights, same noise
    np.testing.assert_array_equal(on.coarse, raw.coarse)
    assert on.attrs["output_calibration"] is True and off.attrs["output_calibration"] is False
    np.testing.assert_array_equal(on.fine[..., 0, :], raw.fine[..., 0, :])  # no observations
    wet = raw.fine[..., 1:, :] > 0.5
    ratio = float(np.median(on.fine[..., 1:, :][wet] / raw.fine[..., 1:, :][wet]))
    assert 1.7 < ratio < 2.3, ratio  # the fitted "twice as wet"
    with pytest.raises(ConfigError, match="has none"):
        g_plain.generate(pred, output_calibration=True)
    assert on.to_dataset().attrs["output_calibration"] == 1


def test_tampered_calibration_is_refused(calibrated: tuple[Path, Path], tmp_path: Path) -> None:
    _, cal = calibrated
    bad = tmp_path / "bad"
    shutil.copytree(cal, bad)
    f = bad / "output_calibration.safetensors"
    raw = bytearray(f.read_bytes())
    raw[-4] ^= 0xFF
    f.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match="sha256"):
        PrecipGenerator.from_bundle(bad, device="cpu")
    f.unlink()
    with pytest.raises(BundleError, match="missing its output calibration"):
        PrecipGenerator.from_bundle(bad, device="cpu")


def test_tables_on_the_wrong_grid_are_not_attached(tmp_path: Path) -> None:
    plain = make_tiny_bundle(tmp_path / "b", coarse_grid=COARSE, fine_grid=FINE, seed=1)
    rng = np.random.default_rng(8)
    x = rng.exponential(2.0, (50, 3, 3))
    with pytest.raises(BundleError, match="fine grid"):
        attach_output_calibration(_tables(x, x), plain)  # type: ignore[arg-type]
    manifest = json.loads((plain / "manifest.json").read_text())
    assert manifest.get("output_calibration") is None


def _nml(tmp_path: Path, bundle: Path, extra: str, name: str) -> str:
    p = tmp_path / name
    p.write_text(f"&precipdiff_nml\n bundle_path = '{bundle}', device = 'cpu'\n {extra}\n/\n")
    return str(p)


def _drive(plugin: Plugin, steps: range) -> list[np.ndarray]:
    lat2, lon2 = np.meshgrid(MODEL.lat, MODEL.lon, indexing="ij")
    out = []
    for s in steps:
        ph = 0.4 * s
        plugin.set_field("hus850", 0.007 + 0.003 * np.sin(np.deg2rad(lon2 * 12) + ph))
        plugin.set_field("ua850", 5.0 + 4.0 * np.cos(np.deg2rad(lat2 * 9) - ph))
        plugin.set_field("va850", -2.0 + 3.0 * np.sin(np.deg2rad(lat2 * 5 + lon2 * 7) + ph))
        plugin.set_field("psl", 101300.0 + 900.0 * np.cos(np.deg2rad(lon2 * 6) + ph))
        if plugin.step((s + 1) * DT, DT):
            out.append(np.array(plugin.output_members()))
    return out


def test_plugin_namelist_choice_and_restart(calibrated: tuple[Path, Path], tmp_path: Path) -> None:
    plain, cal = calibrated
    common = "members = 2, output_units = 'mm/day'"
    p_on = Plugin.from_namelist(_nml(tmp_path, cal, common, "on.nml"), MODEL.lon, MODEL.lat)
    p_off = Plugin.from_namelist(
        _nml(tmp_path, cal, common + ", output_calibration = 'off'", "off.nml"),
        MODEL.lon,
        MODEL.lat,
    )
    on, off = _drive(p_on, range(8)), _drive(p_off, range(8))
    assert len(on) == 2
    assert not np.allclose(on[0], off[0])
    # offline generation of the same window with the calibration reproduces the plugin
    assert p_on.engine.output_calibration and not p_off.engine.output_calibration
    p_on.write_restart(str(tmp_path / "on.nc"))
    p_off.close()
    # a restart written with the calibration is refused by a run without it
    p_off2 = Plugin.from_namelist(
        _nml(tmp_path, cal, common + ", output_calibration = 'off'", "off2.nml"),
        MODEL.lon,
        MODEL.lat,
    )
    with pytest.raises(InputError, match="output_calibration"):
        p_off2.read_restart(str(tmp_path / "on.nc"))
    p_off2.close()
    # restart bit for bit with the calibration on
    full = Plugin.from_namelist(_nml(tmp_path, cal, common, "full.nml"), MODEL.lon, MODEL.lat)
    ref = _drive(full, range(16))
    full.close()
    second = Plugin.from_namelist(_nml(tmp_path, cal, common, "s.nml"), MODEL.lon, MODEL.lat)
    second.read_restart(str(tmp_path / "on.nc"))
    rest = _drive(second, range(8, 16))
    second.close()
    p_on.close()
    for a, b in zip(on + rest, ref, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ConfigError, match="output_calibration = 'on'"):
        Plugin.from_namelist(
            _nml(tmp_path, plain, "output_calibration = 'on'", "need.nml"), MODEL.lon, MODEL.lat
        )
    with pytest.raises(ConfigError, match="output_calibration"):
        Plugin.from_namelist(
            _nml(tmp_path, cal, "output_calibration = 'yes'", "bad.nml"), MODEL.lon, MODEL.lat
        )
