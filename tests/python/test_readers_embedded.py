"""netCDF4 inside a C program linked to the system libnetcdf (the bridge situation).

TOOLCHAIN.md: importing the netCDF4 wheel (own libnetcdf/HDF5) into a process
already linked to Debian's libnetcdf segfaults; ``precipdiff.io.import_netcdf4``
loads it with RTLD_DEEPBIND. This test builds a small C host that writes a file
with the system library, embeds Python which reads it and writes another with the
wheel (through ``import_netcdf4``, then imports xarray), and reads that back in C.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

HOST_C = r"""
#include <Python.h>
#include <netcdf.h>
#include <stdio.h>
#define CHECK(e) do { int s_ = (e); if (s_ != NC_NOERR) { \
  fprintf(stderr, "netcdf: %s\n", nc_strerror(s_)); return 2; } } while (0)
int main(int argc, char **argv) {
  /* argv: python executable, C-written file, python-written file, python code */
  int ncid, dim, var; float v[3] = {1.f, 2.f, 3.f}, r[3] = {0};
  if (argc != 5) return 1;
  CHECK(nc_create(argv[2], NC_NETCDF4 | NC_CLOBBER, &ncid));
  CHECK(nc_def_dim(ncid, "x", 3, &dim));
  CHECK(nc_def_var(ncid, "a", NC_FLOAT, 1, &dim, &var));
  CHECK(nc_put_var_float(ncid, var, v));
  CHECK(nc_close(ncid));
  PyConfig config; PyConfig_InitPythonConfig(&config);
  config.install_signal_handlers = 0;
  if (PyStatus_Exception(PyConfig_SetBytesString(&config, &config.executable, argv[1]))) return 3;
  PyStatus st = Py_InitializeFromConfig(&config); PyConfig_Clear(&config);
  if (PyStatus_Exception(st)) return 4;
  if (PyRun_SimpleString(argv[4]) != 0) return 5;
  Py_Finalize();
  CHECK(nc_open(argv[3], NC_NOWRITE, &ncid));
  CHECK(nc_inq_varid(ncid, "b", &var));
  CHECK(nc_get_var_float(ncid, var, r));
  CHECK(nc_close(ncid));
  printf("C read %g %g %g\n", r[0], r[1], r[2]);
  return (r[0] == 2.f && r[1] == 4.f && r[2] == 6.f) ? 0 : 6;
}
"""

PY_CODE = """
import sys
from precipdiff.io import import_netcdf4
flags = sys.getdlopenflags()
nc = import_netcdf4()
assert sys.getdlopenflags() == flags, "dlopen flags not restored"
with nc.Dataset({c!r}) as d:
    a = d["a"][:]
with nc.Dataset({p!r}, "w") as d:
    d.createDimension("x", 3)
    d.createVariable("b", "f4", ("x",))[:] = 2 * a
import xarray  # its netCDF4 backend must reuse the module loaded above
from precipdiff.io.readers import open_predictors
print("python side ok")
"""


def _build(tmp: Path) -> Path:
    if shutil.which("gcc") is None or shutil.which("nc-config") is None:
        pytest.skip("gcc or nc-config (system netCDF-C) not available")
    libdir = sysconfig.get_config_var("LIBDIR")
    ldlib = sysconfig.get_config_var("LDLIBRARY") or ""
    if not ldlib.endswith(".so") or not (Path(libdir) / ldlib).exists():
        pytest.skip(f"no shared libpython to embed ({ldlib!r} in {libdir})")
    cflags = subprocess.run(["nc-config", "--cflags"], capture_output=True, text=True).stdout
    libs = subprocess.run(["nc-config", "--libs"], capture_output=True, text=True).stdout
    src = tmp / "host.c"
    src.write_text(HOST_C)
    exe = tmp / "host"
    pylib = ldlib[3:].rsplit(".so", 1)[0]
    cmd = [
        "gcc", "-o", str(exe), str(src), f"-I{sysconfig.get_paths()['include']}",
        *cflags.split(), f"-L{libdir}", f"-l{pylib}", f"-Wl,-rpath,{libdir}", *libs.split(),
    ]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot build the C host: {res.stderr[-300:]}")
    return exe


def test_import_netcdf4_in_process_linked_to_system_netcdf(tmp_path: Path) -> None:
    exe = _build(tmp_path)
    c_file, p_file = tmp_path / "c.nc", tmp_path / "p.nc"
    code = PY_CODE.format(c=str(c_file), p=str(p_file))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    res = subprocess.run(
        [str(exe), sys.executable, str(c_file), str(p_file), code],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert res.returncode == 0, f"rc={res.returncode}\n{res.stdout}\n{res.stderr}"
    assert "python side ok" in res.stdout and "C read 2 4 6" in res.stdout
