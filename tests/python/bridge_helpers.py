"""Helpers shared by the bridge tests and bench/bench_bridge_overhead.py.

Write the replay driver's input file, run the Fortran driver
(tests/fortran/pd_replay_driver.F90) in a subprocess and read its outputs back.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def driver_path(build_dir: Path) -> Path:
    return build_dir / "tests" / "fortran" / "pd_replay_driver"


def write_input(
    path: Path,
    lon: np.ndarray,
    lat: np.ndarray,
    steps: list[dict[str, np.ndarray]],
    dt: float,
) -> None:
    """steps[s][name] is a C-order (nlat, nlon) array: the Fortran (nlon, nlat) memory."""
    names = list(steps[0])
    nlat, nlon = lat.size, lon.size
    with open(path, "wb") as f:
        np.array([nlon, nlat, len(names), len(steps)], dtype=np.int32).tofile(f)
        np.array([dt], dtype=np.float64).tofile(f)
        lon.astype(np.float64).tofile(f)
        lat.astype(np.float64).tofile(f)
        f.write(b"".join(n.encode().ljust(16) for n in names))
        for s in steps:
            for n in names:
                np.ascontiguousarray(s[n], dtype=np.float64).tofile(f)


@dataclass
class DriverResult:
    returncode: int
    stdout: str
    stderr: str
    windows: list[tuple[int, np.ndarray, np.ndarray]] = field(default_factory=list)

    @property
    def errflg(self) -> int:
        for line in self.stdout.splitlines():
            if line.startswith("ERRFLG "):
                return int(line.split()[1])
        return 0

    @property
    def errmsg(self) -> str:
        for line in self.stdout.splitlines():
            if line.startswith("ERRMSG "):
                return line[len("ERRMSG ") :]
        return ""

    def value(self, key: str) -> float:
        for line in self.stdout.splitlines():
            if line.startswith(key + " "):
                return float(line.split()[1])
        raise KeyError(key)


def run_driver(
    build_dir: Path,
    nml: Path,
    workdir: Path,
    lon: np.ndarray,
    lat: np.ndarray,
    steps: list[dict[str, np.ndarray]],
    dt: float,
    fine_shape: tuple[int, int] | None,
    kind: int = 8,
    repeat: int = 1,
    env: dict[str, str] | None = None,
    timeout: float = 300.0,
) -> DriverResult:
    inp = workdir / "driver_input.bin"
    out = workdir / "driver_output.bin"
    write_input(inp, lon, lat, steps, dt)
    full_env = {k: v for k, v in os.environ.items() if k != "PRECIPDIFF_PLUGIN_CLASS"}
    full_env.update({"OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"})
    full_env.update(env or {})
    proc = subprocess.run(
        [str(driver_path(build_dir)), str(nml), str(inp), str(out), str(kind), str(repeat)],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=workdir,
        timeout=timeout,
    )
    res = DriverResult(proc.returncode, proc.stdout, proc.stderr)
    if fine_shape is not None and out.exists():
        nlat_f, nlon_f = fine_shape
        raw = out.read_bytes()
        rec = 4 + 8 * (nlat_f * nlon_f + lat.size * lon.size)
        for off in range(0, len(raw) - rec + 1, rec):
            step = int(np.frombuffer(raw, np.int32, 1, off)[0])
            fine = np.frombuffer(raw, np.float64, nlat_f * nlon_f, off + 4).reshape(fine_shape)
            model = np.frombuffer(
                raw, np.float64, lat.size * lon.size, off + 4 + 8 * nlat_f * nlon_f
            ).reshape(lat.size, lon.size)
            res.windows.append((step, fine.copy(), model.copy()))
    return res
