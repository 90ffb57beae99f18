"""Drive the Fortran module `precipdiff` itself from pytest through its f90wrap
wrapper (built by CMake in build/fortran_bridge/f90wrap): generic interfaces,
real(4)/real(8), Fortran-order arrays, errmsg/errflg, as an ESM calls them.

The library runs inside this interpreter here (it detects Python is already up);
the out-of-process path (interpreter started by C with PyConfig, clean
environment, FP traps) is covered by the ctest programs and test_bridge_plugin.py.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from precipdiff.server import capi

pytestmark = [pytest.mark.needs_build]

FAKE = Path(__file__).resolve().parents[1] / "fortran"
PD_ERR_NOT_INITIALISED, PD_ERR_BAD_HANDLE, PD_ERR_INVALID_ARGUMENT = 2, 3, 4
PD_ERR_INPUT, PD_ERR_ALREADY_INITIALISED = 7, 11


@pytest.fixture(scope="module")
def pd(build_dir: Path) -> ModuleType:
    where = build_dir / "fortran_bridge" / "f90wrap"
    if not (where / "precipdiff_f90.py").exists():
        pytest.skip(f"f90wrap wrapper not built in {where} (PRECIPDIFF_BUILD_F90WRAP=OFF?)")
    sys.path.insert(0, str(where))
    try:
        mod = importlib.import_module("precipdiff_f90")
    finally:
        sys.path.remove(str(where))
    return mod.precipdiff


@pytest.fixture()
def fake(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.syspath_prepend(str(FAKE))
    monkeypatch.setenv(capi.PLUGIN_CLASS_ENV, "pd_fake_plugin:FakePlugin")
    return str(FAKE / "fake.nml")


def msg(errmsg: bytes | str) -> str:
    return (errmsg.decode() if isinstance(errmsg, bytes) else errmsg).strip()


LON = np.arange(6) * 30.0
LAT = np.array([-45.0, 0.0, 45.0])


def init(pd: ModuleType, nml: str, lon=LON, lat=LAT) -> int:
    h = np.zeros((), np.int32)
    errmsg, errflg = pd.precipdiff_init(h, nml, lon, lat)
    assert errflg == 0, msg(errmsg)
    return int(h)


def test_window_through_the_fortran_module(pd: ModuleType, fake: str) -> None:
    h = init(pd, fake)
    assert h > 0
    nlon, nlat, nlon_f, nlat_f, errmsg, errflg = pd.precipdiff_shapes(h)
    assert (nlon, nlat, nlon_f, nlat_f, errflg) == (6, 3, 24, 12, 0)
    # Fortran arrays (nlon, nlat): element (i, j) is lon i, lat j.
    q = np.asfortranarray(np.add.outer(np.arange(6) * 1e-3, np.arange(3) * 1e-4))
    psl = np.asfortranarray(np.full((6, 3), 1.0e5))
    # f90wrap's generic dispatcher tries the specifics in order and lets f2py cast,
    # so a float64 array could land in the real(4) specific: call the generic only
    # with float32 data and name the real(8) specifics explicitly.
    assert pd.precipdiff_set_field(h, "hus850", q.astype(np.float32))[1] == 0  # real(4)
    assert pd.set_field_2d_r8(h, "psl", psl)[1] == 0
    fine = np.zeros((24, 12), order="F")
    model = np.zeros((6, 3), order="F")
    ready, errmsg, errflg = pd.precipdiff_run(h, 3600.0, 3600.0, fine, model)
    assert (ready, errflg) == (0, 0)
    plev = np.asfortranarray(np.broadcast_to([100000.0, 85000.0], (6, 3, 2)))
    hus3 = np.asfortranarray(np.stack([q * 5, q], axis=2))
    assert pd.set_field_3d_r8(h, "hus850", hus3, plev)[1] == 0  # 3-D with pressure
    assert pd.set_field_2d_r8(h, "psl", psl)[1] == 0
    ready, errmsg, errflg = pd.precipdiff_run(h, 7200.0, 7200.0, fine, model)
    assert errflg == 0, msg(errmsg)
    assert ready
    expect = (q.astype(np.float32).astype(np.float64) + q) / 2 + psl
    np.testing.assert_array_equal(model, expect)
    np.testing.assert_array_equal(fine[::4, ::4], expect)
    assert pd.precipdiff_finalize(np.array(h, np.int32))[1] == 0


def test_boundary_errors_through_the_fortran_module(pd: ModuleType, fake: str) -> None:
    fine = np.zeros((24, 12), order="F")
    model = np.zeros((6, 3), order="F")
    _ready, errmsg, errflg = pd.precipdiff_run(0, 3600.0, 3600.0, fine, model)
    assert errflg == PD_ERR_NOT_INITIALISED and "precipdiff_init" in msg(errmsg)
    h = init(pd, fake)
    errmsg, errflg = pd.precipdiff_init(np.array(h, np.int32), fake, LON, LAT)
    assert errflg == PD_ERR_ALREADY_INITIALISED and "already initialised" in msg(errmsg)
    errmsg, errflg = pd.precipdiff_set_field(h + 99, "psl", np.ones((6, 3), order="F"))
    assert errflg == PD_ERR_BAD_HANDLE and f"unknown handle {h + 99}" in msg(errmsg)
    errmsg, errflg = pd.precipdiff_set_field(h, "psl", np.ones((5, 3), order="F"))
    assert errflg == PD_ERR_INVALID_ARGUMENT and "nlon=5" in msg(errmsg)
    bad = np.ones((6, 3), order="F")
    bad[3, 1] = np.nan
    errmsg, errflg = pd.precipdiff_set_field(h, "psl", bad)
    assert errflg == PD_ERR_INPUT and "(4, 2)" in msg(errmsg)
    errmsg, errflg = pd.precipdiff_get_output(h, fine, model)
    assert errflg == PD_ERR_INPUT and "no output yet" in msg(errmsg)
    assert pd.precipdiff_finalize(np.array(h, np.int32))[1] == 0
    assert pd.precipdiff_finalize(np.array(0, np.int32))[1] == 0  # idempotent
