"""Unit tests for precipdiff.grids.LatLonGrid and block coarsening."""

from __future__ import annotations

import json

import numpy as np
import pytest

from precipdiff.errors import GridError, PrecipDiffError
from precipdiff.grids import EARTH_RADIUS_M, LatLonGrid, coarsen_block_mean, coarsen_grid


def test_era5_shapes_are_defined_by_coordinates() -> None:
    g1 = LatLonGrid.regular(1.0, descending=True)
    g025 = LatLonGrid.regular(0.25)
    assert g1.shape == (181, 360)
    assert g025.shape == (721, 1440)
    assert g1.periodic and g025.periodic
    assert g1.lat[0] == 90.0 and g1.lat[-1] == -90.0
    assert not g1.lat_ascending and g025.lat_ascending


def test_bounds_clipped_at_poles_and_wrap() -> None:
    g = LatLonGrid.regular(1.0)
    lb = g.lat_bounds
    assert lb.shape == (181, 2)
    assert lb[0, 0] == -90.0 and lb[-1, 1] == 90.0
    assert np.allclose(lb[1], [-89.5, -88.5])
    ob = g.lon_bounds
    assert np.allclose(ob[0], [-0.5, 0.5]) and np.allclose(ob[-1], [358.5, 359.5])


def test_descending_bounds_in_coordinate_order() -> None:
    g = LatLonGrid(np.array([10.0, 5.0, 0.0]), np.array([0.0, 5.0]))
    assert np.allclose(g.lat_bounds[0], [12.5, 7.5])
    assert np.allclose(g.lat_bounds[-1], [2.5, -2.5])


def test_cell_area_sums_to_sphere() -> None:
    for g in (LatLonGrid.regular(1.0), LatLonGrid.regular(2.5, descending=True)):
        total = g.cell_area().sum()
        assert total == pytest.approx(4 * np.pi * EARTH_RADIUS_M**2, rel=1e-12)
        assert g.cell_area(1.0).sum() == pytest.approx(4 * np.pi, rel=1e-12)


def test_cell_area_exact_band() -> None:
    g = LatLonGrid(np.array([0.5]), np.array([0.5]))
    expected = np.deg2rad(1.0) * (np.sin(np.deg2rad(1.0)) - 0.0)
    assert g.cell_area(1.0)[0, 0] == pytest.approx(expected, rel=1e-12)


def test_regional_grid_not_periodic_and_dateline() -> None:
    g = LatLonGrid(np.arange(35.0, 45.1, 2.5), np.arange(-10.0, 5.1, 2.5))
    assert not g.periodic
    d = LatLonGrid(np.array([0.0, 1.0]), np.array([178.0, 179.0, -180.0, -179.0]))
    assert np.allclose(d.lon_continuous, [178, 179, 180, 181])
    assert not d.periodic


def test_lon_conventions_equivalent() -> None:
    a = LatLonGrid.regular(1.0)
    b = LatLonGrid.regular(1.0, lon_min=-180.0)
    assert b.periodic
    assert a != b
    assert not a.allclose(b)  # same set of points, different order
    assert a.is_subset_of(b) and b.is_subset_of(a)


def test_dict_round_trip_is_json() -> None:
    g = LatLonGrid.regular(2.0, lat_min=30, lat_max=50, lon_min=-20, lon_max=10, descending=True)
    d = json.loads(json.dumps(g.to_dict()))
    g2 = LatLonGrid.from_dict(d)
    assert g2 == g and hash(g2) == hash(g)
    assert g2.allclose(g)
    with pytest.raises(GridError, match="unknown grid keys"):
        LatLonGrid.from_dict({**d, "nlat": 11})


def test_subset() -> None:
    big = LatLonGrid.regular(0.5)
    small = LatLonGrid(np.array([10.0, 10.5]), np.array([-1.0, 0.0, 359.5 - 360 + 1]))
    assert small.is_subset_of(big)
    ilat, _ = small.subset_indices(big)
    assert np.allclose(big.lat[ilat], small.lat)
    assert not LatLonGrid(np.array([10.25]), np.array([0.0])).is_subset_of(big)
    with pytest.raises(GridError, match="not a subset"):
        LatLonGrid(np.array([10.25]), np.array([0.0])).subset_indices(big)


@pytest.mark.parametrize(
    ("lat", "lon", "match"),
    [
        ([0.0, 0.0, 1.0], [0.0, 1.0], "strictly ascending or strictly descending"),
        ([0.0, 95.0], [0.0, 1.0], "outside"),
        ([0.0, 1.0], [0.0, 1.0, 1.0], "strictly increasing"),
        ([0.0, 1.0], np.arange(0.0, 361.0, 1.0), "360"),
        ([0.0, np.nan], [0.0], "non-finite"),
        ([[0.0, 1.0]], [0.0], "1-D"),
    ],
)
def test_bad_grids_raise_grid_error(lat: list[float], lon: list[float], match: str) -> None:
    with pytest.raises(GridError, match=match):
        LatLonGrid(np.asarray(lat), np.asarray(lon))


def test_grid_error_is_user_error() -> None:
    assert issubclass(GridError, PrecipDiffError)


def test_regular_rejects_inexact_ranges() -> None:
    with pytest.raises(GridError, match="not a multiple"):
        LatLonGrid.regular(0.7)
    with pytest.raises(GridError, match="positive"):
        LatLonGrid.regular(-1.0)


def test_coarsen_block_mean_nan_aware() -> None:
    x = np.arange(64, dtype=np.float32).reshape(8, 8)
    out = coarsen_block_mean(x, 4)
    assert out.dtype == np.float32 and out.shape == (2, 2)
    assert out[0, 0] == pytest.approx(x[:4, :4].mean())
    x2 = x.copy()
    x2[0, 0] = np.nan
    assert coarsen_block_mean(x2, 4)[0, 0] == pytest.approx(np.nanmean(x2[:4, :4]))
    assert np.isnan(coarsen_block_mean(x2, 4, skipna=False)[0, 0])
    x3 = x.copy()
    x3[:4, :3] = np.nan  # 12 of 16 missing
    assert np.isnan(coarsen_block_mean(x3, 4)[0, 0])
    assert np.isfinite(coarsen_block_mean(x3, 4, min_valid_fraction=0.2)[0, 0])
    with pytest.raises(GridError, match="not divisible"):
        coarsen_block_mean(np.zeros((6, 8)), 4)


def test_coarsen_grid_bounds_align() -> None:
    fine = LatLonGrid.regular(0.5, lat_min=35.25, lat_max=44.75, lon_min=-9.75, lon_max=3.75)
    coarse = coarsen_grid(fine, 4)
    assert coarse.shape == (5, 7)
    assert np.allclose(coarse.lat_bounds[0], fine.lat_bounds[0][0] + np.array([0, 2.0]))
    assert np.allclose(coarse.lon_bounds[:, 0], fine.lon_bounds[::4, 0])
