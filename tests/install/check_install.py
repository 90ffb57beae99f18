#!/usr/bin/env python3
"""Run what `cmake --install` put in a prefix, as a user would (ctest package_installed_programs).

Checks, each against the INSTALLED tree (never the build tree):

1. ``bin/toy_esm`` runs (dynamics only): the program finds ``libprecipdiff`` through its
   relative RUNPATH (``$ORIGIN/../lib``), without ``LD_LIBRARY_PATH``;
2. ``bin/toy_esm`` coupled to a tiny bundle for one day, with ``PRECIPDIFF_PYTHON`` unset
   and only the venv's ``bin/`` on ``PATH`` (an activated venv): the installed library finds
   the interpreter by the PATH rule;
3. ``bin/offline_replay`` on real CNRM-CM5 fields for two days (the repository's demo
   sample), same environment;
4. the run-time Python rule with the consumer program ``which_python`` (built and installed
   by the find_package consumer project):
   a. no PRECIPDIFF_PYTHON, no Python environment with precipdiff on PATH: fails, naming
      every candidate it tried;
   b. the library installed into a venv prefix that holds precipdiff (installed from a
      wheel of this checkout): the prefix's own ``bin/python3.Y`` is chosen and starts,
      with nothing on PATH;
   c. a Python environment on PATH whose precipdiff has another version: rejected, saying so.

Exit status 0 when every check passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SYSTEM_PATH = "/usr/bin:/bin"
PYVER = f"{sys.version_info.major}.{sys.version_info.minor}"


def clean_env(**extra: str) -> dict[str, str]:
    """The current environment without any Python selection, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PRECIPDIFF_PYTHON", "VIRTUAL_ENV", "PYTHONHOME", "LD_LIBRARY_PATH")
    }
    env.update({"OMP_NUM_THREADS": "1", "PATH": SYSTEM_PATH, "PYTHONNOUSERSITE": "1"})
    env.update(extra)
    return env


def run(cmd: list[str], env: dict[str, str], what: str) -> subprocess.CompletedProcess[str]:
    print(f"--- {what}: {' '.join(cmd)}", flush=True)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    out = (r.stdout + r.stderr).strip()
    print("\n".join(out.splitlines()[-15:]))
    print(f"(exit status {r.returncode})", flush=True)
    return r


def make_prefix_venv(prefix: Path, build: Path, wheel_dir: Path) -> None:
    """A venv at ``prefix`` with the native package installed into it and precipdiff from a
    wheel of this checkout (its dependencies come from the build venv's site-packages)."""
    shutil.rmtree(prefix, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(prefix)], check=True)
    subprocess.run(
        ["cmake", "--install", str(build), "--prefix", str(prefix)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    shutil.rmtree(wheel_dir, ignore_errors=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-w",
            str(wheel_dir),
            str(REPO),
        ],
        check=True,
    )
    wheel = next(wheel_dir.glob("precipdiff-*.whl"))
    site = prefix / "lib" / f"python{PYVER}" / "site-packages"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            "--target",
            str(site),
            str(wheel),
        ],
        check=True,
    )
    deps = sysconfig.get_paths()["purelib"]  # torch, numpy, cffi... of the build venv
    (site / "zz_precipdiff_test_deps.pth").write_text(f"import site; site.addsitedir({deps!r})\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prefix", required=True, type=Path, help="the install prefix to test")
    p.add_argument("--build", required=True, type=Path, help="the CMake build directory")
    p.add_argument(
        "--consumer-bin",
        required=True,
        type=Path,
        help="bin/ of the installed find_package consumer (which_python)",
    )
    p.add_argument("--workdir", required=True, type=Path)
    args = p.parse_args(argv)
    prefix, work = args.prefix.resolve(), args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    venv_bin = str(Path(sys.executable).parent)  # the venv's python is this script's
    py = sys.executable
    failures: list[str] = []

    if not (prefix / "share" / "precipdiff" / "precipdiff.meta").is_file():
        failures.append("share/precipdiff/precipdiff.meta (CCPP metadata) is not installed")

    # 1. installed program loads libprecipdiff by its RUNPATH
    exe = prefix / "bin" / "toy_esm"
    r = run(
        [
            py,
            str(REPO / "examples/toy_esm/run_toy_esm.py"),
            "--exe",
            str(exe),
            "--workdir",
            str(work / "toy_dynamics"),
            "--no-plugin",
            "--days",
            "1",
        ],
        clean_env(),
        "1 toy_esm",
    )
    if r.returncode != 0:
        failures.append(f"installed toy_esm (dynamics) failed: {r.stdout[-300:]}{r.stderr[-300:]}")

    # 2. coupled: the installed library starts the venv's Python found on PATH
    path_env = clean_env(PATH=f"{venv_bin}:{SYSTEM_PATH}")
    r = run(
        [
            py,
            str(REPO / "examples/toy_esm/run_toy_esm.py"),
            "--exe",
            str(exe),
            "--workdir",
            str(work / "toy_coupled"),
            "--tiny-bundle",
            "--days",
            "1",
        ],
        path_env,
        "2 toy_esm",
    )
    if r.returncode != 0:
        failures.append("installed toy_esm (coupled, Python from PATH) failed")

    # 3. the offline replay of real CNRM-CM5 fields
    r = run(
        [
            py,
            str(REPO / "examples/offline_replay/run_offline_replay.py"),
            "--exe",
            str(prefix / "bin" / "offline_replay"),
            "--workdir",
            str(work / "replay"),
            "--days",
            "2",
            "--tiny-bundle",
            "--data-dir",  # the repository's real-data sample: runs on any machine
            str(REPO / "examples/offline_replay/sample"),
        ],
        path_env,
        "3 offline_replay",
    )
    if r.returncode == 77:
        print("offline_replay: skipped (no data)")
    elif r.returncode != 0:
        failures.append("installed offline_replay failed")

    # 4a. nothing to find: one message naming every candidate
    which = str(args.consumer_bin / "which_python")
    r = run([which], clean_env(), "4a which_python, no Python with precipdiff")
    expected = ["PRECIPDIFF_PYTHON: unset", f"{prefix}/bin/python{PYVER}: not found", "PATH"]
    if r.returncode == 0 or not all(e in r.stdout for e in expected):
        failures.append(f"4a: expected a failure naming {expected}, got {r.stdout!r}")

    # 4b. the library installed into a venv: its own python is used
    venv_prefix = work / "venv_prefix"
    make_prefix_venv(venv_prefix, args.build.resolve(), work / "wheel")
    r = run([which], clean_env(LD_LIBRARY_PATH=str(venv_prefix / "lib")), "4b prefix venv")
    want = f"python: {venv_prefix}/bin/python{PYVER}"
    if r.returncode != 0 or want not in r.stdout:
        failures.append(f"4b: expected {want!r} and a started server, got {r.stdout!r}")

    # 4c. a Python environment on PATH with an incompatible precipdiff is rejected
    other = work / "venv_other"
    shutil.rmtree(other, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(other)], check=True)
    site = other / "lib" / f"python{PYVER}" / "site-packages"
    (site / "precipdiff-9.9.0.dist-info").mkdir(parents=True)
    r = run([which], clean_env(PATH=f"{other}/bin:{SYSTEM_PATH}"), "4c other version on PATH")
    if r.returncode == 0 or "has precipdiff 9.9.0" not in r.stdout:
        failures.append(f"4c: expected 'has precipdiff 9.9.0' in the failure, got {r.stdout!r}")

    for f in failures:
        print(f"FAIL: {f}")
    if not failures:
        print("installed tree: all checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
