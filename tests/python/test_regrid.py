"""Tests for precipdiff.grids.Regridder: bilinear, conservative, seams, poles, SCRIP."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from precipdiff.errors import GridError
from precipdiff.grids import LatLonGrid, Regridder, coarsen_block_mean, coarsen_grid
from precipdiff.io.scrip import read_scrip_weights, write_scrip_weights


def smooth(grid: LatLonGrid) -> np.ndarray:
    lat = np.deg2rad(grid.lat)[:, None]
    lon = np.deg2rad(grid.lon)[None, :]
    return (2.0 + np.cos(lat) * np.cos(lon) + 0.5 * np.sin(lat)).astype(np.float64)


def test_bilinear_identity_on_same_grid() -> None:
    g = LatLonGrid.regular(5.0, descending=True)
    x = np.random.default_rng(0).random((3, *g.shape))
    r = Regridder(g, g)
    np.testing.assert_allclose(r(x), x, atol=1e-12)


def test_bilinear_linear_function_exact_regional() -> None:
    src = LatLonGrid.regular(1.0, lat_min=30, lat_max=50, lon_min=-10, lon_max=10)
    dst = LatLonGrid.regular(0.25, lat_min=31, lat_max=49, lon_min=-9, lon_max=9)
    f = 3.0 * src.lat[:, None] - 2.0 * src.lon[None, :]
    out = Regridder(src, dst)(f)
    np.testing.assert_allclose(out, 3.0 * dst.lat[:, None] - 2.0 * dst.lon[None, :], atol=1e-10)


def test_periodic_seam_no_discontinuity() -> None:
    src = LatLonGrid.regular(2.0)  # 0..358
    dst = LatLonGrid(np.array([0.0]), np.array([358.5, 359.0, 359.5, 0.0, 0.5]))
    f = np.broadcast_to(np.cos(np.deg2rad(src.lon))[None, :], src.shape)
    out = Regridder(src, dst)(f)[0]
    # Linear between 358 and 360(=0): values follow the chord without a jump.
    c358, c0 = np.cos(np.deg2rad(358.0)), 1.0
    expected = c358 + (c0 - c358) * (np.array([358.5, 359.0, 359.5, 360.0]) - 358.0) / 2.0
    np.testing.assert_allclose(out[:4], expected, atol=1e-12)


def test_lon_conventions_give_same_answer() -> None:
    src = LatLonGrid.regular(1.0)  # 0..359
    src_alt = LatLonGrid.regular(1.0, lon_min=-180.0)  # -180..179
    dst = LatLonGrid.regular(0.25, lat_min=-10, lat_max=10, lon_min=-20, lon_max=20)
    f = smooth(src)
    f_alt = np.roll(f, 180, axis=1)  # same physical field in the other convention
    assert np.allclose(
        src_alt.lon, np.roll(src.lon, 180) - np.where(np.roll(src.lon, 180) >= 180, 360, 0)
    )
    np.testing.assert_allclose(Regridder(src, dst)(f), Regridder(src_alt, dst)(f_alt), atol=1e-12)


def test_descending_source_and_destination() -> None:
    asc = LatLonGrid.regular(2.0, lat_min=-40, lat_max=40, lon_min=0, lon_max=40)
    desc = LatLonGrid(asc.lat[::-1], asc.lon)
    dst_a = LatLonGrid.regular(0.5, lat_min=-30, lat_max=30, lon_min=5, lon_max=35)
    dst_d = LatLonGrid(dst_a.lat[::-1], dst_a.lon)
    f = smooth(asc)
    ref = Regridder(asc, dst_a)(f)
    np.testing.assert_allclose(Regridder(desc, dst_a)(f[::-1]), ref, atol=1e-12)
    np.testing.assert_allclose(Regridder(asc, dst_d)(f), ref[::-1], atol=1e-12)
    for method in ("conservative",):
        ref_c = Regridder(asc, dst_a, method)(f)
        np.testing.assert_allclose(Regridder(desc, dst_d, method)(f[::-1]), ref_c[::-1], atol=1e-12)


def test_poles_covered_by_cell_centred_global_source() -> None:
    src = LatLonGrid.regular(1.0, lat_min=-89.5, lat_max=89.5, lon_min=0.5)  # 180x360 centres
    assert src.periodic
    dst = LatLonGrid.regular(1.0)  # includes +-90
    out = Regridder(src, dst)(np.ones(src.shape))
    np.testing.assert_allclose(out, 1.0)
    f = smooth(src)
    pole = Regridder(src, dst)(f)[-1]
    ring = Regridder(src, LatLonGrid(np.array([89.5]), dst.lon))(f)[0]
    np.testing.assert_allclose(pole, ring, atol=1e-12)  # nearest ring up to the pole


@pytest.mark.parametrize("method", ["bilinear", "conservative"])
def test_uncovered_destination_raises_naming_region(method: str) -> None:
    src = LatLonGrid.regular(1.0, lat_min=30, lat_max=50, lon_min=-10, lon_max=10)
    with pytest.raises(GridError, match=r"latitudes .*55.*not covered"):
        Regridder(
            src, LatLonGrid.regular(1.0, lat_min=40, lat_max=55, lon_min=0, lon_max=5), method
        )
    with pytest.raises(GridError, match=r"longitudes .*15.*not covered"):
        Regridder(
            src, LatLonGrid.regular(1.0, lat_min=40, lat_max=45, lon_min=0, lon_max=15), method
        )


def test_regional_west_of_zero_matched_across_zero() -> None:
    src = LatLonGrid.regular(1.0, lat_min=0, lat_max=10, lon_min=350, lon_max=370 - 360 + 360)
    dst = LatLonGrid(np.array([5.0]), np.array([-5.0, 0.0, 5.0]))
    f = np.broadcast_to(src.lon_continuous[None, :], src.shape)
    np.testing.assert_allclose(Regridder(src, dst)(f)[0], [355.0, 360.0, 365.0])


def test_conservative_conserves_area_integral_global() -> None:
    fine = LatLonGrid.regular(0.5, lat_min=-89.75, lat_max=89.75, lon_min=0.25)
    coarse = LatLonGrid.regular(3.0, lat_min=-88.5, lat_max=88.5, lon_min=-178.5)
    rng = np.random.default_rng(1)
    x = rng.gamma(0.5, 3.0, fine.shape)
    for a, b, f in ((fine, coarse, x), (coarse, fine, rng.random(coarse.shape))):
        y = Regridder(a, b, "conservative")(f)
        ia = (f * a.cell_area(1.0)).sum()
        ib = (y * b.cell_area(1.0)).sum()
        assert ib == pytest.approx(ia, rel=1e-12)


def test_conservative_constant_preserved_and_weights_sum_one() -> None:
    src = LatLonGrid.regular(1.0, descending=True)
    dst = LatLonGrid.regular(2.5, lat_min=-88.75, lat_max=88.75, lon_min=1.25)
    r = Regridder(src, dst, "conservative")
    np.testing.assert_allclose(np.asarray(r.weights.sum(axis=1)).ravel(), 1.0, atol=1e-12)
    np.testing.assert_allclose(r(np.full(src.shape, 7.0)), 7.0, atol=1e-12)


def test_conservative_equals_area_weighted_block_mean() -> None:
    fine = LatLonGrid.regular(0.5, lat_min=35.25, lat_max=44.75, lon_min=-9.75, lon_max=3.75)
    coarse = coarsen_grid(fine, 4)
    x = np.random.default_rng(2).random((2, *fine.shape))
    r = Regridder(fine, coarse, "conservative")
    np.testing.assert_allclose(r(x), coarsen_block_mean(x, 4, grid=fine), atol=1e-12)


def test_nan_aware_renormalises_and_propagates() -> None:
    src = LatLonGrid.regular(0.5, lat_min=35.25, lat_max=38.75, lon_min=0.25, lon_max=3.75)
    dst = coarsen_grid(src, 4)
    x = np.ones(src.shape, dtype=np.float32) * 2.0
    x[0, :2] = np.nan
    r = Regridder(src, dst, "conservative", skipna=True)
    out = r(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, 2.0, rtol=1e-6)
    plain = r(x, skipna=False)
    assert np.isnan(plain[0, 0]) and np.isfinite(plain.ravel()[1:]).all()
    assert np.isnan(r(np.full(src.shape, np.nan, np.float32))).all()


def test_batched_float32_layout() -> None:
    src = LatLonGrid.regular(10.0)
    dst = LatLonGrid.regular(5.0, descending=True)
    r = Regridder(src, dst)
    x = np.random.default_rng(3).random((2, 3, *src.shape)).astype(np.float32)
    y = r(x)
    assert y.shape == (2, 3, *dst.shape) and y.dtype == np.float32 and y.flags.c_contiguous
    np.testing.assert_allclose(y[1, 2], r(x[1, 2]), rtol=1e-6)
    with pytest.raises(GridError, match="does not end with the source grid shape"):
        r(np.zeros((4, 5)))


def test_unknown_method() -> None:
    g = LatLonGrid.regular(10.0)
    with pytest.raises(GridError, match="unknown regridding method 'nearest'"):
        Regridder(g, g, "nearest")  # type: ignore[arg-type]


def test_scrip_round_trip(tmp_path: Path) -> None:
    src = LatLonGrid.regular(2.0, descending=True)
    dst = LatLonGrid.regular(1.0, lat_min=20, lat_max=60, lon_min=-30, lon_max=40)
    r = Regridder(src, dst, "conservative")
    path = tmp_path / "w.nc"
    write_scrip_weights(r, path)
    r2 = read_scrip_weights(path)
    assert r2.src_shape == src.shape and r2.dst_shape == dst.shape
    assert r2.src == src and r2.dst is not None and r2.dst.allclose(dst)
    x = smooth(src)
    np.testing.assert_allclose(r2(x), r(x), atol=1e-14)
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind


def test_scrip_unstructured_source(tmp_path: Path) -> None:
    """An ESM on an unstructured grid (e.g. cubed sphere) supplies its own weights."""
    from precipdiff.io import import_netcdf4

    nc4 = import_netcdf4()
    path = tmp_path / "cs.nc"
    nsrc, dst = 6, LatLonGrid(np.array([0.0, 10.0]), np.array([0.0, 10.0, 20.0]))
    rows = np.repeat(np.arange(1, 7), 2)  # 1-based
    cols = np.array([1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 1])
    s = np.full(12, 0.5)
    with nc4.Dataset(path, "w") as ds:
        ds.createDimension("n_a", nsrc)
        ds.createDimension("n_b", 6)
        ds.createDimension("n_s", 12)
        ds.createDimension("src_grid_rank", 1)
        ds.createDimension("dst_grid_rank", 2)
        ds.createVariable("row", "i4", ("n_s",))[:] = rows
        ds.createVariable("col", "i4", ("n_s",))[:] = cols
        ds.createVariable("S", "f8", ("n_s",))[:] = s
        ds.createVariable("src_grid_dims", "i4", ("src_grid_rank",))[:] = [nsrc]
        ds.createVariable("dst_grid_dims", "i4", ("dst_grid_rank",))[:] = [3, 2]  # (nlon, nlat)
    r = read_scrip_weights(path, dst=dst)
    assert r.src_shape == (6,) and r.dst_shape == (2, 3) and r.src is None
    x = np.arange(6.0)
    np.testing.assert_allclose(r(x).ravel(), [0.5, 1.5, 2.5, 3.5, 4.5, 2.5])


def test_scrip_bad_files(tmp_path: Path) -> None:
    with pytest.raises(GridError, match="does not exist"):
        read_scrip_weights(tmp_path / "nope.nc")
    from precipdiff.io import import_netcdf4

    nc4 = import_netcdf4()
    p = tmp_path / "bad.nc"
    with nc4.Dataset(p, "w") as ds:
        ds.createDimension("n_s", 1)
        ds.createVariable("row", "i4", ("n_s",))[:] = [1]
    with pytest.raises(GridError, match=r"missing variables \['col', 'S'\]"):
        read_scrip_weights(p)


def test_from_weights_shape_check() -> None:
    with pytest.raises(GridError, match="weight matrix has shape"):
        Regridder.from_weights(sp.eye(4, format="csr"), (2, 3), (2, 2))


@pytest.mark.parametrize("method", ["bilinear", "conservative"])
def test_regional_edge_within_tolerance_west_of_source(method: str) -> None:
    """A destination edge a hair west of the source's west edge must not wrap by 360."""
    src = LatLonGrid.regular(0.5, lat_min=35.25, lat_max=38.75, lon_min=-9.75, lon_max=3.75)
    dst = coarsen_grid(src, 4)
    shifted = LatLonGrid(dst.lat, dst.lon - 1e-5)
    x = np.random.default_rng(4).random(src.shape)
    np.testing.assert_allclose(
        Regridder(src, shifted, method)(x), Regridder(src, dst, method)(x), atol=1e-4
    )


def test_conservative_across_greenwich_any_convention() -> None:
    src = LatLonGrid.regular(1.0, lat_min=-89.5, lat_max=89.5, lon_min=0.5)  # 0.5..359.5
    src_alt = LatLonGrid.regular(1.0, lat_min=-89.5, lat_max=89.5, lon_min=-179.5)
    dst = LatLonGrid.regular(2.0, lat_min=-19, lat_max=19, lon_min=-19, lon_max=19)
    f = smooth(src)
    f_alt = np.roll(f, 180, axis=1)
    a = Regridder(src, dst, "conservative")(f)
    b = Regridder(src_alt, dst, "conservative")(f_alt)
    np.testing.assert_allclose(a, b, atol=1e-12)
    # each 2x2 deg cell is the area-weighted mean of four 1 deg cells
    i, j = 10, 0  # dst cell lat 1 (0..2), lon -19 (-20..-18) -> src lat 0.5, 1.5; lon 340.5, 341.5
    rows = [np.flatnonzero(np.isclose(src.lat, v))[0] for v in (0.5, 1.5)]
    cols = [np.flatnonzero(np.isclose(src.lon, v))[0] for v in (340.5, 341.5)]
    w = src.cell_area()[np.ix_(rows, cols)]
    expected = (f[np.ix_(rows, cols)] * w).sum() / w.sum()
    assert a[i, j] == pytest.approx(expected, rel=1e-12)
