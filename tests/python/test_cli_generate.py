import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from precipdiff.grids import LatLonGrid, coarsen_grid
from precipdiff.offline.cli.main import main
from precipdiff.testing.models import make_tiny_bundle

netCDF4 = pytest.importorskip("netCDF4")

FINE = LatLonGrid.regular(0.5, lat_min=40.25, lat_max=47.75, lon_min=0.25, lon_max=9.75)
COARSE = coarsen_grid(FINE, 4)


def _write_era5_like(dirpath: Path, grid: LatLonGrid, hours: int = 48) -> list[Path]:
    """Files shaped like the Copernicus store's: hourly, latitude descending, levels."""
    rng = np.random.default_rng(0)
    lat = grid.lat[::-1]
    files = []

    def base(name: str) -> tuple[object, Path]:
        p = dirpath / f"era5_{name}.nc"
        ds = netCDF4.Dataset(p, "w")
        ds.createDimension("time", hours)
        ds.createDimension("latitude", lat.size)
        ds.createDimension("longitude", grid.lon.size)
        t = ds.createVariable("time", "i4", ("time",))
        t.units = "hours since 1900-01-01 00:00:00.0"
        t.calendar = "gregorian"
        t[:] = 1051896 + np.arange(hours)  # 2020-01-01
        la = ds.createVariable("latitude", "f4", ("latitude",))
        la.units = "degrees_north"
        la[:] = lat
        lo = ds.createVariable("longitude", "f4", ("longitude",))
        lo.units = "degrees_east"
        lo[:] = grid.lon
        files.append(p)
        return ds, p

    ds, _ = base("pl")
    ds.createDimension("level", 3)
    lev = ds.createVariable("level", "i4", ("level",))
    lev.units = "millibars"
    lev[:] = [500, 850, 1000]
    shape = (hours, 3, lat.size, grid.lon.size)
    for name, units, mean, std in (
        ("q", "kg kg**-1", 0.005, 0.002),
        ("u", "m s**-1", 3.0, 6.0),
        ("v", "m s**-1", 0.0, 5.0),
    ):
        v = ds.createVariable(name, "f4", ("time", "level", "latitude", "longitude"))
        v.units = units
        v[:] = np.clip(mean + std * rng.standard_normal(shape), 0 if name == "q" else -100, None)
    ds.close()
    ds, _ = base("sl")
    msl = ds.createVariable("msl", "f4", ("time", "latitude", "longitude"))
    msl.units = "Pa"
    msl.standard_name = "air_pressure_at_mean_sea_level"
    msl[:] = 101000 + 800 * rng.standard_normal((hours, lat.size, grid.lon.size))
    ds.close()
    return files


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    bundle = make_tiny_bundle(d / "bundle", coarse_grid=COARSE, fine_grid=FINE)
    src = LatLonGrid.regular(1.0, lat_min=39.0, lat_max=49.0, lon_min=-1.0, lon_max=11.0)
    return bundle, _write_era5_like(d, src)


def test_generate_end_to_end(setup, tmp_path, capsys):
    bundle, files = setup
    out = tmp_path / "pr.nc"
    args = [
        "generate", str(bundle), "--input", *map(str, files), "--out", str(out),
        "--members", "3", "--seed", "4", "--steps", "2", "--device", "cpu",
    ]  # fmt: skip
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "generated 2/2 time steps" in err  # progress as log lines (stderr is no terminal)
    with netCDF4.Dataset(out) as ds:
        pr = ds.variables["pr"]
        assert pr.dimensions == ("time", "member", "lat", "lon")
        assert pr.shape == (2, 3, *FINE.shape)  # 48 hourly steps -> 2 daily means
        assert pr.units in ("mm day-1", "mm/day")
        assert pr.standard_name == "lwe_precipitation_rate"
        assert ds.Conventions.startswith("CF")
        assert "precipdiff generate" in ds.history
        assert ds.members_seed == 4 and ds.nfe_per_member == 3
        assert ds.bundle_hash.startswith("sha256:") and len(ds.bundle_hash) == 7 + 64
        data = pr[:]
        assert np.all(data >= 0) and np.isfinite(data).all()
        np.testing.assert_allclose(ds.variables["lat"][:], FINE.lat)
    # member 2 alone (same seed) is identical to member 2 of the ensemble
    from precipdiff.generator import PrecipGenerator
    from precipdiff.io.readers import open_predictors

    gen = PrecipGenerator.from_bundle(bundle, device="cpu")
    with open_predictors(files, gen.manifest.variables) as pred:
        res = gen.generate(pred.isel(time=slice(1, 2)), members=1, seed=4, member_offset=2,
                           time_offset=1, steps=2)  # fmt: skip
    np.testing.assert_allclose(res.fine[0, 0], data[1, 2], rtol=1e-6)


def test_generate_si_units(setup, tmp_path):
    bundle, files = setup
    out = tmp_path / "pr_si.nc"
    argv = ["generate", str(bundle), "--input", *map(str, files), "--out", str(out),
            "--units", "kg m-2 s-1", "--no-progress", "--conserve-mass"]  # fmt: skip
    assert main(argv) == 0
    with netCDF4.Dataset(out) as ds:
        assert ds.variables["pr"].units == "kg m-2 s-1"
        assert ds.variables["pr"].shape == (2, 1, *FINE.shape)
        assert ds.conserve_mass == 1


def test_missing_variable_no_output(setup, tmp_path, capsys):
    bundle, files = setup
    out = tmp_path / "pr.nc"
    rc = main(["generate", str(bundle), "--input", str(files[0]), "--out", str(out)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "psl" in err and "not found" in err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_cuda_unavailable_is_clear(setup, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    bundle, files = setup
    rc = main(["generate", str(bundle), "--input", *map(str, files), "--out",
               str(tmp_path / "x.nc"), "--device", "cuda"])  # fmt: skip
    assert rc == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_inspect_without_weights(setup, tmp_path, capsys):
    bundle, _ = setup
    d = tmp_path / "b"
    shutil.copytree(bundle, d)
    (d / "denoiser.safetensors").write_bytes(b"garbage")  # inspect never reads weights
    assert main(["inspect", str(d)]) == 0
    out = capsys.readouterr().out
    assert "hus850" in out and "850 hPa" in out and "sigma_c" in out
    assert "network evaluations per member" in out
    assert main(["inspect", str(d), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["format_version"] == 3 and data["sigma_c"] == 0.5
    assert main(["inspect", str(d), "--verify"]) == 2
    assert "denoiser.safetensors is corrupt" in capsys.readouterr().err


def test_inspect_shows_derived_features(capsys):
    # the shipped Iberia bundle reads hus850, ta850, psl and feeds rh850, psl
    assert main(["inspect", "iberia-demo"]) == 0
    out = capsys.readouterr().out
    assert "ta850" in out
    assert "rh850      = relative_humidity(hus850, ta850)" in out
    assert "'source': 'regression'" in out
    # and carries an output calibration fitted on its 1083 training days, on by default
    assert "output calib.    output_calibration.safetensors, fitted on 1083 days" in out
    assert "applied by default: yes" in out
    assert main(["inspect", "iberia-demo", "--verify"]) == 0  # its sha256 too


@pytest.mark.needs_data
def test_generate_from_real_era5_files(shared_data, tmp_path):
    """ERA5 exactly as delivered (WAM2layers sample): hourly, latitude descending, levels."""
    pl = shared_data / "wam2layers_era5_025deg" / "pressure_levels_2020-01-01"
    if not pl.is_dir():
        pytest.skip(f"{pl} not found")
    fine = LatLonGrid.regular(0.25, lat_min=45.0, lat_max=55.0, lon_min=0.0, lon_max=10.0)
    coarse = LatLonGrid.regular(1.0, lat_min=45.0, lat_max=55.0, lon_min=0.0, lon_max=10.0)
    bundle = make_tiny_bundle(tmp_path / "b", coarse_grid=coarse, fine_grid=fine,
                              variables=("hus850", "ua850", "va850"))  # fmt: skip
    files = [pl / f"ERA5_2020-01-01_pl_{v}.nc" for v in "quv"]
    out = tmp_path / "pr.nc"
    assert main(["generate", str(bundle), "--input", *map(str, files), "--out", str(out),
                 "--members", "2", "--no-progress", "--device", "cpu"]) == 0  # fmt: skip
    with netCDF4.Dataset(out) as ds:
        assert ds.variables["pr"].shape == (1, 2, 41, 41)
    assert os.path.getsize(out) > 0


def test_generate_output_calibration_flag(setup, tmp_path, capsys):
    """--output-calibration: 'bundle' follows the manifest, 'on'/'off' override it."""
    from precipdiff.offline.output_calibration import attach_output_calibration
    from precipdiff.offline.qdm_fit import fit_qdm
    from precipdiff.qdm import QDMConfig

    bundle, files = setup
    base = ["generate", "--input", *map(str, files), "--members", "2", "--steps", "2",
            "--device", "cpu", "--no-progress"]  # fmt: skip
    assert main([base[0], str(bundle), *base[1:], "--out", str(tmp_path / "x.nc"),
                 "--output-calibration", "on"]) == 2  # fmt: skip
    assert "has none" in capsys.readouterr().err
    cal = tmp_path / "cal"
    shutil.copytree(bundle, cal)
    rng = np.random.default_rng(0)
    x = rng.gamma(0.7, 3.0, (60, *FINE.shape))
    t = np.datetime64("2019-01-01") + np.arange(60).astype("timedelta64[D]")
    qcfg = QDMConfig(n_quantiles=10, group="none", kinds={"pr": "multiplicative"})
    attach_output_calibration(fit_qdm({"pr": 3.0 * x}, {"pr": x}, t, t, qcfg), cal)
    fields = {}
    for mode in ("bundle", "off"):
        out = tmp_path / f"{mode}.nc"
        assert main([base[0], str(cal), *base[1:], "--out", str(out),
                     "--output-calibration", mode]) == 0  # fmt: skip
        with netCDF4.Dataset(out) as ds:
            assert ds.output_calibration == (1 if mode == "bundle" else 0)
            fields[mode] = np.asarray(ds.variables["pr"][:])
    wet = fields["off"] > 1.0
    ratio = np.median(fields["bundle"][wet] / fields["off"][wet])
    assert 2.0 < ratio < 4.0  # the calibration's factor 3 within the fitted range
