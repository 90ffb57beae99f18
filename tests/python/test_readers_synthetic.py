"""Reader tests on small synthetic netCDF files written at test time (no shared data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from precipdiff.errors import InputError
from precipdiff.io import import_netcdf4, import_xarray
from precipdiff.io.readers import dataset_to_predictors, open_predictors


def test_missing_file_and_pattern(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        open_predictors(tmp_path / "nope.nc", ["psl"])
    with pytest.raises(InputError, match="no file matches"):
        open_predictors(str(tmp_path / "*.nc"), ["psl"])


def _write_synthetic(path: Path, calendar: str, level_name: str, level_units: str) -> None:
    nc4 = import_netcdf4()
    with nc4.Dataset(path, "w") as ds:
        ds.createDimension("time", None)
        ds.createDimension(level_name, 3)
        ds.createDimension("lat", 3)
        ds.createDimension("lon", 4)
        t = ds.createVariable("time", "f8", ("time",))
        t.units, t.calendar = "hours since 2001-02-27 00:00", calendar
        t[:] = np.arange(0, 72, 6.0)  # 12 steps of 6 h across 28 Feb -> 1 Mar (noleap)
        lev = ds.createVariable(level_name, "f8", (level_name,))
        lev.units = level_units
        lev[:] = [100000.0, 85000.0, 50000.0] if level_units == "Pa" else [1000.0, 850.0, 500.0]
        ds.createVariable("lat", "f8", ("lat",))[:] = [10.0, 0.0, -10.0]
        ds.createVariable("lon", "f8", ("lon",))[:] = [0.0, 90.0, 180.0, 270.0]
        ua = ds.createVariable("ua", "f4", ("time", level_name, "lat", "lon"))
        ua.units = "m s-1"
        ua[:] = np.arange(12 * 3 * 12, dtype=np.float32).reshape(12, 3, 3, 4) / 100.0


@pytest.mark.parametrize("calendar", ["noleap", "360_day"])
def test_cftime_calendars_and_cmip_plev(tmp_path: Path, calendar: str) -> None:
    import cftime

    path = tmp_path / "ua.nc"
    _write_synthetic(path, calendar, "plev", "Pa")
    ds = open_predictors(path, ["ua850"])
    t = ds.time.values
    assert isinstance(t[0], cftime.datetime) and t[0].calendar == calendar
    assert [(x.month, x.day) for x in t] == (
        [(2, 27), (2, 28), (3, 1)] if calendar == "noleap" else [(2, 27), (2, 28), (2, 29)]
    )
    raw = np.arange(12 * 3 * 12, dtype=np.float32).reshape(12, 3, 3, 4) / 100.0
    np.testing.assert_allclose(ds.ua850.values[1], raw[4:8, 1].mean(0)[::-1], rtol=1e-6)
    ds.close()


def test_hpa_level_and_daily_false(tmp_path: Path) -> None:
    path = tmp_path / "u.nc"
    _write_synthetic(path, "standard", "level", "millibars")
    ds = open_predictors(path, ["ua500"], daily=False)
    assert ds.sizes["time"] == 12
    ds.close()


def test_dataset_to_predictors_selects_level_and_converts(tmp_path: Path) -> None:
    path = tmp_path / "u.nc"
    _write_synthetic(path, "standard", "plev", "Pa")
    xr = import_xarray()
    with xr.open_dataset(path) as ds:
        arrays, grid = dataset_to_predictors(ds, ["ua850"])
        assert grid.shape == (3, 4) and grid.lat[0] == 10.0  # order of the data set kept
        raw = np.arange(12 * 3 * 12, dtype=np.float32).reshape(12, 3, 3, 4) / 100.0
        np.testing.assert_allclose(arrays["ua850"], raw[:, 1], rtol=1e-6)
        with pytest.raises(InputError, match=r"level 700 hPa of ua700 not available.*'850'"):
            dataset_to_predictors(ds, ["ua700"])


def test_duplicate_times_across_files(tmp_path: Path) -> None:
    a, b = tmp_path / "a.nc", tmp_path / "b.nc"
    _write_synthetic(a, "standard", "level", "hPa")
    _write_synthetic(b, "standard", "level", "hPa")
    with pytest.raises(InputError, match="overlap"):
        open_predictors([a, b], ["ua850"])


@pytest.mark.parametrize(("daily", "nt"), [("no", 12), ("yes", 3), ("auto", 3), (False, 12)])
def test_daily_option_strings(tmp_path: Path, daily: object, nt: int) -> None:
    path = tmp_path / "u.nc"
    _write_synthetic(path, "standard", "level", "hPa")
    ds = open_predictors(path, ["ua850"], daily=daily)  # type: ignore[arg-type]
    assert ds.sizes["time"] == nt
    ds.close()
    with pytest.raises(InputError, match="daily must be"):
        open_predictors(path, ["ua850"], daily="sometimes")


def test_yearly_noleap_files_lazy_across_boundary(tmp_path: Path) -> None:
    """Three yearly files (noleap, daily); a slice over a year boundary reads both files."""
    nc4 = import_netcdf4()
    for year in (2001, 2002, 2003):
        with nc4.Dataset(tmp_path / f"psl_day_{year}.nc", "w") as ds:
            ds.createDimension("time", None)
            ds.createDimension("lat", 2)
            ds.createDimension("lon", 3)
            t = ds.createVariable("time", "f8", ("time",))
            t.units, t.calendar = "days since 2001-01-01", "noleap"
            t[:] = (year - 2001) * 365 + np.arange(365) + 0.5
            ds.createVariable("lat", "f8", ("lat",))[:] = [0.0, 1.0]
            ds.createVariable("lon", "f8", ("lon",))[:] = [0.0, 1.0, 2.0]
            v = ds.createVariable("psl", "f4", ("time", "lat", "lon"))
            v.units = "hPa"
            v[:] = 1000.0 + (year - 2001) + np.zeros((365, 2, 3), np.float32)
    ds = open_predictors(str(tmp_path / "psl_day_*.nc"), ["psl"])
    assert ds.sizes["time"] == 3 * 365
    part = ds.psl.isel(time=slice(363, 367)).values
    np.testing.assert_allclose(part[:, 0, 0], [100000.0, 100000.0, 100100.0, 100100.0])
    assert ds.time.values[365].year == 2002 and ds.time.values[365].dayofyr == 1
    ds.close()


def test_scalar_plev_coordinate_checked(tmp_path: Path) -> None:
    nc4 = import_netcdf4()
    path = tmp_path / "ta500.nc"
    with nc4.Dataset(path, "w") as ds:
        ds.createDimension("time", 2)
        ds.createDimension("lat", 2)
        ds.createDimension("lon", 2)
        t = ds.createVariable("time", "f8", ("time",))
        t.units = "days since 2000-01-01"
        t[:] = [0.5, 1.5]
        ds.createVariable("lat", "f8", ("lat",))[:] = [0.0, 1.0]
        ds.createVariable("lon", "f8", ("lon",))[:] = [0.0, 1.0]
        p = ds.createVariable("plev", "f8", ())
        p.units = "Pa"
        p.assignValue(50000.0)
        v = ds.createVariable("ta", "f4", ("time", "lat", "lon"))
        v.units = "K"
        v[:] = 250.0
    with pytest.raises(InputError, match=r"recorded at 500 hPa .*ta850 needs 850 hPa"):
        open_predictors(path, ["ta850"])
    ds = open_predictors(path, ["ta500"])
    assert float(ds.ta500.values.mean()) == 250.0
    ds.close()


def test_level_attribute_in_hpa_accepted(tmp_path: Path) -> None:
    nc4 = import_netcdf4()
    path = tmp_path / "q.nc"
    with nc4.Dataset(path, "w") as ds:
        ds.level = 850.0
        ds.createDimension("time", 1)
        ds.createDimension("lat", 2)
        ds.createDimension("lon", 2)
        t = ds.createVariable("time", "f8", ("time",))
        t.units = "days since 2000-01-01"
        t[:] = [0.0]
        ds.createVariable("lat", "f8", ("lat",))[:] = [0.0, 1.0]
        ds.createVariable("lon", "f8", ("lon",))[:] = [0.0, 1.0]
        v = ds.createVariable("q", "f4", ("time", "lat", "lon"))
        v.units = "g kg-1"
        v[:] = 5.0
    ds = open_predictors(path, ["hus850"])
    np.testing.assert_allclose(ds.hus850.values, 0.005)
    ds.close()
    with pytest.raises(InputError, match=r"recorded at 850 hPa \(attribute level=850.0\)"):
        open_predictors(path, ["hus700"])


def test_standard_and_proleptic_gregorian_combine(tmp_path: Path) -> None:
    a, b = tmp_path / "a.nc", tmp_path / "b.nc"
    _write_synthetic(a, "standard", "level", "hPa")
    _write_synthetic(b, "proleptic_gregorian", "level", "hPa")
    nc4 = import_netcdf4()
    with nc4.Dataset(b, "a") as ds:
        ds.renameVariable("ua", "va")
    ds = open_predictors([a, b], ["ua850", "va850"])
    assert ds.sizes["time"] == 3
    ds.close()
    c = tmp_path / "c.nc"
    _write_synthetic(c, "noleap", "level", "hPa")
    with nc4.Dataset(c, "a") as d:
        d.renameVariable("ua", "va")
    with pytest.raises(InputError, match="different calendars"):
        open_predictors([a, c], ["ua850", "va850"])
