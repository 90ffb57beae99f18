"""ERA5 from Zarr stores (ARCO-ERA5 layout) through the same reader as netCDF files."""

from __future__ import annotations

from pathlib import Path

import cftime
import numpy as np
import pytest
import xarray as xr
from era5_helpers import hourly_fields, write_arco_store, write_cds_files

from precipdiff.errors import InputError
from precipdiff.io.readers import (
    _COMMON_TIME_UNITS,
    _gregorian_seconds,
    is_zarr_store,
    open_predictors,
)

NAMES = ["hus850", "ua850", "va850", "psl", "pr"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[xr.Dataset, Path, Path]:
    d = tmp_path_factory.mktemp("era5")
    fields = hourly_fields(days=4, start="2000-01-30")
    return fields, write_arco_store(d / "arco.zarr", fields), write_cds_files(d / "cds", fields)


def test_is_zarr_store(tmp_path: Path, inputs: tuple[xr.Dataset, Path, Path]) -> None:
    _, arco, cds = inputs
    assert is_zarr_store(arco) and is_zarr_store("gs://bucket/era5.zarr")
    assert is_zarr_store(tmp_path / "not-yet.zarr")
    assert not is_zarr_store(next(cds.glob("*.nc"))) and not is_zarr_store(tmp_path)


def test_arco_store_daily_means_in_canonical_units(inputs: tuple[xr.Dataset, Path, Path]) -> None:
    """Long ERA5 names, kg kg**-1 / Pa / m, latitude 90 -> -90, hourly -> daily."""
    fields, arco, _ = inputs
    ds = open_predictors(arco, NAMES, accumulations_end_at_stamp=True)
    try:
        assert list(ds.data_vars) == NAMES
        assert ds.lat.values[0] < ds.lat.values[-1]  # ascending, as every reader delivers
        days = ds.time.values.astype("datetime64[D]")
        assert str(days[1]) == "2000-01-31"
        # Day 2000-01-31 = hours 24..47 of the fields (stamps 00:00..23:00).
        q = fields["specific_humidity"].sel(level=850).values[24:48].astype(float).mean(0)[::-1]
        np.testing.assert_allclose(ds.hus850.values[1], q, rtol=1e-6)
        assert ds.psl.attrs["units"] == "Pa" and ds.hus850.attrs["level_hpa"] == 850
        # tp at 00:00 closes the previous day: the day's total is hours 01:00..24:00.
        tp = fields["total_precipitation"].values[25:49].astype(float).sum(0)[::-1] * 1000.0
        np.testing.assert_allclose(ds.pr.values[1], tp, rtol=1e-5, atol=1e-6)
        assert ds.pr.encoding["samples_per_step"][1] == 24
    finally:
        ds.close()
    # Grouped by the stamp's calendar day instead (the default for plain files).
    ds = open_predictors(arco, ["pr"])
    try:
        tp = fields["total_precipitation"].values[24:48].astype(float).sum(0)[::-1] * 1000.0
        np.testing.assert_allclose(ds.pr.values[1], tp, rtol=1e-5, atol=1e-6)
    finally:
        ds.close()


def test_cds_monthly_files_equal_arco_store(inputs: tuple[xr.Dataset, Path, Path]) -> None:
    """CDS files (short names, valid_time, pressure_level, one file per month) = the store."""
    _, arco, cds = inputs
    assert len(list(cds.glob("era5_tp_*.nc"))) == 2  # January and February
    a = open_predictors(arco, NAMES, accumulations_end_at_stamp=True)
    b = open_predictors(cds / "era5_*.nc", NAMES, accumulations_end_at_stamp=True)
    try:
        np.testing.assert_array_equal(a.time.values, b.time.values)
        for n in NAMES:
            np.testing.assert_array_equal(a[n].values, b[n].values, err_msg=n)
    finally:
        a.close()
        b.close()


@pytest.mark.needs_data
def test_real_era5_through_zarr_equals_netcdf(tmp_path: Path, shared_data: Path) -> None:
    """The real CDS files (int16 packed, 'millibars', latitude descending) copied to Zarr."""
    d = shared_data / "wam2layers_era5_025deg" / "pressure_levels_2020-01-01"
    for name in ("pl_q", "pl_u", "pl_v", "tp", "u10", "v10"):
        with xr.open_dataset(d / f"ERA5_2020-01-01_{name}.nc") as src:
            src.to_zarr(tmp_path / "era5.zarr", mode="a", zarr_format=2, consolidated=True)
    names = ["hus850", "ua500", "va850", "uas", "vas", "pr"]
    a = open_predictors(sorted(d.glob("*.nc")), names)
    b = open_predictors(tmp_path / "era5.zarr", names)
    try:
        assert b.hus850.attrs["source_variable"] == "q"
        for n in names:
            np.testing.assert_array_equal(a[n].values, b[n].values, err_msg=n)
    finally:
        a.close()
        b.close()


def test_zarr_errors_name_the_problem(
    tmp_path: Path, inputs: tuple[xr.Dataset, Path, Path]
) -> None:
    _, arco, _ = inputs
    with pytest.raises(InputError, match=r"ta850 .*not found.*'specific_humidity'"):
        open_predictors(arco, ["ta850"])
    with pytest.raises(InputError, match=r"level 700 hPa of hus700 not available"):
        open_predictors(arco, ["hus700"])
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(InputError, match="cannot open the Zarr store"):
        open_predictors(tmp_path / "empty.zarr", ["psl"])


@pytest.mark.parametrize(
    "units",
    [
        "hours since 1900-01-01",
        "days since 1850-01-01 00:00:00",
        "seconds since 1970-01-01T00:00:00Z",
        "minutes since 2000-01-01 06:30",
    ],
)
def test_gregorian_fast_path_matches_cftime(units: str) -> None:
    values = np.arange(0, 3_000_000, 997, dtype=np.int64)
    for cal in ("standard", "proleptic_gregorian"):
        fast = _gregorian_seconds(values, units, cal)
        assert fast is not None
        ref = cftime.date2num(
            cftime.num2date(values, units, calendar=cal), _COMMON_TIME_UNITS, calendar=cal
        )
        np.testing.assert_array_equal(fast, ref)
    # Not taken where cftime is needed: other calendars, fractions, Julian dates.
    assert _gregorian_seconds(values, units, "noleap") is None
    assert _gregorian_seconds(values + 0.5, units, "standard") is None
    assert _gregorian_seconds(values, "days since 1500-01-01", "standard") is None
