"""Every netCDF file precipdiff writes passes the CF checker with 0 errors and 0 warnings.

cfchecks (the cfchecker package, installed by scripts/setup.sh with libudunits2) runs for
real, offline, with the tables precipdiff.testing.cf generates. The Fortran examples'
outputs (toy_esm, offline_replay, SPEEDY coupling: outputs, streams, restarts) are checked
by their ctest drivers (--cfchecks); the Python writers here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from test_server_plugin import fields_at, make_plugin

from precipdiff.grids import LatLonGrid, Regridder, coarsen_grid
from precipdiff.io import cf, import_netcdf4
from precipdiff.offline.cli.main import main
from precipdiff.testing.cf import cf_failures, check_cf, write_cf_tables
from precipdiff.testing.files import write_predictor_files
from precipdiff.testing.models import make_tiny_bundle
from precipdiff.variables import KNOWN_VARIABLES

nc4 = import_netcdf4()
FINE = LatLonGrid.regular(0.5, lat_min=40.25, lat_max=43.75, lon_min=0.25, lon_max=3.75)
COARSE = coarsen_grid(FINE, 4)
VARS = ("hus850", "psl", "ta850")
INPUT_HISTORY = "1999-12-31T00:00:00Z: cdo -daymean era5.nc day.nc"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cfb")
    return make_tiny_bundle(d / "b", coarse_grid=COARSE, fine_grid=FINE, variables=VARS)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    d = tmp_path_factory.mktemp("cfin")
    return write_predictor_files(d, VARS, COARSE, days=4, history=INPUT_HISTORY)


def assert_clean(*paths: Path) -> None:
    failures = cf_failures(list(paths))
    assert not failures, "\n".join(failures)


def test_checker_really_checks(tmp_path: Path) -> None:
    """The offline checker finds what is wrong: no Conventions, a standard name outside the
    table, units that do not match the canonical ones; a vlen string coordinate (what the
    evaluation used to write) makes it crash, which counts as an error."""
    p = tmp_path / "bad.nc"
    with nc4.Dataset(p, "w") as ds:
        ds.createDimension("n", 2)
        x = ds.createVariable("x", "f4", ("n",))
        x.standard_name = "not_a_standard_name"
        y = ds.createVariable("y", "f4", ("n",))
        y.standard_name = "air_temperature"
        y.units = "m"
    (rep,) = check_cf([p])
    assert rep.errors >= 2 and rep.warnings >= 1, rep.output
    text = "\n".join(rep.messages)
    assert "Conventions" in text and "not_a_standard_name" in text
    vlen = tmp_path / "vlen.nc"
    with nc4.Dataset(vlen, "w") as ds:
        ds.Conventions = "CF-1.8"
        ds.createDimension("product", 2)
        v = ds.createVariable("product", str, ("product",))
        v[0], v[1] = "a", "b"
    (rep,) = check_cf([vlen])
    assert rep.errors >= 1 and not rep.clean


def test_table_covers_known_variables(tmp_path: Path) -> None:
    for spec in KNOWN_VARIABLES.values():
        assert spec.standard_name in cf.STANDARD_NAMES, spec
    tables = write_cf_tables(tmp_path)
    text = tables["standard_names"].read_text()
    assert text.count("<entry id=") == len(cf.STANDARD_NAMES)


def test_generate_output(bundle: Path, inputs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "pr.nc"
    argv = ["generate", str(bundle), "--input", *map(str, inputs), "--out", str(out)]
    assert main([*argv, "--members", "2", "--steps", "1", "--no-progress", "-q"]) == 0
    assert_clean(out)
    with nc4.Dataset(out) as ds:
        pr, t, tb = ds["pr"], ds["time"], ds["time_bnds"]
        # daily means: bounds are the days, the stamp is the middle of each day
        assert pr.cell_methods == "time: mean" and t.bounds == "time_bnds"
        np.testing.assert_allclose(tb[:, 1] - tb[:, 0], 24.0)
        np.testing.assert_allclose(t[:], tb[:, 0] + 12.0)
        assert "units" not in tb.ncattrs()
        assert ds["member"].units == "1" and ds["member"].standard_name == "realization"
        # one hash format, JSON provenance, references, history appended NCO-style
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", ds.bundle_hash)
        assert json.loads(ds.bundle_provenance)["data"].startswith("random weights")
        assert json.loads(ds.sampler)["steps"] == 1
        assert "arXiv:2504.00307" in ds.references
        lines = ds.history.splitlines()
        assert "precipdiff generate" in lines[0] and lines[1] == INPUT_HISTORY
    from precipdiff.bundle import bundle_hash, read_manifest
    from precipdiff.server.engine import GeneratorEngine

    with nc4.Dataset(out) as ds:
        assert ds.bundle_hash == bundle_hash(read_manifest(bundle))
    from precipdiff.generator import PrecipGenerator

    engine = GeneratorEngine(PrecipGenerator.from_bundle(bundle, device="cpu"))
    assert engine.bundle_id == bundle_hash(read_manifest(bundle))  # the stream's hash


def test_stream_and_restart(tmp_path: Path) -> None:
    plugin, _ = make_plugin(tmp_path, output_dir=str(tmp_path / "out"), members=2)
    for s in range(8):
        for name, val in fields_at(s).items():
            plugin.set_field(name, val)
        plugin.step((s + 1) * 21600.0, 21600.0)
    plugin.write_restart(str(tmp_path / "r.nc"))
    plugin.close()
    files = sorted((tmp_path / "out").glob("*.nc"))
    assert files
    assert_clean(*files, tmp_path / "r.nc")


def test_scrip_weights(tmp_path: Path) -> None:
    from precipdiff.io.scrip import read_scrip_weights, write_scrip_weights

    p = tmp_path / "w.nc"
    rg = Regridder(COARSE, FINE, "bilinear")
    write_scrip_weights(rg, p)
    assert_clean(p)
    back = read_scrip_weights(p)
    x = np.random.default_rng(0).standard_normal(COARSE.shape)
    np.testing.assert_allclose(back(x), rg(x))


def test_qdm_apply_output(inputs: list[Path], tmp_path: Path, bundle: Path) -> None:
    ref = write_predictor_files(tmp_path / "ref", VARS, COARSE, days=60, seed=1)
    hist = write_predictor_files(tmp_path / "hist", VARS, COARSE, days=60, seed=2)
    tables = tmp_path / "t.safetensors"
    fit = ["qdm", "fit", "--bundle", str(bundle), "--ref", *map(str, ref), "--hist"]
    assert main([*fit, *map(str, hist), "--out", str(tables), "--n-quantiles", "5"]) == 0
    out = tmp_path / "corrected.nc"
    apply = ["qdm", "apply", "--tables", str(tables), "--input", *map(str, hist), "--out"]
    assert main([*apply, str(out)]) == 0
    assert_clean(out)
    with nc4.Dataset(out) as ds:
        assert ds["psl"].standard_name == "air_pressure_at_mean_sea_level"
        assert "qdm apply" in ds.history.splitlines()[0]


def test_metrics_netcdf_generic(tmp_path: Path) -> None:
    from precipdiff.errors import InputError
    from precipdiff.offline.evaluate.report import evaluate_ensemble, write_metrics_netcdf

    rng = np.random.default_rng(0)
    lat, lon = np.arange(40.25, 44.0, 0.5), np.arange(0.25, 4.0, 0.5)
    obs = rng.gamma(0.5, 4.0, size=(20, lat.size, lon.size))
    obs[:, 0, :3] = np.nan
    ens = obs[:, None] * rng.lognormal(0.0, 0.3, size=(20, 3, lat.size, lon.size))
    ev = evaluate_ensemble(ens, obs, lat, lon, baselines={"regression (bilinear)": ens[:, 0]})
    p = write_metrics_netcdf(
        tmp_path / "m.nc", ev.scalars, ev.arrays, {"lat": lat, "lon": lon, **ev.coords}
    )
    # products along a labelled dimension, as the Iberia report stores them
    labels = np.array(["CNRM-CM5 (bilinear to 0.5°)", "generated, QDM on"], dtype=object)
    q = write_metrics_netcdf(
        tmp_path / "b.nc",
        {"c_rel_change_esm_own": -0.07, "runtime_s": 12.0},
        {
            "b_mab": (("b_product",), np.array([0.8, 0.5])),
            "b_bias_map": (("b_product", "lat", "lon"), rng.standard_normal((2, 8, 8))),
        },
        {"lat": lat, "lon": lon, "b_product": labels},
    )
    assert_clean(p, q)
    xr = pytest.importorskip("xarray")
    with xr.open_dataset(p) as ds:
        v = ds["crps_regression_bilinear"]  # a CF-valid name, the label in long_name
        assert v.attrs["long_name"] == "crps_regression (bilinear)"
        assert v.attrs["units"] == "mm day-1"
        assert ds["wet_day_frequency_ensemble"].attrs["units"] == "1"
        assert str(ds["product_label"].values[0]) == "observations"
    with xr.open_dataset(q) as ds:
        assert list(ds["b_product_label"].values) == list(labels)
        assert "b_product_label" in ds["b_mab"].coords  # from the coordinates attribute
    with pytest.raises(InputError, match="no known units"):
        write_metrics_netcdf(tmp_path / "x.nc", {"mystery_score": 1.0})
    write_metrics_netcdf(tmp_path / "y.nc", {"mystery_score": 1.0}, units={"mystery_score": "1"})
    assert_clean(tmp_path / "y.nc")


def test_evaluate_files_cli(tmp_path: Path) -> None:
    from precipdiff.io.writers import write_precip_netcdf

    rng = np.random.default_rng(1)
    lat, lon = np.arange(40.25, 44.0, 0.5), np.arange(0.25, 4.0, 0.5)
    obs = rng.gamma(0.5, 4.0, size=(10, lat.size, lon.size)).astype(np.float32)
    times = np.arange("2000-01-01", "2000-01-11", dtype="datetime64[D]")
    pred = tmp_path / "pred.nc"
    ens = obs[:, None] * rng.lognormal(0, 0.3, (10, 2, lat.size, lon.size)).astype(np.float32)
    write_precip_netcdf(pred, ens, LatLonGrid(lat, lon), times)
    obs_path = tmp_path / "obs.nc"
    write_precip_netcdf(obs_path, obs, LatLonGrid(lat, lon), times, variable="rr")
    out = tmp_path / "eval"
    argv = ["evaluate", "files", "--pred", str(pred), "--obs", str(obs_path), "--out", str(out)]
    assert main(argv) == 0
    assert_clean(pred, obs_path, out / "metrics.nc")


def test_python_api_dataset(bundle: Path, inputs: list[Path], tmp_path: Path) -> None:
    """PrecipGenerator.generate(xarray Dataset).to_dataset(): coordinates and CF attributes."""
    from precipdiff.generator import PrecipGenerator
    from precipdiff.io.readers import open_predictors
    from precipdiff.testing.models import random_predictors

    gen = PrecipGenerator.from_bundle(bundle, device="cpu")
    with open_predictors(inputs, gen.manifest.variables) as pred:
        res = gen.generate(pred, members=2, steps=1, seed=3)
        times = pred["time"].values
    ds = res.to_dataset()
    assert ds["pr"].dims == ("time", "member", "lat", "lon")
    np.testing.assert_array_equal(ds["time"].values, times)
    np.testing.assert_array_equal(ds["member"].values, [1, 2])
    np.testing.assert_allclose(ds["lat"].values, FINE.lat)
    np.testing.assert_array_equal(ds["pr"].values, res.fine)
    assert ds["pr"].attrs["standard_name"] == "lwe_precipitation_rate"
    assert ds["pr"].attrs["units"] == "mm day-1"
    assert ds.attrs["bundle_hash"] == gen.bundle_hash and ds.attrs["Conventions"] == "CF-1.8"
    ds.to_netcdf(tmp_path / "api.nc")
    arrays = gen.generate(
        random_predictors(VARS, COARSE, 2), members=1, steps=1, units="kg m-2 s-1"
    )
    ds2 = arrays.to_dataset()
    assert ds2["pr"].attrs["standard_name"] == "precipitation_flux"
    ds2.to_netcdf(tmp_path / "api_arrays.nc")
    assert_clean(tmp_path / "api.nc", tmp_path / "api_arrays.nc")


def test_demo_sample_files() -> None:
    """The real-data sample scripts/make_demo_sample.py cut for the demo is CF too."""
    sample = Path(__file__).resolve().parents[2] / "examples" / "offline_replay" / "sample"
    files = sorted(sample.glob("*.nc"))
    assert len(files) == 5
    assert_clean(*files)
    with nc4.Dataset(files[0]) as ds:
        assert "make_demo_sample.py" in ds.history.splitlines()[0]
        assert "ATTRIBUTION.md" in ds.comment
