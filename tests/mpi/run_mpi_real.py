#!/usr/bin/env python3
"""Real-plugin checks of the MPI layer: the driver behind the mpi_real_* ctest tests.

Makes a tiny bundle (random weights, base 8 channels) on a 10-degree global coarse grid
with a 2.5-degree fine grid, writes a namelist, and runs ``pd_mpi_driver``
(tests/mpi/pd_mpi_driver.F90) under mpiexec:

``decomposition``
    the same 3 simulated days on 1, 2, 3 and 4 ranks with uneven blocks; the assembled
    global model-grid and fine-grid precipitation of every window must be
    bit-identical across the rank counts (and every rank's copy of the fine grid
    identical); also with the inference on the last of 3 ranks, which must then write
    the plugin's output stream (``output_rank = 2``).
``restart``
    10 days in one run (2 ranks) against 5 days (3 ranks) + restart file + 5 days
    (4 ranks), in lagged mode so that a pending result crosses the restart, with 2
    members and ``return_mode = 'cycle'``: the last 5 days must be equal bit for bit.
``failures``
    a corrupt bundle (one weight file overwritten) and a missing restart file on 3
    ranks: every rank must report the same errflg and exit; a hang hits the timeout.

Exit status 0 when every check passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

NLON, NLAT = 36, 18  # the driver's cell-centred 10-degree model grid
DT = 21600.0  # 4 steps per daily window


def tiny_bundle(path: Path) -> Path:
    """Tiny u10/v10/msl bundle: 10-degree coarse grid with poles, 2.5-degree fine grid."""
    from precipdiff.grids import LatLonGrid
    from precipdiff.testing_models import make_tiny_bundle

    coarse = LatLonGrid(lat=np.linspace(-90.0, 90.0, 19), lon=np.arange(0.0, 360.0, 10.0))
    fine = LatLonGrid(lat=np.linspace(-90.0, 90.0, 73), lon=np.arange(0.0, 360.0, 2.5))
    return make_tiny_bundle(
        path, coarse_grid=coarse, fine_grid=fine, variables=["u10", "v10", "msl"], overwrite=True
    )


def write_namelist(path: Path, bundle: Path, **extra: object) -> Path:
    """Write ``&precipdiff_nml`` for the tiny bundle (CPU, 2 sampler steps, 1 thread)."""
    keys: dict[str, object] = {
        "bundle_path": str(bundle),
        "device": "cpu",
        "members": 1,
        "sampler_steps": 2,
        "seed": 3,
        "window_s": 86400.0,
        "output_units": "mm/day",
        "torch_threads": 1,
    }
    keys.update(extra)
    lines = ["&precipdiff_nml"]
    for k, v in keys.items():
        val = f"'{v}'" if isinstance(v, str) else repr(v)
        lines.append(f"  {k} = {val}")
    lines.append("/")
    path.write_text("\n".join(lines) + "\n")
    return path


def run_driver(
    args: argparse.Namespace, np_: int, params: list[str], expect_failure: bool = False
) -> str:
    """Run the driver on ``np_`` ranks; return stdout, raise on failure (or on success
    when ``expect_failure``). A hang (a rank stuck in a collective) hits the timeout."""
    grid = [f"nlon={NLON}", f"nlat={NLAT}"]
    cmd = [args.mpiexec, args.numproc_flag, str(np_), str(args.driver), *grid, *params]
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        OMPI_MCA_rmaps_base_oversubscribe="1",
        OMPI_ALLOW_RUN_AS_ROOT="1",
        OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
    )
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if expect_failure:
        if proc.returncode == 0:
            raise RuntimeError(f"{' '.join(cmd)} succeeded but should have failed")
        return proc.stdout
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} failed with status {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        )
    return proc.stdout


def read_windows(prefix: Path, nranks: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Assemble the global (nlat, nlon) model and fine fields of each window from rank files.

    Raises ``AssertionError`` when ranks disagree on an overlapping fine block or a
    model cell is written twice or never.
    """
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    seen: dict[int, np.ndarray] = {}
    for r in range(nranks):
        raw = (prefix.parent / f"{prefix.name}_r{r}.bin").read_bytes()
        pos = 0
        while pos < len(raw):
            head = np.frombuffer(raw, dtype=np.int32, count=9, offset=pos)
            pos += 36
            step, s1, s2, c1, c2, f1, f2, fc1, fc2 = (int(x) for x in head)
            model = np.frombuffer(raw, dtype=np.float64, count=c1 * c2, offset=pos)
            pos += 8 * c1 * c2
            fine = np.frombuffer(raw, dtype=np.float64, count=fc1 * fc2, offset=pos)
            pos += 8 * fc1 * fc2
            if step not in out:
                out[step] = (np.full((NLAT, NLON), np.nan), None)  # type: ignore[assignment]
                seen[step] = np.zeros((NLAT, NLON), dtype=int)
            gm, gf = out[step]
            # Fortran (nlon, nlat) block == C-order (nlat, nlon).
            gm[s2 - 1 : s2 - 1 + c2, s1 - 1 : s1 - 1 + c1] = model.reshape(c2, c1)
            seen[step][s2 - 1 : s2 - 1 + c2, s1 - 1 : s1 - 1 + c1] += 1
            block = fine.reshape(fc2, fc1)
            if gf is None:
                assert (f1, f2) == (1, 1), "fine grid expected whole on every rank"
                out[step] = (gm, block.copy())
            else:
                assert gf.tobytes() == block.tobytes(), (
                    f"ranks disagree on the fine grid, step {step}"
                )
    for step, cover in seen.items():
        assert (cover == 1).all(), (
            f"step {step}: model cells covered {cover.min()}..{cover.max()} times"
        )
    return out


def same(
    a: dict[int, tuple[np.ndarray, np.ndarray]], b: dict[int, tuple[np.ndarray, np.ndarray]]
) -> list[str]:
    """Differences between two runs' windows (bitwise), as messages."""
    problems = []
    if sorted(a) != sorted(b):
        problems.append(f"windows differ: {sorted(a)} vs {sorted(b)}")
    for step in sorted(set(a) & set(b)):
        for k, name in enumerate(("pr_model", "pr_fine")):
            if a[step][k].tobytes() != b[step][k].tobytes():
                d = np.nanmax(np.abs(a[step][k] - b[step][k]))
                problems.append(f"step {step}: {name} differs (max |diff| {d:.3g})")
    return problems


def check_physical(windows: dict[int, tuple[np.ndarray, np.ndarray]]) -> list[str]:
    problems = []
    for step, (m, f) in windows.items():
        for name, a in (("pr_model", m), ("pr_fine", f)):
            if not np.isfinite(a).all() or (a < 0).any():
                problems.append(f"step {step}: {name} has NaN or negative values")
    return problems


def decomposition(args: argparse.Namespace, work: Path, bundle: Path) -> list[str]:
    nml = write_namelist(work / "sync.nml", bundle, members=2, return_mode="mean")
    runs = {}
    for np_ in (1, 2, 3, 4):
        prefix = work / f"dec_np{np_}"
        run_driver(args, np_, [f"nml={nml}", "first=1", "last=12", f"dt={DT}", f"out={prefix}"])
        runs[np_] = read_windows(prefix, np_)
        print(f"np={np_}: windows at steps {sorted(runs[np_])}")
    problems = check_physical(runs[1])
    if len(runs[1]) != 3:
        problems.append(f"expected 3 windows, got {len(runs[1])}")
    if runs[1] and all(np.all(w[0] == 0) for w in runs[1].values()):
        problems.append("all outputs are zero")
    for np_ in (2, 3, 4):
        problems += [f"np={np_} vs np=1: {p}" for p in same(runs[1], runs[np_])]
    # Inference on the last of 3 ranks, which also writes the plugin's output stream
    # (output_rank names a rank of the host communicator).
    stream = work / "stream"
    shutil.rmtree(stream, ignore_errors=True)
    nml_last = write_namelist(
        work / "last.nml",
        bundle,
        members=2,
        return_mode="mean",
        output_dir=str(stream),
        output_rank=2,
        reference_time="2000-01-01 00:00:00",
    )
    prefix = work / "dec_last"
    run_driver(
        args,
        3,
        [f"nml={nml_last}", "first=1", "last=12", f"dt={DT}", f"out={prefix}", "inference_rank=2"],
    )
    problems += [
        f"inference on rank 2 vs np=1: {p}" for p in same(runs[1], read_windows(prefix, 3))
    ]
    if not list(stream.glob("*.nc")):
        problems.append(f"inference rank 2 with output_rank = 2 wrote no output stream in {stream}")
    return problems


def restart(args: argparse.Namespace, work: Path, bundle: Path) -> list[str]:
    nml = write_namelist(
        work / "lagged.nml", bundle, members=2, return_mode="cycle", inference="lagged"
    )
    rst = work / "restart_day5.nc"
    rst.unlink(missing_ok=True)
    common = [f"nml={nml}", f"dt={DT}"]
    run_driver(args, 2, [*common, "first=1", "last=40", f"out={work / 'full'}"])
    run_driver(
        args, 3, [*common, "first=1", "last=20", f"out={work / 'part1'}", f"write_restart={rst}"]
    )
    run_driver(
        args, 4, [*common, "first=21", "last=40", f"out={work / 'part2'}", f"read_restart={rst}"]
    )
    full = read_windows(work / "full", 2)
    part1 = read_windows(work / "part1", 3)
    part2 = read_windows(work / "part2", 4)
    print(f"full: {sorted(full)}; part1: {sorted(part1)}; part2: {sorted(part2)}")
    problems = check_physical(full)
    if not rst.is_file():
        problems.append(f"restart file {rst} was not written")
    # Lagged: window n is handed back when window n+1 closes (first at day 2).
    if len(full) != 9:
        problems.append(f"expected 9 handed-back windows in 10 lagged days, got {len(full)}")
    problems += [
        f"first half: {p}" for p in same({k: v for k, v in full.items() if k <= 20}, part1)
    ]
    problems += [
        f"after restart: {p}" for p in same({k: v for k, v in full.items() if k > 20}, part2)
    ]
    return problems


def failures(args: argparse.Namespace, work: Path, bundle: Path) -> list[str]:
    """Corrupt bundle and missing restart file with the real plugin on 3 ranks: every rank
    reports the same errflg (the driver prints it and exits 1), none hangs."""
    problems = []
    bad = work / "corrupt_bundle"
    shutil.rmtree(bad, ignore_errors=True)
    shutil.copytree(bundle, bad)
    weights = sorted(bad.glob("*.safetensors"))
    if not weights:
        return [f"no *.safetensors in {bundle} to corrupt"]
    with open(weights[0], "r+b") as f:
        f.seek(200)
        f.write(b"\xff" * 64)
    cases = [
        ("corrupt bundle", write_namelist(work / "corrupt.nml", bad), [], 6),
        (
            "missing restart file",
            write_namelist(work / "ok.nml", bundle),
            [f"read_restart={work / 'no_such_restart.nc'}"],
            7,
        ),
    ]
    for what, nml, extra, code in cases:
        out = run_driver(args, 3, [f"nml={nml}", "last=2", *extra], expect_failure=True)
        flags = [ln for ln in out.splitlines() if ln.startswith("ERRFLG ")]
        print(f"{what}: {flags[:1]}")
        codes = {int(ln.split()[1]) for ln in flags}
        if len(flags) != 3 or codes != {code}:
            problems.append(f"{what}: expected ERRFLG {code} on 3 ranks, got {flags}")
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--driver", required=True, type=Path)
    p.add_argument("--mpiexec", default="mpiexec")
    p.add_argument("--numproc-flag", default="-n")
    p.add_argument("--workdir", required=True, type=Path)
    p.add_argument("check", choices=["decomposition", "restart", "failures"])
    args = p.parse_args(argv)
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    for old in work.glob("*.bin"):
        old.unlink()
    bundle = tiny_bundle(work / "tiny_bundle")
    checks = {"decomposition": decomposition, "restart": restart, "failures": failures}
    problems = checks[args.check](args, work, bundle)
    for msg in problems:
        print(f"FAIL: {msg}")
    if not problems:
        print(f"{args.check}: all checks passed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
