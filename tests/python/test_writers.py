"""Tests for precipdiff.io.writers: CF-1.8 attributes, provenance, atomicity, streaming."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from precipdiff import __version__
from precipdiff.errors import ConfigError, InputError
from precipdiff.grids import LatLonGrid
from precipdiff.io import import_netcdf4, import_xarray
from precipdiff.io.atomic import atomic_path
from precipdiff.io.writers import Compression, PrecipStreamWriter, write_precip_netcdf

GRID = LatLonGrid.regular(2.0, lat_min=40, lat_max=46, lon_min=-4, lon_max=4, descending=True)


def _data(nt: int = 3, nm: int = 2) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.gamma(0.6, 4.0, (nt, nm, *GRID.shape)).astype(np.float32)


def _times(nt: int = 3) -> np.ndarray:
    return np.datetime64("2001-01-01T12:00") + np.arange(nt) * np.timedelta64(1, "D")


def test_cf_attributes_and_round_trip(tmp_path: Path) -> None:
    x = _data()
    path = write_precip_netcdf(
        tmp_path / "out.nc",
        x,
        GRID,
        _times(),
        attrs={"institution": "test", "history": "older step"},
        bundle_hash="sha256:abc",
        command_line="precipdiff generate --demo",
    )
    nc4 = import_netcdf4()
    with nc4.Dataset(path) as ds:
        assert ds.Conventions == "CF-1.8"
        assert ds.precipdiff_version == __version__
        assert ds.bundle_hash == "sha256:abc"
        assert ds.command_line == "precipdiff generate --demo"
        assert ds.history.endswith("precipdiff generate --demo\nolder step")
        assert ds.institution == "test"
        pr = ds["pr"]
        assert pr.dimensions == ("time", "member", "lat", "lon")
        assert pr.standard_name == "lwe_precipitation_rate" and pr.units == "mm day-1"
        for name, std, units in (
            ("lat", "latitude", "degrees_north"),
            ("lon", "longitude", "degrees_east"),
        ):
            v = ds[name]
            assert v.standard_name == std and v.units == units and v.bounds == f"{name}_bnds"
        np.testing.assert_allclose(ds["lat_bnds"][:], GRID.lat_bounds)
        assert ds["time"].calendar == "standard" and "since" in ds["time"].units
        assert list(ds["member"][:]) == [1, 2]
        assert pr.filters()["zlib"] is True
        np.testing.assert_array_equal(pr[:], x)
    xr = import_xarray()
    with xr.open_dataset(path) as ds:
        np.testing.assert_array_equal(ds.time.values, _times())


def test_kg_m2_s_units_and_no_members(tmp_path: Path) -> None:
    x = _data()[:, 0]
    path = write_precip_netcdf(tmp_path / "f.nc", x, GRID, _times(), units="kg m-2 s-1")
    nc4 = import_netcdf4()
    with nc4.Dataset(path) as ds:
        assert ds["pr"].standard_name == "precipitation_flux" and ds["pr"].units == "kg m-2 s-1"
        assert ds["pr"].dimensions == ("time", "lat", "lon")
        np.testing.assert_allclose(ds["pr"][:], x / 86400.0, rtol=1e-6)


def test_noleap_calendar_and_bounds(tmp_path: Path) -> None:
    import cftime

    t = [cftime.DatetimeNoLeap(2001, 2, 28, 12), cftime.DatetimeNoLeap(2001, 3, 1, 12)]
    b = [
        [cftime.DatetimeNoLeap(2001, 2, 28), cftime.DatetimeNoLeap(2001, 3, 1)],
        [cftime.DatetimeNoLeap(2001, 3, 1), cftime.DatetimeNoLeap(2001, 3, 2)],
    ]
    path = write_precip_netcdf(
        tmp_path / "n.nc",
        _data(2),
        GRID,
        t,
        calendar="noleap",
        time_bounds=b,
        time_units="days since 2001-01-01",
    )
    nc4 = import_netcdf4()
    with nc4.Dataset(path) as ds:
        np.testing.assert_allclose(ds["time"][:], [58.5, 59.5])
        np.testing.assert_allclose(ds["time_bnds"][:], [[58, 59], [59, 60]])
        assert ds["time"].bounds == "time_bnds"


def test_lossy_compression_option(tmp_path: Path) -> None:
    grid = LatLonGrid.regular(0.5, lat_min=30, lat_max=49.5, lon_min=0, lon_max=19.5)
    x = np.random.default_rng(1).gamma(0.6, 4.0, (4, 3, *grid.shape)).astype(np.float32)
    a = write_precip_netcdf(tmp_path / "a.nc", x, grid, _times(4))
    comp = Compression(complevel=5, significant_digits=2)
    b = write_precip_netcdf(tmp_path / "b.nc", x, grid, _times(4), compression=comp)
    nc4 = import_netcdf4()
    with nc4.Dataset(b) as ds:
        np.testing.assert_allclose(ds["pr"][:], x, rtol=0.01, atol=0.01)
    assert b.stat().st_size < 0.7 * a.stat().st_size
    with pytest.raises(ConfigError, match="complevel"):
        Compression(complevel=0)
    with pytest.raises(ConfigError, match="unknown compression keys"):
        Compression.from_dict({"level": 3})


def test_exception_mid_write_leaves_no_file(tmp_path: Path) -> None:
    x = _data().astype(object)
    x[2, 0, 0, 0] = "not a number"  # fails when step 2 is written
    target = tmp_path / "out.nc"
    with pytest.raises(ValueError):
        write_precip_netcdf(target, x, GRID, _times())
    assert list(tmp_path.iterdir()) == []
    # An existing file is not replaced by a failed write.
    write_precip_netcdf(target, _data(), GRID, _times())
    before = target.read_bytes()
    with pytest.raises(ValueError):
        write_precip_netcdf(target, x, GRID, _times())
    assert target.read_bytes() == before
    assert list(tmp_path.iterdir()) == [target]


def test_bad_inputs_named(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not match"):
        write_precip_netcdf(tmp_path / "x.nc", np.zeros((1, 1, 3, 3)), GRID, _times(1))
    with pytest.raises(InputError, match="2 time values given for 3"):
        write_precip_netcdf(tmp_path / "x.nc", _data(), GRID, _times(2))
    with pytest.raises(InputError, match="output units"):
        write_precip_netcdf(tmp_path / "x.nc", _data(), GRID, _times(), units="mm")
    p = write_precip_netcdf(tmp_path / "y.nc", _data(), GRID, _times(), units="mm day-1")
    p.unlink()
    with pytest.raises(InputError, match="3 member ids given for 2"):
        write_precip_netcdf(tmp_path / "x.nc", _data(), GRID, _times(), members=[1, 2, 3])
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_cleans_up(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "a.txt") as tmp:
        tmp.write_text("partial")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_stream_writer_publishes_on_finalize(tmp_path: Path) -> None:
    target = tmp_path / "stream" / "pr_2001-01.nc"
    x = _data(3, 2)
    w = PrecipStreamWriter(target, GRID, members=2, time_bounds=True, bundle_hash="h1")
    for i, t in enumerate(_times(3)):
        w.append(x[i], t, bounds=[t - np.timedelta64(12, "h"), t + np.timedelta64(12, "h")])
        assert not target.exists()
    assert w.finalize() == target and w.closed
    nc4 = import_netcdf4()
    with nc4.Dataset(target) as ds:
        np.testing.assert_array_equal(ds["pr"][:], x)
        assert ds["time"].shape == (3,) and ds.bundle_hash == "h1"
        np.testing.assert_allclose(np.diff(ds["time_bnds"][:], axis=1), 24.0)
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]
    with pytest.raises(InputError, match="already closed"):
        w.append(x[0], _times(1)[0])


def test_stream_writer_error_leaves_no_file(tmp_path: Path) -> None:
    target = tmp_path / "pr.nc"
    with (
        pytest.raises(InputError, match="step shape"),
        PrecipStreamWriter(target, GRID, members=2) as w,
    ):
        w.append(_data(1, 2)[0], _times(1)[0])
        w.append(np.zeros((3, 3)), _times(1)[0])
    assert list(tmp_path.iterdir()) == []
    with PrecipStreamWriter(target, GRID) as w2:
        w2.append(_data(1, 1)[0, 0], 5.0)
    assert target.exists()
