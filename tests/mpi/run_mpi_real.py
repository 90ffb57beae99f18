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
``per_node``
    the opt-in per-node inference (``inference = 'per_node'``) on 4 ranks forced into
    2 groups (``ranks_per_inference = 2``: inference ranks 0 and 2, 4 members split
    2 + 2): handed-back fields and the written output stream bit-identical to the
    1-rank 'root' run for ``return_mode = 'member'`` (a member generated on the second
    inference rank) and ``'mean'``; lagged ``'cycle'`` with a restart written and read
    in per-node mode equal to the 1-rank run; per_node on one real node (no forced
    groups) equal to root; and a failure of one inference rank (plain error and GPU
    out-of-memory) reaching all 4 ranks with the same errflg, no hang.

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
    from precipdiff.testing.models import make_tiny_bundle

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


def read_stream(directory: Path) -> dict[str, dict[str, np.ndarray]]:
    """Every variable of every netCDF file of an output stream, by file name."""
    from precipdiff.io import import_netcdf4

    nc4 = import_netcdf4()
    out: dict[str, dict[str, np.ndarray]] = {}
    for path in sorted(directory.glob("*.nc")):
        with nc4.Dataset(path) as ds:
            ds.set_auto_mask(False)
            out[path.name] = {name: np.array(var[...]) for name, var in ds.variables.items()}
    return out


def same_stream(
    a: dict[str, dict[str, np.ndarray]], b: dict[str, dict[str, np.ndarray]]
) -> list[str]:
    """Differences (bitwise) between two output streams, as messages."""
    if not a:
        return ["reference run wrote no output stream"]
    if sorted(a) != sorted(b):
        return [f"stream files differ: {sorted(a)} vs {sorted(b)}"]
    problems = []
    for name in a:
        if sorted(a[name]) != sorted(b[name]):
            problems.append(f"{name}: variables {sorted(a[name])} vs {sorted(b[name])}")
            continue
        for var, arr in a[name].items():
            other = b[name][var]
            if arr.shape != other.shape or arr.tobytes() != other.tobytes():
                problems.append(f"{name}: variable {var} differs")
    return problems


def per_node(args: argparse.Namespace, work: Path, bundle: Path) -> list[str]:
    """Per-node inference (2 forced groups on 4 ranks) against the 1-rank root run."""
    problems: list[str] = []
    split = ["inference=per_node", "ranks_per_inference=2"]
    # Bad opt-in arguments: the same errflg on every rank at init, no plugin started.
    nml = write_namelist(work / "pn_args.nml", bundle)
    for bad in (
        ["inference=tiles"],
        ["inference=root", "ranks_per_inference=2"],
        [*split, "inference_rank=1"],
    ):
        out = run_driver(args, 2, [f"nml={nml}", "last=1", *bad], expect_failure=True)
        flags = [ln for ln in out.splitlines() if ln.startswith("ERRFLG ")]
        if (
            len(flags) != 2
            or len({ln.split()[1] for ln in flags}) != 1
            or not all("precipdiff_mpi_init" in ln and "per_node" in ln for ln in flags)
        ):
            problems.append(f"init with {bad}: expected one init ERRFLG on 2 ranks, got {flags}")
    # mean: device = 'auto' (the per-node GPU choice; the CPU here) in both runs.
    for mode, extra in (("member", {"return_member": 3}), ("mean", {"device": "auto"})):
        runs = {}
        streams = {}
        for tag, np_, params in (("root", 1, []), ("split", 4, split)):
            stream = work / f"stream_{mode}_{tag}"
            shutil.rmtree(stream, ignore_errors=True)
            nml = write_namelist(
                work / f"pn_{mode}_{tag}.nml",
                bundle,
                members=4,
                return_mode=mode,
                output_dir=str(stream),
                reference_time="2000-01-01 00:00:00",
                **extra,
            )
            prefix = work / f"pn_{mode}_{tag}"
            run_driver(
                args, np_, [f"nml={nml}", "first=1", "last=8", f"dt={DT}", f"out={prefix}", *params]
            )
            runs[tag] = read_windows(prefix, np_)
            streams[tag] = read_stream(stream)
        print(
            f"return_mode={mode}: windows {sorted(runs['split'])}, files {sorted(streams['split'])}"
        )
        if len(runs["root"]) != 2:
            problems.append(f"{mode}: expected 2 windows, got {len(runs['root'])}")
        problems += check_physical(runs["root"])
        problems += [
            f"{mode}, per_node np=4 vs root np=1: {p}" for p in same(runs["root"], runs["split"])
        ]
        problems += [
            f"{mode}, output stream: {p}" for p in same_stream(streams["root"], streams["split"])
        ]
    # Lagged 'cycle' with a restart in per-node mode (pending result crosses the restart).
    nml = write_namelist(
        work / "pn_lagged.nml", bundle, members=4, return_mode="cycle", inference="lagged"
    )
    rst = work / "pn_restart.nc"
    rst.unlink(missing_ok=True)
    common = [f"nml={nml}", f"dt={DT}"]
    run_driver(args, 1, [*common, "first=1", "last=16", f"out={work / 'pn_full'}"])
    run_driver(
        args,
        4,
        [*common, "first=1", "last=8", f"out={work / 'pn_part1'}", f"write_restart={rst}", *split],
    )
    run_driver(
        args,
        4,
        [*common, "first=9", "last=16", f"out={work / 'pn_part2'}", f"read_restart={rst}", *split],
    )
    full = read_windows(work / "pn_full", 1)
    part1 = read_windows(work / "pn_part1", 4)
    part2 = read_windows(work / "pn_part2", 4)
    print(f"lagged: full {sorted(full)}; part1 {sorted(part1)}; part2 {sorted(part2)}")
    if len(full) != 3:
        problems.append(f"lagged: expected 3 handed-back windows in 4 days, got {len(full)}")
    problems += [
        f"lagged first half: {p}" for p in same({k: v for k, v in full.items() if k <= 8}, part1)
    ]
    problems += [
        f"lagged after restart: {p}" for p in same({k: v for k, v in full.items() if k > 8}, part2)
    ]
    # per_node without forced groups: one node here, so one inference rank (root protocol).
    nml = write_namelist(work / "pn_one_node.nml", bundle, members=4, return_mode="mean")
    ref = read_windows(work / "pn_mean_root", 1)
    run_driver(
        args,
        2,
        [
            f"nml={nml}",
            "first=1",
            "last=8",
            f"dt={DT}",
            f"out={work / 'pn_node'}",
            "inference=per_node",
        ],
    )
    problems += [f"per_node on one node: {p}" for p in same(ref, read_windows(work / "pn_node", 2))]
    # One inference rank fails (the second, host rank 2): every rank gets the same errflg.
    for kind in ("python", "oom"):
        nml = write_namelist(work / f"pn_fail_{kind}.nml", bundle, members=4)
        with open(nml, "a") as f:
            f.write(
                f"&mpi_fake_nml\n  fail_window = 1\n  fail_inference_rank = 1\n"
                f"  fail_kind = '{kind}'\n/\n"
            )
        for inference in ("sync", "lagged"):
            text = nml.read_text().replace(
                "&precipdiff_nml", f"&precipdiff_nml\n  inference = '{inference}'"
            )
            nml_i = work / f"pn_fail_{kind}_{inference}.nml"
            nml_i.write_text(text)
            env_before = os.environ.get("PRECIPDIFF_PLUGIN_CLASS")
            os.environ["PRECIPDIFF_PLUGIN_CLASS"] = "pd_mpi_fake_plugin:MemberRankFailingPlugin"
            try:
                out = run_driver(
                    args, 4, [f"nml={nml_i}", "last=12", f"dt={DT}", *split], expect_failure=True
                )
            finally:
                if env_before is None:
                    os.environ.pop("PRECIPDIFF_PLUGIN_CLASS", None)
                else:
                    os.environ["PRECIPDIFF_PLUGIN_CLASS"] = env_before
            flags = [ln for ln in out.splitlines() if ln.startswith("ERRFLG ")]
            print(f"failure {kind}/{inference}: {flags[:1]}")
            codes = {int(ln.split()[1]) for ln in flags}
            if len(flags) != 4 or len(codes) != 1:
                problems.append(
                    f"failure {kind}/{inference}: expected one ERRFLG on 4 ranks, got {flags}"
                )
            elif not all("inference rank 1" in ln or "simulated" in ln for ln in flags):
                problems.append(
                    f"failure {kind}/{inference}: message does not name the failure: {flags}"
                )
            if kind == "oom":
                expected = oom_code()
                if codes != {expected}:
                    problems.append(f"failure oom/{inference}: errflg {codes}, expected {expected}")
    return problems


def oom_code() -> int:
    """The bridge's status code for a GPU out-of-memory (DeviceError)."""
    from precipdiff.errors import DeviceError
    from precipdiff.server.capi import status_of

    return int(status_of(DeviceError("x")))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--driver", required=True, type=Path)
    p.add_argument("--mpiexec", default="mpiexec")
    p.add_argument("--numproc-flag", default="-n")
    p.add_argument("--workdir", required=True, type=Path)
    p.add_argument("check", choices=["decomposition", "restart", "failures", "per_node"])
    args = p.parse_args(argv)
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    for old in work.glob("*.bin"):
        old.unlink()
    bundle = tiny_bundle(work / "tiny_bundle")
    checks = {
        "decomposition": decomposition,
        "restart": restart,
        "failures": failures,
        "per_node": per_node,
    }
    problems = checks[args.check](args, work, bundle)
    for msg in problems:
        print(f"FAIL: {msg}")
    if not problems:
        print(f"{args.check}: all checks passed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
