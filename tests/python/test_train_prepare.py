"""``precipdiff prepare``: raw hourly ERA5 (Zarr or CDS netCDF) -> the daily training store."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from era5_helpers import PREDICTORS, config, hourly_fields, store_experiment, write_cds_files

from precipdiff.errors import ConfigError, InputError
from precipdiff.grids import LatLonGrid, Regridder, coarsen_block_mean, coarsen_grid
from precipdiff.io.readers import open_predictors
from precipdiff.offline.train.data import _Moments
from precipdiff.offline.train.prepare import run_prepare
from precipdiff.offline.train.store import TrainingStore
from precipdiff.transforms import PrecipTransform


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], TrainingStore]:
    tmp = tmp_path_factory.mktemp("prep")
    raw = store_experiment(tmp, days=8)
    res = run_prepare(config(raw), progress=False)
    assert res.complete and res.tasks_run == 3 and res.n_days == 8
    return raw, TrainingStore(raw["prepare"]["out"])


def test_store_holds_daily_fields_as_the_reader_gives_them(
    prepared: tuple[dict[str, Any], TrainingStore],
) -> None:
    raw, store = prepared
    pc = raw["prepare"]
    src = Path(pc["data_root"]) / "arco.zarr"
    ds = open_predictors(src, [*PREDICTORS, "pr"], accumulations_end_at_stamp=True)
    try:
        lat0, lat1 = pc["crop_lat"]
        fine = LatLonGrid(ds.lat.values[lat0:lat1], ds.lon.values)
        coarse = coarsen_grid(fine, 4)
        assert store.fine_grid == fine and store.coarse_grid == coarse
        assert store.fine_grid.shape == (32, 64) and store.coarse_grid.shape == (8, 16)
        np.testing.assert_array_equal(store.days, ds.time.values[:8].astype("datetime64[D]"))
        pr = ds.pr.values[:8, lat0:lat1]
        np.testing.assert_array_equal(store.read_fine(np.arange(8)), pr)
        np.testing.assert_array_equal(
            store.read_coarse(np.arange(8)), coarsen_block_mean(pr, 4, min_valid_fraction=0.5)
        )
        native = LatLonGrid(ds.lat.values, ds.lon.values)
        rg = Regridder(native, coarse, "conservative", skipna=True)
        for n in PREDICTORS:
            got = store.read_predictors(np.array([5, 2, 5]), [n])[n]
            want = rg(ds[n].values[[5, 2, 5]])
            np.testing.assert_array_equal(got, want, err_msg=n)
        assert (store.samples_per_day() == 24).all()
        # Patch windows of the fine field are plain slices of it.
        np.testing.assert_array_equal(
            store.read_fine_window(3, slice(4, 20), slice(8, 24)), pr[3, 4:20, 8:24]
        )
        # The direct chunk-file reads (local stores) equal zarr's own reads.
        via_zarr = TrainingStore(store.path)
        via_zarr._chunks = dict.fromkeys(["pr", "pr_coarse", *PREDICTORS])
        days = np.array([4, 0, 4, 7])
        np.testing.assert_array_equal(via_zarr.read_fine(days), store.read_fine(days))
        np.testing.assert_array_equal(via_zarr.read_coarse(days), store.read_coarse(days))
        np.testing.assert_array_equal(
            via_zarr.read_fine_window(5, slice(8, 24), slice(40, 64)),
            store.read_fine_window(5, slice(8, 24), slice(40, 64)),
        )
        for n in PREDICTORS:
            np.testing.assert_array_equal(
                via_zarr.read_predictors(days, [n])[n], store.read_predictors(days, [n])[n]
            )
    finally:
        ds.close()


def test_store_statistics_are_those_of_the_training_days(
    prepared: tuple[dict[str, Any], TrainingStore],
) -> None:
    raw, store = prepared
    train = np.arange(6)  # the last two days are the validation split
    preds = store.read_predictors(train, list(PREDICTORS))
    transform = PrecipTransform.from_dict(raw["transform"])
    stats = store.meta["stats"]
    assert stats["n_train"] == 6 and stats["split"]["validation_start"] == str(store.days[6])
    for n in PREDICTORS:
        m = _Moments()
        m.add(preds[n])
        mean, std = m.result(n)
        assert stats["predictor_mean"][n] == pytest.approx(mean, rel=1e-10)
        assert stats["predictor_std"][n] == pytest.approx(std, rel=1e-8)
    m = _Moments()
    m.add(transform.forward(store.read_coarse(train)))
    mean, std = m.result("pr")
    assert stats["target_mean"] == pytest.approx(mean, rel=1e-10)
    assert stats["target_std"] == pytest.approx(std, rel=1e-8)
    # Any other split: summed from the per-day moments.
    other = store.stats(np.array([0, 3]), ["psl"])
    m = _Moments()
    m.add(store.read_predictors(np.array([0, 3]), ["psl"])["psl"])
    assert other["predictor_mean"]["psl"] == pytest.approx(m.result("psl")[0], rel=1e-12)


@pytest.mark.slow
def test_cds_files_with_worker_processes_give_the_same_store(
    tmp_path: Path, prepared: tuple[dict[str, Any], TrainingStore]
) -> None:
    """Monthly CDS files (short names) prepared by 2 worker processes = the Zarr route."""
    raw, store = prepared
    fields = hourly_fields(days=8, start="2000-01-01", nlat=33, nlon=64)
    write_cds_files(tmp_path / "cds", fields)
    cds = copy.deepcopy(raw)
    pc = cds["prepare"]
    pc["data_root"] = str(tmp_path)
    pc["out"] = str(tmp_path / "from_cds.zarr")
    pc["target"] = {"name": "pr", "path": "cds/era5_tp_*.nc"}
    pc["predictors"] = [
        {"name": "hus850", "path": "cds/era5_q_*.nc"},
        {"name": "ua850", "path": "cds/era5_u_*.nc"},
        {"name": "va850", "path": "cds/era5_v_*.nc"},
        {"name": "psl", "path": "cds/era5_msl_*.nc"},
    ]
    res = run_prepare(config(cds), workers=2, progress=False)
    assert res.complete and res.tasks_run == 3
    other = TrainingStore(pc["out"])
    days = np.arange(8)
    np.testing.assert_array_equal(other.read_fine(days), store.read_fine(days))
    for n in PREDICTORS:
        np.testing.assert_array_equal(
            other.read_predictors(days, [n])[n], store.read_predictors(days, [n])[n]
        )
    assert other.meta["stats"] == store.meta["stats"]


def test_prepare_resumes_where_it_stopped(
    tmp_path: Path,
    prepared: tuple[dict[str, Any], TrainingStore],
    capsys: pytest.CaptureFixture[str],
) -> None:
    raw, store = prepared
    again = copy.deepcopy(raw)
    again["prepare"]["out"] = str(tmp_path / "resumed.zarr")
    cfg = config(again)
    first = run_prepare(cfg, max_tasks=1)
    assert not first.complete and first.tasks_run == 1
    with pytest.raises(InputError, match=r"incomplete.*rerun it: it resumes"):
        TrainingStore(tmp_path / "resumed.zarr")
    done: list[int] = []
    second = run_prepare(cfg, on_task=done.append)
    assert second.complete and second.tasks_skipped == 1 and sorted(done) == [1, 2]
    out = capsys.readouterr().out
    # Not a terminal: plain progress lines, no progress bar.
    assert "prepare: 3/3 units done (100 %)" in out and "it/s" not in out
    resumed = TrainingStore(tmp_path / "resumed.zarr")
    days = np.arange(8)
    np.testing.assert_array_equal(resumed.read_fine(days), store.read_fine(days))
    assert resumed.meta["stats"] == store.meta["stats"]
    # A third run has nothing to do.
    assert run_prepare(cfg, progress=False).tasks_run == 0
    # The same store with another configuration is refused, naming what differs.
    other = copy.deepcopy(again)
    other["prepare"]["predictor_regrid"] = "bilinear"
    with pytest.raises(ConfigError, match=r"different configuration.*predictor_regrid"):
        run_prepare(config(other), progress=False)


def test_prepare_refuses_missing_or_incomplete_days(
    tmp_path: Path, prepared: tuple[dict[str, Any], TrainingStore]
) -> None:
    raw, _ = prepared
    bad = copy.deepcopy(raw)
    bad["prepare"]["out"] = str(tmp_path / "bad.zarr")
    bad["prepare"]["end"] = "2000-01-12"
    with pytest.raises(InputError, match=r"3 day\(s\) of the period .* are missing"):
        run_prepare(config(bad), progress=False)
    # Without the end-of-period convention the first day lacks nothing but the
    # day after the data ends has a single step: asking for it is refused.
    bad["prepare"]["end"] = "2000-01-09"
    bad["prepare"]["accumulations_end_at_stamp"] = False
    with pytest.raises(InputError, match=r"fewer than 24 time steps, e.g. \['2000-01-09'\]"):
        run_prepare(config(bad), progress=False)
    bad["prepare"]["end"] = "2000-01-08"
    bad["prepare"]["crop_lat"] = None
    with pytest.raises(ConfigError, match=r"33x64 is not divisible by prepare.coarsen_factor 4"):
        run_prepare(config(bad), progress=False)


def test_prepare_config_is_validated() -> None:
    base = {
        "out": "x.zarr",
        "target": {"name": "pr", "path": "a.zarr"},
        "predictors": [{"name": "psl", "path": "a.zarr"}],
        "start": "2000-01-01",
        "end": "2000-01-31",
        "split": {"validation_start": "2000-01-30", "validation_end": "2000-01-31"},
    }
    config({"run_dir": "r", "prepare": base})
    with pytest.raises(ConfigError, match="prepare: variable 'psl' needs a 'path'"):
        config({"run_dir": "r", "prepare": {**base, "predictors": [{"name": "psl"}]}})
    with pytest.raises(ConfigError, match="start 2000-02-01 is after end"):
        config({"run_dir": "r", "prepare": {**base, "start": "2000-02-01"}})
    with pytest.raises(ConfigError, match="must be precipitation 'pr'"):
        config({"run_dir": "r", "prepare": {**base, "target": {"name": "psl", "path": "a"}}})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['wokers'\]"):
        config({"run_dir": "r", "prepare": {**base, "wokers": 2}})
