"""The Fortran face driving the REAL Plugin with a tiny bundle.

- the Fortran path and the Python path give bit-identical output (issue item 8),
  with real(8) and real(4) fields;
- boundary errors that need a real bundle: GPU requested but absent (strict: error;
  otherwise CPU fallback with a warning), missing bundle, a variable the bundle needs
  never fed, an ESM grid that does not cover the bundle's domain.

Each case runs tests/fortran/pd_replay_driver in a subprocess (one embedded
interpreter per process, as in an ESM).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from bridge_helpers import driver_path, run_driver

from precipdiff.grids import LatLonGrid
from precipdiff.server import Plugin
from precipdiff.testing.models import make_tiny_bundle

pytestmark = [pytest.mark.needs_build, pytest.mark.slow]

MODEL = LatLonGrid.regular(2.0, lat_min=31.0, lat_max=49.0, lon_min=1.0, lon_max=19.0)
COARSE = LatLonGrid.regular(4.0, lat_min=32.0, lat_max=48.0, lon_min=2.0, lon_max=18.0)
FINE = LatLonGrid.regular(1.0, lat_min=30.5, lat_max=49.5, lon_min=0.5, lon_max=19.5)
DT = 21600.0  # 4 steps per one-day window
PD_ERR_BUNDLE, PD_ERR_CONFIG, PD_ERR_INPUT, PD_ERR_GRID, PD_ERR_DEVICE = 6, 5, 7, 8, 9


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bridge_bundle") / "tiny"
    return make_tiny_bundle(path, coarse_grid=COARSE, fine_grid=FINE, seed=3)


@pytest.fixture(scope="module")
def driver(build_dir: Path) -> Path:
    if not driver_path(build_dir).exists():
        pytest.skip(f"{driver_path(build_dir)} not built")
    return build_dir


def fields_at(step: int, grid: LatLonGrid = MODEL) -> dict[str, np.ndarray]:
    lat2, lon2 = np.meshgrid(grid.lat, grid.lon, indexing="ij")
    ph = 0.4 * step
    return {
        "hus850": 0.007 + 0.003 * np.sin(np.deg2rad(lon2 * 12) + ph),
        "ua850": 5.0 + 4.0 * np.cos(np.deg2rad(lat2 * 9) - ph),
        "va850": -2.0 + 3.0 * np.sin(np.deg2rad(lat2 * 5 + lon2 * 7) + ph),
        "psl": 101300.0 + 900.0 * np.cos(np.deg2rad(lon2 * 6) + ph),
    }


def write_nml(tmp_path: Path, bundle: Path | str, extra: str = "") -> Path:
    p = tmp_path / "input.nml"
    p.write_text(
        "&precipdiff_nml\n"
        f" bundle_path = '{bundle}', device = 'cpu', torch_threads = 1,\n"
        " members = 2, seed = 11, sampler_steps = 3, output_units = 'mm/day',\n"
        f" {extra}\n/\n"
    )
    return p


@pytest.mark.parametrize("kind", [8, 4])
def test_fortran_and_python_paths_are_bit_identical(
    tmp_path: Path, bundle: Path, driver: Path, kind: int
) -> None:
    nml = write_nml(tmp_path, bundle)
    steps = [fields_at(s) for s in range(8)]
    res = run_driver(driver, nml, tmp_path, MODEL.lon, MODEL.lat, steps, DT, FINE.shape, kind)
    assert res.returncode == 0, res.stderr
    assert res.errflg == 0, res.errmsg
    assert [w[0] for w in res.windows] == [4, 8]

    dtype = np.float64 if kind == 8 else np.float32
    plugin = Plugin.from_namelist(str(nml), MODEL.lon, MODEL.lat, rank=0)
    try:
        python_windows = []
        for s, fields in enumerate(steps, start=1):
            for name, val in fields.items():
                plugin.set_field(name, val.astype(dtype))
            if plugin.step(s * DT, DT):
                # Copies: the plugin reuses its output buffers.
                fine, model = plugin.output_fine().copy(), plugin.output_model().copy()
                python_windows.append((s, fine, model))
    finally:
        plugin.close()
    assert [w[0] for w in python_windows] == [4, 8]
    for (_, f_fine, f_model), (_, p_fine, p_model) in zip(res.windows, python_windows, strict=True):
        assert np.all(np.isfinite(f_fine))
        assert f_fine.tobytes() == np.ascontiguousarray(p_fine, dtype=np.float64).tobytes()
        assert f_model.tobytes() == np.ascontiguousarray(p_model, dtype=np.float64).tobytes()
    # The two windows differ (the driver really fed new fields each step).
    assert not np.array_equal(res.windows[0][1], res.windows[1][1])


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_gpu_requested_strict_is_an_error(tmp_path: Path, bundle: Path, driver: Path) -> None:
    nml = write_nml(tmp_path, bundle, "device = 'cuda', strict_device = .true.")
    res = run_driver(driver, nml, tmp_path, MODEL.lon, MODEL.lat, [fields_at(0)], DT, None)
    assert res.returncode == 0, res.stderr
    assert res.errflg == PD_ERR_DEVICE
    assert "cuda" in res.errmsg.lower()
    assert "DRIVER_DONE" in res.stdout  # the host went on and finalized


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_gpu_requested_falls_back_with_warning(tmp_path: Path, bundle: Path, driver: Path) -> None:
    nml = write_nml(tmp_path, bundle, "device = 'cuda'")
    steps = [fields_at(s) for s in range(4)]
    res = run_driver(driver, nml, tmp_path, MODEL.lon, MODEL.lat, steps, DT, FINE.shape)
    assert res.errflg == 0, res.errmsg
    assert len(res.windows) == 1
    assert "cuda" in res.stderr.lower() and "cpu" in res.stderr.lower()


def test_missing_bundle_is_reported(tmp_path: Path, driver: Path) -> None:
    missing = tmp_path / "no_such_bundle"
    nml = write_nml(tmp_path, missing)
    res = run_driver(driver, nml, tmp_path, MODEL.lon, MODEL.lat, [fields_at(0)], DT, None)
    assert res.returncode == 0, res.stderr
    assert res.errflg in (PD_ERR_BUNDLE, PD_ERR_CONFIG)
    assert "no_such_bundle" in res.errmsg
    assert "DRIVER_DONE" in res.stdout


def test_variable_the_bundle_needs_never_fed(tmp_path: Path, bundle: Path, driver: Path) -> None:
    nml = write_nml(tmp_path, bundle)
    steps = [{k: v for k, v in fields_at(s).items() if k != "va850"} for s in range(4)]
    res = run_driver(driver, nml, tmp_path, MODEL.lon, MODEL.lat, steps, DT, FINE.shape)
    assert res.returncode == 0, res.stderr
    assert res.errflg != 0
    assert "va850" in res.errmsg
    assert "DRIVER_DONE" in res.stdout


def test_unknown_variable_is_reported(tmp_path: Path, bundle: Path, driver: Path) -> None:
    nml = write_nml(tmp_path, bundle)
    steps = [{**fields_at(0), "zg500": fields_at(0)["psl"]}]
    res = run_driver(driver, nml, tmp_path, MODEL.lon, MODEL.lat, steps, DT, FINE.shape)
    assert res.errflg != 0
    assert "zg500" in res.errmsg


def test_grid_not_covering_the_bundle_is_reported(
    tmp_path: Path, bundle: Path, driver: Path
) -> None:
    far = LatLonGrid.regular(2.0, lat_min=-49.0, lat_max=-31.0, lon_min=101.0, lon_max=119.0)
    nml = write_nml(tmp_path, bundle)
    res = run_driver(driver, nml, tmp_path, far.lon, far.lat, [fields_at(0, far)], DT, None)
    assert res.returncode == 0, res.stderr
    assert res.errflg == PD_ERR_GRID, res.errmsg
    assert "DRIVER_DONE" in res.stdout
