"""The MPI layer (module precipdiff_mpi) under mpiexec, from pytest.

Runs the ctest programs of tests/mpi/ from the CMake build (skipped without it or
without mpiexec): exact gather/scatter, restarts and failure propagation with the
fake plugin on 1-4 ranks, and (slow) the real plugin's bit-identical output across
rank counts.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.mpi, pytest.mark.needs_build]

MPI_ENV = {
    "OMP_NUM_THREADS": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
    "OMPI_MCA_rmaps_base_oversubscribe": "1",
    "OMPI_ALLOW_RUN_AS_ROOT": "1",
    "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
}


def _mpiexec() -> str:
    exe = shutil.which("mpiexec") or shutil.which("mpirun")
    if exe is None:
        pytest.skip("mpiexec not found")
    return exe


def _exe(build_dir: Path, name: str) -> Path:
    path = build_dir / "tests" / "mpi" / name
    if not path.is_file():
        pytest.skip(f"{path} not built (PRECIPDIFF_ENABLE_MPI=ON and cmake --build needed)")
    return path


@pytest.mark.parametrize("nranks", [1, 2, 3, 4])
def test_fake_plugin_layer(build_dir: Path, tmp_path: Path, nranks: int) -> None:
    exe = _exe(build_dir, "test_mpi_fake")
    env = dict(
        os.environ,
        **MPI_ENV,
        PYTHONPATH=f"{REPO / 'tests' / 'mpi'}:{REPO / 'tests' / 'fortran'}",
        PRECIPDIFF_PLUGIN_CLASS="pd_mpi_fake_plugin:FailingPlugin",
    )
    cmd = [
        _mpiexec(),
        "-n",
        str(nranks),
        str(exe),
        str(REPO / "tests" / "fortran"),
        str(REPO / "tests" / "mpi"),
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert out.count("all checks passed") == nranks, out
    assert "FAIL" not in out


@pytest.mark.slow
def test_real_plugin_bit_identical_across_ranks(build_dir: Path, tmp_path: Path) -> None:
    driver = _exe(build_dir, "pd_mpi_driver")
    cmd = [
        sys.executable,
        str(REPO / "tests" / "mpi" / "run_mpi_real.py"),
        "--driver",
        str(driver),
        f"--mpiexec={_mpiexec()}",
        "--numproc-flag=-n",
        "--workdir",
        str(tmp_path),
        "decomposition",
    ]
    proc = subprocess.run(
        cmd, env=dict(os.environ, **MPI_ENV), capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "decomposition: all checks passed" in proc.stdout
