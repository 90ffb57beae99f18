"""The embedded server's process set-up leaves the host alone (issue #15, item 1).

A C host (tests/fortran/test_host_environment.c) with floating-point traps on drives
the real Plugin with a tiny bundle, the caching allocator and denormal flushing on,
through a window close (the networks run), and checks after every call that its
floating-point environment is bit-identical, that it still computes denormals, and
that glibc still mmaps a 64 MiB block (nobody raised its mmap threshold).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from precipdiff.grids import LatLonGrid
from precipdiff.testing.models import make_tiny_bundle

pytestmark = [pytest.mark.needs_build, pytest.mark.slow]

COARSE = LatLonGrid.regular(4.0, lat_min=32.0, lat_max=48.0, lon_min=2.0, lon_max=18.0)
FINE = LatLonGrid.regular(1.0, lat_min=30.5, lat_max=49.5, lon_min=0.5, lon_max=19.5)


@pytest.fixture(scope="module")
def host(build_dir: Path) -> Path:
    exe = build_dir / "tests" / "fortran" / "test_host_environment"
    if not exe.exists():
        pytest.skip(f"{exe} not built")
    return exe


@pytest.mark.parametrize("allocator", ["caching", "default"])
def test_plugin_leaves_host_fp_environment_and_malloc_alone(
    host: Path, tmp_path: Path, allocator: str
) -> None:
    bundle = make_tiny_bundle(tmp_path / "b", coarse_grid=COARSE, fine_grid=FINE, seed=1)
    nml = tmp_path / "input.nml"
    nml.write_text(
        "&precipdiff_nml\n"
        f" bundle_path = '{bundle}', device = 'cpu', torch_threads = 2,\n"
        f" torch_allocator = '{allocator}', flush_denormals = .true.\n"
        "/\n"
    )
    # Model grid 2 degrees over the bundle's domain; 4 steps of 6 h close one window.
    args = [str(host), str(nml), "10", "10", "1.0", "2.0", "31.0", "2.0", "8", "21600.0"]
    proc = subprocess.run(
        args, capture_output=True, text=True, cwd=tmp_path, timeout=600, check=False
    )
    out = proc.stdout
    assert "RESULT PASS" in out, out + proc.stderr[-3000:]
    assert "WINDOWS 2" in out
    assert "CHECK FAIL" not in out
