"""Training data: lazy multi-file reading, split by time, train-only statistics, masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from train_helpers import tiny_config

from precipdiff.errors import ConfigError, InputError
from precipdiff.features import relative_humidity
from precipdiff.offline.train.config import DataConfig, SplitConfig, VariableSource
from precipdiff.offline.train.data import RegressionDataset, StageData, TimeSeriesSource
from precipdiff.transforms import PrecipTransform

pytestmark = pytest.mark.needs_data


def _demo_data(shared: Path, **changes: object) -> DataConfig:
    cfg = tiny_config(Path("unused"), shared)
    assert cfg.regression is not None
    data = cfg.regression.data
    for k, v in changes.items():
        setattr(data, k, v)
    return data


def test_split_is_by_time_and_stats_use_training_split_only(shared_data: Path) -> None:
    data = StageData(_demo_data(shared_data, cache_in_memory=False), PrecipTransform())
    times = data.split.times
    val_t = times[data.split.validation]
    train_t = times[data.split.train]
    assert val_t.min() >= np.datetime64("1994-12-01")
    assert val_t.max() <= np.datetime64("1997-02-28T23:59")
    assert train_t.max() < np.datetime64("1994-12-01")
    assert data.split.validation.size == 90 + 91 + 90  # DJF 94/95, 95/96 (leap), 96/97
    # Statistics equal those computed directly from the training split's raw values.
    raw = data.read(data.split.train)
    psl = raw["psl"]
    assert data.stats.predictor_mean["psl"] == pytest.approx(float(psl.mean()), rel=1e-5)
    assert data.stats.predictor_std["psl"] == pytest.approx(float(psl.std()), rel=1e-4)
    # derived features are computed from the regridded predictors, then normalised
    rh = relative_humidity(raw["hus850"], raw["ta850"], 85000.0)
    assert [f.name for f in data.features] == ["rh850", "psl"]
    assert data.stats.predictor_mean["rh850"] == pytest.approx(float(rh.mean()), rel=1e-5)
    assert data.stats.predictor_std["rh850"] == pytest.approx(float(rh.std()), rel=1e-4)
    z = PrecipTransform().forward(raw["coarse"])
    assert data.stats.target_mean == pytest.approx(float(np.nanmean(z)), rel=1e-5)
    # ... and differ from statistics that would include the (wetter) validation winters.
    allz = PrecipTransform().forward(data.read(np.arange(times.size))["coarse"])
    assert abs(float(np.nanmean(allz)) - data.stats.target_mean) > 1e-3


def test_grids_crop_and_coarsen(shared_data: Path) -> None:
    data = StageData(_demo_data(shared_data), PrecipTransform())
    assert data.fine_grid.shape == (16, 28)
    assert data.coarse_grid.shape == (4, 7)
    np.testing.assert_allclose(data.coarse_grid.lat, [36.0, 38.0, 40.0, 42.0])
    np.testing.assert_allclose(data.coarse_grid.lon, np.arange(-9.0, 4.0, 2.0))


def test_mask_marks_sea_and_values_are_finite(shared_data: Path) -> None:
    data = StageData(_demo_data(shared_data), PrecipTransform())
    ds = RegressionDataset(data, data.split.train)
    b = ds.batch(np.arange(8))
    # one channel per feature (rh850, psl), not per predictor read
    assert b["x"].shape == (8, 2, 4, 7) and b["y"].shape == (8, 1, 4, 7)
    assert np.isfinite(b["y"].numpy()).all()
    m = b["mask"].numpy()
    assert 0 < m.mean() < 1  # some coarse cells are sea
    raw = data.read(data.split.train[:8])
    assert np.array_equal(m[:, 0] > 0, np.isfinite(raw["coarse"]))


def test_many_yearly_files_read_lazily_like_one(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "climate4r_iberia" / "EOBS_Iberia_pr.nc"
    with xr.open_dataset(src) as ds:
        years = ds["time"].dt.year.values
        for y in np.unique(years)[:4]:
            ds.isel(time=np.nonzero(years == y)[0]).to_netcdf(tmp_path / f"pr_{y}.nc")
    many = TimeSeriesSource(VariableSource("pr", "pr_*.nc", "rr"), tmp_path)
    one = TimeSeriesSource(VariableSource("pr", "EOBS_Iberia_pr.nc", "rr"), src.parent)
    n = many.times.size
    assert np.unique(many.times.astype("datetime64[Y]")).size == 4
    np.testing.assert_array_equal(many.times, one.times[:n])
    idx = np.array([0, 5, n - 1, 31, 200 % n])
    np.testing.assert_array_equal(many.read(idx), one.read(idx))
    # Values come through the readers unchanged (E-OBS is already in mm/day).
    with xr.open_dataset(src) as ds:
        np.testing.assert_array_equal(one.read(idx), ds["rr"].values[idx])


def test_empty_validation_split_named(shared_data: Path) -> None:
    cfg = _demo_data(
        shared_data, split=SplitConfig(validation_start="2030-01-01", validation_end="2030-02-01")
    )
    with pytest.raises(ConfigError, match="2030-01-01"):
        StageData(cfg, PrecipTransform())


def test_missing_file_named(shared_data: Path) -> None:
    cfg = _demo_data(shared_data)
    cfg.target = VariableSource("pr", "climate4r_iberia/NOPE_*.nc", "rr")
    with pytest.raises(InputError, match="NOPE"):
        StageData(cfg, PrecipTransform())


def test_crop_must_divide_by_factor(shared_data: Path) -> None:
    cfg = _demo_data(shared_data, crop_lat=[0, 18])
    with pytest.raises(ConfigError, match="coarsen_factor"):
        StageData(cfg, PrecipTransform())


def test_unknown_predictor_name_rejected(shared_data: Path) -> None:
    with pytest.raises(ConfigError, match="humidity"):
        DataConfig(
            target=VariableSource("pr", "x.nc"),
            split=SplitConfig("1994-12-01", "1997-02-28"),
            predictors=[VariableSource("humidity", "y.nc")],
        )


def test_hourly_era5_accumulations_become_mm_per_day_samples(shared_data: Path) -> None:
    from train_helpers import REPO

    from precipdiff.offline.train.config import load_config

    cfg = load_config(REPO / "configs" / "era5_global_shape.yaml")
    assert cfg.diffusion is not None
    cfg.diffusion.data.data_root = str(shared_data)
    data = StageData(cfg.diffusion.data, PrecipTransform())
    # Two files of 24 hourly fields each, kept as 48 samples, split 42 / 6.
    assert data.split.times.size == 48
    assert (data.split.train.size, data.split.validation.size) == (42, 6)
    assert data.fine_grid.shape == (40, 40) and data.coarse_grid.shape == (10, 10)
    assert data.fine_grid.lat[0] < data.fine_grid.lat[-1]  # read ascending
    fine = data.read(np.arange(48))["fine"]
    with xr.open_dataset(
        shared_data / "wam2layers_era5_025deg/pressure_levels_2020-01-01/ERA5_2020-01-01_tp.nc"
    ) as ds:
        metres = ds["tp"].values[:, ::-1][:, :40, :40]  # ascending latitude, cropped
    # m per hour -> mm/day
    np.testing.assert_allclose(fine[:24], metres * 24000.0, rtol=1e-4, atol=1e-5)
