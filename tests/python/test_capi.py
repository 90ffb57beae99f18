"""Unit tests of precipdiff.server.capi: handle registry, argument checks, error
mapping. Pure Python (the cffi pointer shims are exercised by the ctest programs)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from precipdiff import errors
from precipdiff.server import capi
from precipdiff.server.capi import Bridge, BridgeError, Status

FAKE_DIR = Path(__file__).resolve().parents[1] / "fortran"


@pytest.fixture()
def fake_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(FAKE_DIR))
    monkeypatch.setenv(capi.PLUGIN_CLASS_ENV, "pd_fake_plugin:FakePlugin")


@pytest.fixture()
def grid() -> tuple[np.ndarray, np.ndarray]:
    return np.arange(6) * 30.0, np.array([-45.0, 0.0, 45.0])


def make(bridge: Bridge, grid: tuple[np.ndarray, np.ndarray]) -> int:
    return bridge.create(str(FAKE_DIR / "fake.nml"), *grid)


def test_ready_magic_is_not_zero() -> None:
    # cffi returns 0 from every function when its init failed: 0 must not mean ready.
    assert capi.READY_MAGIC != 0


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (errors.GridError("g"), Status.GRID),
        (errors.InputError("i"), Status.INPUT),
        (errors.ConfigError("c"), Status.CONFIG),
        (errors.BundleError("b"), Status.BUNDLE),
        (errors.DeviceError("d"), Status.DEVICE),
        (ModuleNotFoundError("No module named 'torch'"), Status.PYTHON_INIT),
        (ValueError("bug"), Status.PYTHON),
        (SystemExit(2), Status.PYTHON),
        (KeyboardInterrupt(), Status.PYTHON),
        (BridgeError(Status.BAD_HANDLE, "x"), Status.BAD_HANDLE),
    ],
)
def test_status_of(exc: BaseException, status: Status) -> None:
    assert capi.status_of(exc) == status


def test_handles_are_distinct_and_never_reused(fake_env: None, grid) -> None:
    b = Bridge()
    h1, h2 = make(b, grid), make(b, grid)
    assert 0 < h1 < h2 and b.count == 2
    b.destroy(h1)
    h3 = make(b, grid)
    assert h3 not in (h1, h2)
    with pytest.raises(BridgeError, match=f"unknown handle {h1}") as ei:
        b.step(h1, 3600.0, 3600.0)
    assert ei.value.status == Status.BAD_HANDLE
    with pytest.raises(BridgeError, match="precipdiff_init") as ei:
        b.step(0, 3600.0, 3600.0)
    assert ei.value.status == Status.NOT_INITIALISED


def test_missing_namelist_names_the_file(fake_env: None, grid, tmp_path: Path) -> None:
    with pytest.raises(errors.ConfigError, match=r"nope\.nml"):
        Bridge().create(str(tmp_path / "nope.nml"), *grid)


def test_subdomain_refused_with_reason(fake_env: None, grid) -> None:
    with pytest.raises(BridgeError, match="domain decomposition") as ei:
        Bridge().create(str(FAKE_DIR / "fake.nml"), *grid, start=(2, 1), global_shape=(12, 3))
    assert ei.value.status == Status.INVALID_ARGUMENT


def test_set_field_checks_shape_and_finiteness(fake_env: None, grid) -> None:
    b = Bridge()
    h = make(b, grid)
    with pytest.raises(BridgeError, match=r"Fortran shape \(nlon=5, nlat=3\).*nlon=6, nlat=3"):
        b.set_field(h, "psl", np.zeros((3, 5)), None)
    bad = np.ones((3, 6))
    bad[2, 4] = np.inf
    bad[1, 1] = np.nan
    with pytest.raises(errors.InputError, match=r"'psl' has 2 non-finite.*\(2, 2\)"):
        b.set_field(h, "psl", bad, None)
    p = np.full((2, 3, 6), 85000.0)
    p[0, 0, 0] = np.nan
    with pytest.raises(errors.InputError, match="pressure of field 'hus850'"):
        b.set_field(h, "hus850", np.ones((2, 3, 6)), p)


def test_window_and_output_in_place(fake_env: None, grid) -> None:
    b = Bridge()
    h = make(b, grid)
    fine = np.full((12, 24), -1.0)
    model = np.full((3, 6), -1.0)
    with pytest.raises(errors.InputError, match="no output yet"):
        b.get_output(h, fine, model)
    q = np.arange(18, dtype=np.float32).reshape(3, 6)
    b.set_field(h, "hus850", q, None)
    b.set_field(h, "psl", np.ones((3, 6)), None)
    assert b.step(h, 7200.0, 7200.0)
    b.get_output(h, fine, model)
    np.testing.assert_array_equal(model, q + 1.0)
    np.testing.assert_array_equal(fine[::4, ::4], q + 1.0)
    with pytest.raises(BridgeError, match="pr_fine has Fortran shape"):
        b.get_output(h, np.zeros((12, 23)), None)
    with pytest.raises(BridgeError, match="dt=0"):
        b.step(h, 9000.0, 0.0)
    assert b.shapes(h) == (6, 3, 24, 12)
    assert b.required_fields(h) == ["hus850", "psl"]


def test_fail_records_message_with_handle_and_location(fake_env: None, grid) -> None:
    b = Bridge()
    h = make(b, grid)
    try:
        raise ValueError("boom")
    except ValueError as exc:
        code = b.fail("precipdiff_run", h, exc)
    assert code == Status.PYTHON
    assert b.last_error.startswith(f"precipdiff_run (handle {h}): ValueError: boom [at ")
    assert "test_capi.py" in b.last_error


def test_destroy_closes_plugin(fake_env: None, grid) -> None:
    b = Bridge()
    h = make(b, grid)
    plugin = b.get(h).plugin
    b.destroy(h)
    assert plugin.closed and b.count == 0  # type: ignore[attr-defined]


def test_plugin_class_spec_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(errors.ConfigError, match="expected 'module:Class'"):
        capi.load_plugin_class("no_colon")
    with pytest.raises(errors.ConfigError, match="has no attribute 'Nope'"):
        capi.load_plugin_class("precipdiff.errors:Nope")
    with pytest.raises(ModuleNotFoundError):
        capi.load_plugin_class("no_such_module_xyz:Plugin")
    monkeypatch.delenv(capi.PLUGIN_CLASS_ENV, raising=False)
    from precipdiff.server.plugin import Plugin

    assert capi.load_plugin_class() is Plugin


def test_module_imports_no_torch_at_import_time() -> None:
    # capi is imported by cffi's init code before any plugin exists: keep it light,
    # so "precipdiff not importable" and "torch not importable" are told apart.
    import subprocess

    code = "import sys, precipdiff.server.capi; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_views_are_zero_copy_and_inputs_read_only() -> None:
    import cffi

    ffi = cffi.FFI()
    buf = ffi.new("double[6]", [1, 2, 3, 4, 5, 6])
    # Fortran a(3, 2) == C-order (2, 3): element a(3, 1) is buf[2].
    out = capi._view(ffi, buf, np.float64, (2, 3), "out", True)
    assert out[0, 2] == 3.0
    out[1, 2] = 60.0
    assert buf[5] == 60.0  # written in place, no copy
    inp = capi._view(ffi, buf, np.float64, (2, 3), "in", False)
    assert not inp.flags.writeable
    with pytest.raises(BridgeError, match="in is a NULL pointer"):
        capi._view(ffi, ffi.NULL, np.float64, (2, 3), "in", False)


def test_last_error_is_per_thread() -> None:
    import threading

    b = Bridge()
    b.fail("here", None, ValueError("main"))
    seen: list[str] = []
    t = threading.Thread(target=lambda: seen.append(b.last_error))
    t.start()
    t.join()
    assert seen == [""] and "main" in b.last_error


def test_member_communicator_without_mpi4py_fails_loudly(
    fake_env: None, grid, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per-node mode needs mpi4py: never silently the whole ensemble on every rank."""
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py -> ImportError
    b = Bridge()
    with pytest.raises(
        errors.ConfigError, match=r"inference='per_node'.*mpi4py.*precipdiff\[mpi\]"
    ):
        b.create(str(FAKE_DIR / "fake.nml"), *grid, comm_f=5, comm_kind=capi.CommKind.MEMBERS)
    assert b.count == 0
    # The host's own communicator only labels messages: mpi4py stays optional there.
    h = b.create(str(FAKE_DIR / "fake.nml"), *grid, comm_f=5, comm_kind=capi.CommKind.RANK)
    assert h > 0


def test_restart_without_a_closed_window_restores_no_output(
    fake_env: None, grid, tmp_path: Path
) -> None:
    b = Bridge()
    h = make(b, grid)
    b.set_field(h, "hus850", np.ones((3, 6)), None)
    b.set_field(h, "psl", np.ones((3, 6)), None)
    assert not b.step(h, 3600.0, 3600.0)
    b.write_restart(h, str(tmp_path / "r.json"))
    h2 = make(b, grid)
    b.read_restart(h2, str(tmp_path / "r.json"))
    with pytest.raises(errors.InputError, match="no output yet"):
        b.get_output(h2, np.zeros((12, 24)), np.zeros((3, 6)))
