"""Tests of the example drivers (examples/*/run_*.py) and of their output checks.

The full Fortran runs are ctest tests (toy_esm_dynamics, toy_esm_coupled,
offline_replay); here: the pieces that decide what those runs do -- the ESM window of
the offline replay, bundle discovery for the demo, the namelists they write (validated
by the server's own PluginConfig) -- and that the output checks do fail on bad output.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from script_helpers import load_script as load

from precipdiff.grids import LatLonGrid
from precipdiff.server.config import PluginConfig
from precipdiff.testing.models import make_tiny_bundle

REPO = Path(__file__).resolve().parents[2]

# CNRM-CM5 grid of the climate4R Iberia files (CMIP5_Iberia_*.nc).
CMIP5_LAT = np.array([34.32, 35.72, 37.12, 38.52, 39.92, 41.32, 42.72, 44.12])
CMIP5_LON = np.array(
    [-9.844, -8.438, -7.031, -5.625, -4.219, -2.812, -1.406, 0.0, 1.406, 2.812, 4.219]
)


@pytest.fixture(scope="module")
def replay() -> ModuleType:
    return load("examples/offline_replay/run_offline_replay.py")


@pytest.fixture(scope="module")
def toy() -> ModuleType:
    return load("examples/toy_esm/run_toy_esm.py")


def test_esm_window_on_demo_grids(replay: ModuleType, tmp_path: Path) -> None:
    bundle = replay.tiny_bundle(tmp_path / "b")
    window, method = replay.esm_window(CMIP5_LAT, CMIP5_LON, bundle)
    assert window == (2, 10, 2, 6)
    assert method == "bilinear"
    # The window really works both ways with the plugin's regridders.
    from precipdiff.grids import Regridder

    i0, i1, j0, j1 = window
    esm = LatLonGrid(lat=CMIP5_LAT[j0 - 1 : j1], lon=CMIP5_LON[i0 - 1 : i1])
    from precipdiff.bundle import read_manifest

    m = read_manifest(bundle)
    Regridder(esm, LatLonGrid.from_dict(m.coarse_grid), method="bilinear")
    Regridder(LatLonGrid.from_dict(m.fine_grid), esm, method="conservative")


def test_esm_window_conservative_when_coarse_cells_covered(
    replay: ModuleType, tmp_path: Path
) -> None:
    coarse = LatLonGrid(lat=np.arange(37.0, 41.1, 2.0), lon=np.arange(-7.0, 1.1, 2.0))
    fine = LatLonGrid(lat=np.arange(35.25, 42.8, 0.5), lon=np.arange(-9.75, 3.8, 0.5))
    make_tiny_bundle(tmp_path / "b", coarse_grid=coarse, fine_grid=fine, variables=["psl"])
    _, method = replay.esm_window(CMIP5_LAT, CMIP5_LON, tmp_path / "b")
    assert method == "conservative"


def test_esm_window_refuses_uncoverable_bundle(replay: ModuleType, tmp_path: Path) -> None:
    # Fine grid narrower than one ESM cell in latitude: no ESM cell lies inside it.
    coarse = LatLonGrid(lat=np.array([39.0, 39.5]), lon=np.arange(-9.0, 3.1, 2.0))
    fine = LatLonGrid(
        lat=np.array([38.875, 39.125, 39.375, 39.625]), lon=np.arange(-9.75, 3.8, 0.5)
    )
    make_tiny_bundle(tmp_path / "b", coarse_grid=coarse, fine_grid=fine, variables=["psl"])
    with pytest.raises(SystemExit, match="no ESM cell"):
        replay.esm_window(CMIP5_LAT, CMIP5_LON, tmp_path / "b")


def test_find_global_bundle_picks_u10_v10_msl(toy: ModuleType, tmp_path: Path) -> None:
    models = tmp_path / "models"
    regional = LatLonGrid(lat=np.arange(36.0, 42.1, 2.0), lon=np.arange(-9.0, 3.1, 2.0))
    regional_f = LatLonGrid(lat=np.arange(35.25, 42.8, 0.5), lon=np.arange(-9.75, 3.8, 0.5))
    make_tiny_bundle(
        models / "a-iberia", coarse_grid=regional, fine_grid=regional_f, variables=["psl"]
    )
    with pytest.raises(SystemExit, match="a-iberia"):
        toy.find_global_bundle(models)
    glob_c = LatLonGrid(lat=np.linspace(90.0, -90.0, 19), lon=np.arange(0.0, 360.0, 10.0))
    glob_f = LatLonGrid(lat=np.linspace(90.0, -90.0, 73), lon=np.arange(0.0, 360.0, 2.5))
    make_tiny_bundle(
        models / "b-hus", coarse_grid=glob_c, fine_grid=glob_f, variables=["hus850", "psl"]
    )
    make_tiny_bundle(
        models / "c-era5", coarse_grid=glob_c, fine_grid=glob_f, variables=["u10", "v10", "msl"]
    )
    assert toy.find_global_bundle(models) == models / "c-era5"


def test_written_namelists_validate(toy: ModuleType, replay: ModuleType, tmp_path: Path) -> None:
    import f90nml

    nml = tmp_path / "toy.nml"
    toy.write_namelist(
        nml,
        {"ndays": 2, "dt": 1800.0, "use_plugin": True, "output_file": "it's.nc"},
        {"bundle_path": "b", "device": "cpu", "output_units": "kg m-2 s-1", "torch_threads": 1},
    )
    parsed = f90nml.read(str(nml))
    assert parsed["toy_esm_nml"]["output_file"] == "it's.nc"
    assert parsed["toy_esm_nml"]["use_plugin"] is True
    # a bare name that is no directory next to the namelist stays a bundle name
    # (resolved by precipdiff.bundle.find_bundle); an existing one is made absolute
    assert PluginConfig.from_namelist(nml).bundle_path == "b"
    (tmp_path / "b").mkdir()
    assert PluginConfig.from_namelist(nml).bundle_path == str(tmp_path / "b")
    nml2 = tmp_path / "replay.nml"
    replay.write_namelist(
        nml2,
        {
            "offline_replay_nml": {"ndays": 3, "i_first": 2},
            "precipdiff_nml": {"bundle_path": "/x", "remap_method": "bilinear"},
        },
    )
    assert PluginConfig.from_namelist(nml2).remap_method == "bilinear"


@pytest.mark.needs_build
def test_toy_checks_fail_on_broken_output(toy: ModuleType, build_dir: Path, tmp_path: Path) -> None:
    exe = build_dir / "bin" / "toy_esm"
    if not exe.is_file():
        pytest.skip(f"{exe} not built (netCDF-Fortran missing?)")
    rc = toy.main(["--exe", str(exe), "--workdir", str(tmp_path), "--no-plugin", "--days", "2"])
    assert rc == 0
    out = tmp_path / "toy_esm_out.nc"
    assert toy.check_output(out, 2, coupled=False) == []
    assert toy.check_output(out, 3, coupled=False)  # wrong record count is caught

    import netCDF4

    broken = tmp_path / "broken.nc"
    shutil.copy(out, broken)
    with netCDF4.Dataset(broken, "a") as ds:
        ds.variables["global_evap"][1] = ds.variables["global_evap"][1] + 0.1
        ds.variables["prw"][0, 3, 3] = np.nan
    failures = toy.check_output(broken, 2, coupled=False)
    text = "\n".join(failures)
    assert "prw: 1 non-finite" in text
    assert "evaporation" in text or "series budget" in text


@pytest.mark.needs_build
def test_toy_esm_rejects_bad_namelist(build_dir: Path, tmp_path: Path) -> None:
    exe = build_dir / "bin" / "toy_esm"
    if not exe.is_file():
        pytest.skip(f"{exe} not built")
    (tmp_path / "t.nml").write_text("&toy_esm_nml\n  ndays = 1\n  no_such_key = 3\n/\n")
    r = subprocess.run([str(exe), "t.nml"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode != 0
    assert "&toy_esm_nml" in r.stdout
    (tmp_path / "u.nml").write_text("&toy_esm_nml\n  ndays = 1\n  dt = 7000.0\n/\n")
    r = subprocess.run([str(exe), "u.nml"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode != 0
    assert "divide a day" in r.stdout


def fortran_namelist_keys(source: Path, group: str) -> set[str]:
    """Keys of `namelist /group/ a, b, &` in a Fortran source file."""
    text = source.read_text()
    start = text.index(f"namelist /{group}/")
    body = []
    for line in text[start:].splitlines():
        body.append(line.split("!")[0])
        if not line.rstrip().endswith("&"):
            break
    joined = " ".join(body).replace("&", " ").split("/", 2)[2]
    return {k.strip().lower() for k in joined.split(",") if k.strip()}


@pytest.mark.parametrize(
    ("nml", "source", "group"),
    [
        ("examples/toy_esm/toy_esm.nml", "examples/toy_esm/toy_esm.F90", "toy_esm_nml"),
        (
            "examples/offline_replay/offline_replay.nml",
            "examples/offline_replay/offline_replay.F90",
            "offline_replay_nml",
        ),
    ],
)
def test_shipped_namelists_are_valid(nml: str, source: str, group: str) -> None:
    import f90nml

    parsed = f90nml.read(str(REPO / nml))
    known = fortran_namelist_keys(REPO / source, group)
    assert {"ndays", "dt", "output_file"} <= known
    assert set(parsed[group].keys()) <= known
    cfg = PluginConfig.from_namelist(REPO / nml)
    assert cfg.output_units == "kg m-2 s-1"
    assert Path(cfg.bundle_path).resolve().parent == REPO / "models"


@pytest.mark.needs_build
def test_toy_esm_reads_shipped_namelist_with_overrides(build_dir: Path, tmp_path: Path) -> None:
    exe = build_dir / "bin" / "toy_esm"
    if not exe.is_file():
        pytest.skip(f"{exe} not built")
    out = tmp_path / "o.nc"
    r = subprocess.run(
        [
            str(exe),
            str(REPO / "examples/toy_esm/toy_esm.nml"),
            "use_plugin=.false.",
            "ndays=1",
            "nlon=36",
            "nlat=18",
            f"output_file='{out}'",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "grid 36 x 18" in r.stdout
    assert out.is_file()


# --- examples/speedy (SPEEDY GCM coupling) ----------------------------------------------------


@pytest.fixture(scope="module")
def speedy() -> ModuleType:
    return load("examples/speedy/run_speedy.py")


def speedy_source(build_dir: Path) -> Path:
    """The SPEEDY checkout the build used (skip when there is none)."""
    cache = (build_dir / "CMakeCache.txt").read_text()
    for line in cache.splitlines():
        if line.startswith("SPEEDY_SOURCE_DIR:"):
            path = Path(line.split("=", 1)[1])
            if (path / "source" / "time_stepping.f90").is_file():
                return path
    pytest.skip("the build found no SPEEDY source (SPEEDY_SOURCE_DIR)")


def test_speedy_written_namelists_validate(speedy: ModuleType, tmp_path: Path) -> None:
    import f90nml

    nml = tmp_path / "s.nml"
    speedy.write_namelist(
        nml,
        {"mode": "interactive", "ndays": 3, "output_file": "it's.nc", "water_fixer": True},
        speedy.plugin_namelist(tmp_path / "b", members=2, threads=1),
    )
    parsed = f90nml.read(str(nml))
    known = fortran_namelist_keys(
        REPO / "examples/speedy/speedy_precipdiff.F90", "speedy_precipdiff_nml"
    )
    assert {"mode", "ndays", "condensate_timescale_days", "sst_offset_k"} <= known
    assert set(parsed["speedy_precipdiff_nml"].keys()) <= known
    assert parsed["speedy_precipdiff_nml"]["output_file"] == "it's.nc"
    cfg = PluginConfig.from_namelist(nml)
    assert cfg.members == 2
    assert cfg.inference == "sync"
    assert cfg.output_units == "kg m-2 s-1"
    assert cfg.reference_time.startswith(speedy.REFERENCE_DATE)


def test_speedy_grid_is_speedys(speedy: ModuleType) -> None:
    lat, lon = speedy.speedy_grid()
    assert lat.shape == (48,) and lon.shape == (96,)
    assert np.all(np.diff(lat) > 0)  # SPEEDY's row 1 is the southernmost
    np.testing.assert_allclose(lat, -lat[::-1], atol=1e-12)
    # The first-guess Gaussian latitudes SPEEDY's geometry module uses (asin of
    # cos(pi (j - 1/4) / 48.5)): 87.2165 deg at row 48.
    assert abs(lat[-1] - 87.2165) < 1e-4
    LatLonGrid(lat=lat, lon=lon)  # a valid precipdiff grid
    assert LatLonGrid(lat=lat, lon=lon).periodic


def test_speedy_skip_reason(speedy: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    assert speedy.main(["--skip-reason", "no SPEEDY here"]) == 77
    assert "SKIP: no SPEEDY here" in capsys.readouterr().out


@pytest.mark.needs_build
def test_speedy_checks_fail_on_broken_output(
    speedy: ModuleType, build_dir: Path, tmp_path: Path
) -> None:
    exe = build_dir / "bin" / "speedy_precipdiff"
    if not exe.is_file():
        pytest.skip(f"{exe} not built (SPEEDY source not found?)")
    src = speedy_source(build_dir)
    args = ["--exe", str(exe), "--speedy-dir", str(src), "--workdir", str(tmp_path)]
    rc = speedy.main([*args, "--mode", "off", "--days", "2"])
    assert rc == 0
    out = tmp_path / "speedy_out.nc"
    assert speedy.check_output(out, 2, "off") == []
    assert speedy.check_output(out, 3, "off")  # wrong record count is caught

    import netCDF4

    with netCDF4.Dataset(out) as ds:  # the tiny bundles are made on this grid
        lat, lon = speedy.speedy_grid()
        np.testing.assert_allclose(ds.variables["lat"][:], lat, rtol=0, atol=5e-5)
        np.testing.assert_allclose(ds.variables["lon"][:], lon, rtol=0, atol=1e-10)

    broken = tmp_path / "broken.nc"
    shutil.copy(out, broken)
    with netCDF4.Dataset(broken, "a") as ds:
        ds.variables["global_evap"][1] = ds.variables["global_evap"][1] + 0.1
        ds.variables["budget_residual"][0] = 1e-6
        ds.variables["hus850"][0, 3, 3] = np.nan
    text = "\n".join(speedy.check_output(broken, 2, "off"))
    assert "hus850: 1 non-finite" in text
    assert "series budget does not close" in text
    assert "water budget residual" in text
    # A restart comparison notices a changed value.
    assert speedy.compare_outputs(out, [out]) == []
    assert any("hus850" in f for f in speedy.compare_outputs(out, [broken]))


@pytest.mark.needs_build
def test_speedy_driver_rejects_bad_namelists(build_dir: Path, tmp_path: Path) -> None:
    exe = build_dir / "bin" / "speedy_precipdiff"
    if not exe.is_file():
        pytest.skip(f"{exe} not built")
    cases = {
        "a.nml": (
            "&speedy_precipdiff_nml\n  ndays = 1\n  no_such_key = 3\n/\n",
            "&speedy_precipdiff_nml",
        ),
        "b.nml": ("&speedy_precipdiff_nml\n  mode = 'twoway'\n/\n", "mode = 'twoway'"),
        "c.nml": ("&speedy_precipdiff_nml\n  start_date = '1850-01-01'\n/\n", "1901-2099"),
        "namelist.nml": ("&speedy_precipdiff_nml\n/\n", "SPEEDY's own file"),
    }
    for name, (text, expected) in cases.items():
        (tmp_path / name).write_text(text)
        r = subprocess.run([str(exe), name], cwd=tmp_path, capture_output=True, text=True)
        assert r.returncode != 0, name
        assert expected in r.stdout, (name, r.stdout[-2000:])
    # Boundary files missing: a message of ours, before SPEEDY would stop on its own.
    (tmp_path / "d.nml").write_text("&speedy_precipdiff_nml\n  mode = 'off'\n/\n")
    r = subprocess.run([str(exe), "d.nml"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode != 0
    assert "boundary file surface.nc" in r.stdout
