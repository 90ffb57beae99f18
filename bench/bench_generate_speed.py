"""Inference speed side by side: per window (before/after issue #15) and per network forward.

Everything is measured in interleaved rounds (each round runs every configuration
once, each in its own fresh process, so peak memory is per configuration and
machine load hits all alike); tables give medians and ratios. Wall time and the
process's CPU time are both reported: on a shared machine wall time moves with the
load, CPU time much less.

**Windows** (``--what window``): one ESM window of a shipped bundle as the
embedded server runs it (``PrecipGenerator.generate``, one member, the bundle's
default sampler: 1 regression + 8 denoiser evaluations), after one warm-up window:

* ``baseline``: the code before issue #15 (``--baseline-rev``, extracted with
  ``git archive``): explicit padding, torch's default allocator, float32;
* ``now``: this code with its defaults (caching allocator, padding without copies,
  the bundle's precision);
* ``now-no-cache``: the same with torch's default allocator (the allocator's share);
* ``now-bf16``: with the denoiser in bf16;
* ``now-compiled``: with AOTInductor packages (``--compiled``; exported first).

**Forwards** (``--what forward``): the denoiser of each shipped bundle and a
paper-sized denoiser with random weights (``configs/era5_global_paper.yaml``:
base 64, 4 levels, 2 blocks, attention at the lowest level, periodic), per
variant: s/forward, GFLOP per forward (``torch.utils.flop_counter``), achieved
GFLOP/s and % of this CPU's matmul peak (float32 and bf16 2048x2048 GEMMs timed in
the same rounds), peak RSS:

* ``reference``: the training formulation of the padding (explicit copies), torch's
  allocator -- what eager inference did before issue #15;
* ``eager``: inference copy, padding without copies, caching allocator;
* ``eager-bf16``: the same in bf16 (weights and activations);
* ``autocast-bf16``: the float32 network under ``torch.autocast`` (why precipdiff
  does not use autocast on the CPU);
* ``channels-last``: float32 in channels-last memory format (faster convolutions,
  but see ``precipdiff.perf.precision.MEMORY_FORMATS`` for why it is not used);
* ``flush-denormals``: ``eager`` with denormals flushed on every thread;
* ``compiled`` / ``compiled-bf16``: AOTInductor packages (``--compiled``).

**Members** (``--what members``; for GPUs, ``bench/gpu_check.sh``): whole members
with the bundle's default sampler, 1 member and ``--members`` members per window
(members batched ``--member-batch`` at a time), per precision, eager or
``torch.compile`` (``--jit default``; ``--jit reduce-overhead`` adds CUDA graphs),
for the shipped bundle and a paper-sized global bundle with random weights.

Usage::

    nice .venv/bin/python bench/bench_generate_speed.py --what window --rounds 3
    nice .venv/bin/python bench/bench_generate_speed.py --what forward --rounds 3 --compiled
    bash bench/gpu_check.sh                      # on a GPU machine: --device cuda, --what members

``--json FILE`` writes every measurement. GPU-ready: ``--device cuda`` (times are
synchronised; peak GPU memory reported).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
#: main just before issue #15's first commit (74c5494).
DEFAULT_BASELINE_REV = "74c5494~1"
PAPER_UNET = {
    "in_channels": 2,
    "base_channels": 64,
    "channel_mult": [1, 2, 2, 4],
    "num_blocks": 2,
    "attention_levels": [3],
    "noise_channels": 128,
    "periodic_lon": True,
}


# ==================================================================== child processes
def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _peak_mem(device: str) -> dict[str, float]:
    import resource

    out = {"peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    if device.startswith("cuda"):
        import torch

        out["peak_cuda_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def _usage() -> tuple[float, float, int]:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime, r.ru_stime, r.ru_minflt


def child_window(args: argparse.Namespace) -> dict[str, Any]:
    """One configuration of the window benchmark (runs old or new code)."""
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from precipdiff.generator import PrecipGenerator
    from precipdiff.testing.models import random_predictors

    kw: dict[str, Any] = {"device": args.device}
    if args.variant != "baseline":
        from precipdiff.perf.process import ProcessSettings, configure

        alloc = "default" if args.variant == "now-no-cache" else "auto"
        configure(ProcessSettings(threads=args.threads, allocator=alloc), device_type="cpu")
        kw["precision"] = "bf16" if args.variant == "now-bf16" else "bundle"
        kw["use_compiled"] = args.variant == "now-compiled"
    else:
        kw["use_compiled"] = False
    gen = PrecipGenerator.from_bundle(args.bundle, **kw)
    x = random_predictors(gen.manifest.variable_names(), gen.coarse_grid, times=1, seed=0)
    gen.generate(x, members=1, seed=0)  # warm-up window
    walls, cpus, syss, faults = [], [], [], []
    for w in range(args.windows):
        _sync(args.device)
        c0, s0, f0 = _usage()
        t0 = time.perf_counter()
        res = gen.generate(x, members=1, seed=0, time_offset=w + 1)
        _sync(args.device)
        walls.append(time.perf_counter() - t0)
        c1, s1, f1 = _usage()
        cpus.append(c1 - c0)
        syss.append(s1 - s0)
        faults.append(f1 - f0)
    cached_gb = 0.0
    if args.variant != "baseline":
        from precipdiff.perf import allocator

        # what the caching allocator keeps resident between windows
        cached_gb = allocator.stats().cached_bytes / 2**30
    return {
        "s_per_window": statistics.median(walls),
        "cpu_s_per_window": statistics.median(cpus),
        "cached_gb": cached_gb,
        "sys_s_per_window": statistics.median(syss),
        "minor_faults_per_window": statistics.median(faults),
        "nfe": int(gen.sampler.nfe),
        "finite": bool(np.isfinite(res.fine).all()),
        **_peak_mem(args.device),
    }


def child_members(args: argparse.Namespace) -> dict[str, Any]:
    """Whole members: one window of 1 member and one of ``--members`` members."""
    import torch

    from precipdiff.generator import PrecipGenerator
    from precipdiff.perf.process import ProcessSettings, configure
    from precipdiff.testing.models import random_predictors

    torch.set_num_threads(args.threads)
    configure(ProcessSettings(threads=args.threads), device_type=args.device.split(":")[0])
    gen = PrecipGenerator.from_bundle(
        args.bundle,
        device=args.device,
        precision=args.variant,
        use_compiled=False,
        member_batch=args.member_batch,
    )
    if args.jit != "none":
        gen.denoise_fn = torch.compile(gen.denoise_fn, mode=args.jit, dynamic=False)
    x = random_predictors(gen.manifest.variable_names(), gen.coarse_grid, times=1, seed=0)
    out: dict[str, Any] = {"nfe": int(gen.sampler.nfe)}
    t0 = time.perf_counter()
    gen.generate(x, members=args.member_batch, seed=0)  # warm-up (and compilation)
    _sync(args.device)
    out["warmup_s"] = time.perf_counter() - t0
    for m in sorted({1, args.members}):
        walls = []
        for w in range(args.windows):
            _sync(args.device)
            t0 = time.perf_counter()
            gen.generate(x, members=m, seed=0, time_offset=w + 1)
            _sync(args.device)
            walls.append(time.perf_counter() - t0)
        out[f"s_{m}_members"] = statistics.median(walls)
    return {**out, **_peak_mem(args.device)}


def paper_bundle(work: Path) -> Path:
    """A global 1° -> 0.25° bundle with paper-sized random-weight networks."""
    from precipdiff.bundle import default_sampler
    from precipdiff.grids import LatLonGrid
    from precipdiff.testing.models import make_tiny_bundle

    return make_tiny_bundle(
        work / "paper-sized",
        coarse_grid=LatLonGrid.regular(1.0),
        fine_grid=LatLonGrid.regular(0.25),
        variables=["u10", "v10", "msl"],
        base_channels=PAPER_UNET["base_channels"],
        channel_mult=tuple(PAPER_UNET["channel_mult"]),
        num_blocks=PAPER_UNET["num_blocks"],
        attention_levels=tuple(PAPER_UNET["attention_levels"]),
        noise_channels=PAPER_UNET["noise_channels"],
        sampler=default_sampler(),
    )


def bench_members(args: argparse.Namespace, work: Path, results: dict[str, Any]) -> None:
    bundles = [str(Path(b).resolve()) for b in args.bundles]
    if args.paper:
        bundles.append(str(paper_bundle(work)))
    precisions = ["float32", "bf16"] + (["fp16"] if args.device.startswith("cuda") else [])
    jits = ["none"] + ([args.jit] if args.jit != "none" else [])
    for b in bundles:
        rows: dict[str, list[dict[str, Any]]] = {}
        for r in range(args.rounds):
            for prec in precisions:
                for jit in jits:
                    key = f"{prec}{'' if jit == 'none' else ' + torch.compile ' + jit}"
                    extra = ["--child", "members", "--bundle", b, "--variant", prec]
                    extra += ["--jit", jit, "--members", str(args.members)]
                    extra += ["--member-batch", str(args.member_batch)]
                    extra += ["--windows", str(args.windows)]
                    res = run_child(args, extra)
                    if res is not None:
                        rows.setdefault(key, []).append(res)
                        print(
                            f"  {Path(b).name} round {r + 1} {key:32s} 1 member "
                            f"{res['s_1_members']:.3f} s, {args.members} members "
                            f"{res[f's_{args.members}_members']:.3f} s",
                            flush=True,
                        )
        results["members"][Path(b).name] = rows
        print(
            f"\n{Path(b).name}: whole members ({args.device}, member_batch {args.member_batch}), "
            "median over rounds"
        )
        print(
            f"{'variant':34s} {'NFE':>4s} {'1 member s':>10s} {args.members:>3d} members s "
            f"{'warm-up s':>9s} {'peak GB':>8s}"
        )
        for k, rs in rows.items():
            mem = _med(rs, "peak_cuda_gb") if "peak_cuda_gb" in rs[0] else _med(rs, "peak_rss_gb")
            print(
                f"{k:34s} {rs[0]['nfe']:4d} {_med(rs, 's_1_members'):10.3f} "
                f"{_med(rs, f's_{args.members}_members'):11.3f} {_med(rs, 'warmup_s'):9.1f} "
                f"{mem:8.2f}"
            )


def _paper_net(device: str) -> Any:
    import torch

    from precipdiff.diffusion import EDMPrecond
    from precipdiff.nn import UNetConfig

    torch.manual_seed(0)
    return EDMPrecond(UNetConfig.from_dict(PAPER_UNET).build(), sigma_data=1.0).to(device).eval()


def _network(args: argparse.Namespace) -> tuple[Any, tuple[int, int]]:
    """The float32 denoiser (EDMPrecond) named by --net and its grid shape."""
    if args.net == "paper":
        h, w = (int(v) for v in args.paper_shape.split("x"))
        return _paper_net(args.device), (h, w)
    from precipdiff.bundle import load_bundle

    b = load_bundle(args.net, args.device)
    return b.denoiser, b.fine_grid.shape


def child_forward(args: argparse.Namespace) -> dict[str, Any]:
    """One variant of the forward benchmark."""
    import contextlib

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from precipdiff.diffusion import EDMPrecond
    from precipdiff.perf import allocator
    from precipdiff.perf.fpenv import flush_denormals
    from precipdiff.perf.precision import inference_copy
    from precipdiff.perf.process import ProcessSettings, configure

    torch.set_num_threads(args.threads)
    v = args.variant
    configure(
        ProcessSettings(
            threads=args.threads,
            allocator="default" if v == "reference" else "auto",
            flush_denormals=v == "flush-denormals",
        ),
        device_type=args.device.split(":")[0],
    )
    net, shape = _network(args)
    dev = torch.device(args.device)
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(1, 1, *shape, generator=g, device=dev)
    cond = torch.randn(1, 1, *shape, generator=g, device=dev)
    sigma = torch.tensor([1.0], device=dev)
    scope: Any = contextlib.nullcontext
    grad = False
    if v == "reference":
        for p in net.parameters():
            p.requires_grad_(False)
        fn = net
        grad = True  # autograd on: the explicit-padding formulation (no graph is built)
    elif v in ("eager", "flush-denormals"):
        fn = EDMPrecond(inference_copy(net.net, "float32"), net.sigma_data)
        if v == "flush-denormals":
            scope = flush_denormals
    elif v == "eager-bf16":
        fn = EDMPrecond(inference_copy(net.net, "bf16"), net.sigma_data)
    elif v == "eager-fp16":
        fn = EDMPrecond(inference_copy(net.net, "fp16"), net.sigma_data)
    elif v == "channels-last":
        fn = EDMPrecond(inference_copy(net.net, "float32", "channels_last"), net.sigma_data)
    elif v.startswith("autocast-"):
        dtype = torch.bfloat16 if v.endswith("bf16") else torch.float16
        inner = EDMPrecond(inference_copy(net.net, "float32"), net.sigma_data)

        def fn(*a: Any) -> Any:
            with torch.autocast(dev.type, dtype=dtype):
                return inner(*a)

    elif v.startswith("compiled"):
        with contextlib.redirect_stdout(None):
            fn = torch._inductor.aoti_load_package(args.package)
    else:
        raise SystemExit(f"unknown variant {v}")
    ctx = torch.enable_grad if grad else torch.inference_mode
    with ctx(), scope():
        ref = fn(x, sigma, cond)  # warm-up
        _sync(args.device)
        walls, cpus = [], []
        for _ in range(args.forwards):
            c0, _s, _f = _usage()
            t0 = time.perf_counter()
            fn(x, sigma, cond)
            _sync(args.device)
            walls.append(time.perf_counter() - t0)
            cpus.append(_usage()[0] - c0)
        flops = 0.0
        if not v.startswith("compiled"):
            counter = FlopCounterMode(display=False)
            with counter:
                fn(x, sigma, cond)
            flops = float(counter.get_total_flops())
    return {
        "s_per_forward": statistics.median(walls),
        "cpu_s_per_forward": statistics.median(cpus),
        "gflop": flops / 1e9,
        "finite": bool(torch.isfinite(ref.float()).all()),
        "cache_hits": allocator.stats().hits,
        "params_m": sum(p.numel() for p in net.parameters()) / 1e6,
        **_peak_mem(args.device),
    }


def child_peak(args: argparse.Namespace) -> dict[str, Any]:
    """Matmul peak of this CPU/GPU: best of a few 2048x2048 GEMMs, float32 and bf16."""
    import torch

    torch.set_num_threads(args.threads)
    n = 4096 if args.device.startswith("cuda") else 2048
    out = {}
    for name, dtype in (("float32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(n, n, device=args.device).to(dtype)
        b = torch.randn(n, n, device=args.device).to(dtype)
        a @ b
        best_wall, best_cpu = float("inf"), float("inf")
        for _ in range(5):
            _sync(args.device)
            c0 = _usage()[0]
            t0 = time.perf_counter()
            a @ b
            _sync(args.device)
            best_wall = min(best_wall, time.perf_counter() - t0)
            best_cpu = min(best_cpu, _usage()[0] - c0)
        out[f"{name}_gflops"] = 2 * n**3 / best_wall / 1e9
        out[f"{name}_gflop_per_cpu_s"] = 2 * n**3 / max(best_cpu, 1e-9) / 1e9
    return out


# ==================================================================== parent
def run_child(args: argparse.Namespace, extra: list[str], env: dict[str, str] | None = None) -> Any:
    cmd = [sys.executable, __file__, "--device", args.device, "--threads", str(args.threads)]
    cmd += extra
    full_env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), **(env or {})}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, check=False)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not line:
        print(f"  child {' '.join(extra)} failed:\n{proc.stderr[-3000:]}", flush=True)
        return None
    return json.loads(line[-1][7:])


def baseline_tree(rev: str, work: Path) -> Path:
    """Extract python/ of revision ``rev`` (the code before issue #15)."""
    dest = work / "baseline"
    dest.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev, "python"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest / "python"


def strip_new_manifest_keys(bundle: Path, work: Path) -> Path:
    """A copy of the bundle readable by the baseline code (no keys it does not know)."""
    dest = work / f"baseline-{bundle.name}"
    shutil.copytree(bundle, dest, ignore=shutil.ignore_patterns("compiled"))
    m = json.loads((dest / "manifest.json").read_text())
    m.pop("precision", None)
    m["compiled"] = []
    if m.get("format_version") == 3:
        # Format 3 (issue 13) added derived features, the denoiser's condition and
        # samplers the baseline does not know; a bundle that uses none of them reads as
        # format 2 with the baseline's default sampler at the same evaluation count.
        if m.get("features") is not None or m.get("condition", {}).get("source") != "truth":
            raise SystemExit(f"{bundle}: uses format-3 features; no baseline comparison")
        if m.get("output_calibration"):
            raise SystemExit(f"{bundle}: has an output calibration; no baseline comparison")
        nfe = int(m.get("sampler", {}).get("steps", 8))
        for key in ("features", "condition", "output_calibration"):
            m.pop(key, None)
        m["format_version"] = 2
        m["sampler"] = {"name": "euler", "steps": nfe}
    (dest / "manifest.json").write_text(json.dumps(m, indent=1))
    return dest


def load_line() -> str:
    la = Path("/proc/loadavg").read_text().split()[:3]
    return f"load average {' / '.join(la)} (1/5/15 min) on {os.cpu_count()} CPU(s)"


def bench_windows(args: argparse.Namespace, work: Path, results: dict[str, Any]) -> None:
    base_py = baseline_tree(args.baseline_rev, work)
    for bundle in args.bundles:
        b = Path(bundle).resolve()
        old = strip_new_manifest_keys(b, work)
        variants = ["baseline", "now", "now-no-cache", "now-bf16"]
        compiled_copy = None
        if args.compiled:
            from precipdiff.offline.export import export_bundle

            compiled_copy = work / f"compiled-{b.name}"
            shutil.copytree(b, compiled_copy)
            t0 = time.perf_counter()
            export_bundle(compiled_copy, args.device, precision="float32", rounds=0)
            print(f"{b.name}: exported in {time.perf_counter() - t0:.0f} s", flush=True)
            variants.append("now-compiled")
        rows: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
        for r in range(args.rounds):
            for v in variants:
                path = old if v == "baseline" else compiled_copy if v == "now-compiled" else b
                env = {"PYTHONPATH": str(base_py)} if v == "baseline" else None
                extra = ["--child", "window", "--variant", v, "--bundle", str(path)]
                res = run_child(args, [*extra, "--windows", str(args.windows)], env)
                if res is not None:
                    rows[v].append(res)
                    print(
                        f"  {b.name} round {r + 1} {v:14s} {res['s_per_window']:8.2f} s/window "
                        f"(CPU {res['cpu_s_per_window']:.2f} s, sys {res['sys_s_per_window']:.2f}"
                        f" s, {res['minor_faults_per_window']:.0f} faults)",
                        flush=True,
                    )
        results["window"][b.name] = rows
        print_window_table(b.name, rows)


def _med(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in rows) if rows else float("nan")


def print_window_table(name: str, rows: dict[str, list[dict[str, Any]]]) -> None:
    base = rows.get("baseline") or []
    bw, bc = _med(base, "s_per_window"), _med(base, "cpu_s_per_window")
    print(f"\n{name}: one window (1 member), median over rounds")
    print(
        f"{'variant':14s} {'s/window':>9s} {'CPU s':>8s} {'sys s':>7s} {'faults':>9s} "
        f"{'RSS GB':>7s} {'cache GB':>8s} {'speed-up wall':>13s} {'speed-up CPU':>12s}"
    )
    for v, rs in rows.items():
        if not rs:
            continue
        w, c = _med(rs, "s_per_window"), _med(rs, "cpu_s_per_window")
        print(
            f"{v:14s} {w:9.2f} {c:8.2f} {_med(rs, 'sys_s_per_window'):7.2f} "
            f"{_med(rs, 'minor_faults_per_window'):9.0f} {_med(rs, 'peak_rss_gb'):7.2f} "
            f"{_med(rs, 'cached_gb'):8.2f} {bw / w:13.2f} {bc / c:12.2f}"
        )


def export_paper_package(args: argparse.Namespace, work: Path, precision: str) -> str:
    """AOTInductor package of the paper-sized denoiser (random weights) at --paper-shape."""
    import contextlib

    import torch

    from precipdiff.diffusion import EDMPrecond
    from precipdiff.perf.precision import inference_copy

    net = _paper_net(args.device)
    mod = EDMPrecond(inference_copy(net.net, precision), net.sigma_data)
    h, w = (int(v) for v in args.paper_shape.split("x"))
    dev = torch.device(args.device)
    ex = (
        torch.zeros(1, 1, h, w, device=dev),
        torch.ones(1, device=dev),
        torch.zeros(1, 1, h, w, device=dev),
    )
    with torch.no_grad():
        prog = torch.export.export(mod, ex)
    out = work / f"paper-{precision}.pt2"
    with contextlib.redirect_stdout(None):
        torch._inductor.aoti_compile_and_package(prog, package_path=str(out))
    return str(out)


def bench_forwards(args: argparse.Namespace, work: Path, results: dict[str, Any]) -> None:
    nets = [] if args.skip_bundle_forwards else [str(Path(b).resolve()) for b in args.bundles]
    nets += ["paper"] if args.paper else []
    variants = ["reference", "eager", "eager-bf16", "autocast-bf16", "channels-last"]
    variants += ["flush-denormals"]
    if args.device.startswith("cuda"):
        variants += ["eager-fp16", "autocast-fp16"]
    if args.variants:
        variants = [v for v in variants if v in args.variants]
    for net in nets:
        packages: dict[str, str] = {}
        if args.compiled:
            t0 = time.perf_counter()
            for prec in ("float32", "bf16"):
                if net == "paper":
                    packages[prec] = export_paper_package(args, work, prec)
                else:
                    from precipdiff.offline.export import export_bundle

                    copy = work / f"fwd-{Path(net).name}"
                    if not copy.exists():
                        shutil.copytree(net, copy)
                    entries = export_bundle(
                        copy, args.device, networks=("denoiser",), precision=prec, rounds=0
                    )
                    packages[prec] = str(copy / entries[0]["file"])
            print(f"{Path(net).name}: compiled in {time.perf_counter() - t0:.0f} s", flush=True)
        vs = variants + [f"compiled-{p}".replace("-float32", "") for p in packages]
        if args.variants:
            vs = [v for v in vs if v in args.variants]
        rows: dict[str, list[dict[str, Any]]] = {v: [] for v in vs}
        peaks: list[dict[str, Any]] = []
        for r in range(args.rounds):
            pk = run_child(args, ["--child", "peak"])
            if pk is not None:
                peaks.append(pk)
            for v in vs:
                extra = ["--child", "forward", "--variant", v, "--net", net]
                extra += ["--forwards", str(args.forwards), "--paper-shape", args.paper_shape]
                if v.startswith("compiled"):
                    extra += ["--package", packages["bf16" if v.endswith("bf16") else "float32"]]
                res = run_child(args, extra)
                if res is not None:
                    rows[v].append(res)
                    print(
                        f"  {Path(net).name} round {r + 1} {v:16s} {res['s_per_forward']:8.3f} "
                        f"s/forward (CPU {res['cpu_s_per_forward']:.3f} s)",
                        flush=True,
                    )
        results["forward"][Path(net).name] = {"rows": rows, "peaks": peaks}
        print_forward_table(Path(net).name, rows, peaks, args)


def print_forward_table(
    name: str, rows: dict[str, list[dict[str, Any]]], peaks: list[dict[str, Any]], args: Any
) -> None:
    p32 = _med(peaks, "float32_gflops")
    p16 = _med(peaks, "bf16_gflops")
    c32 = _med(peaks, "float32_gflop_per_cpu_s")
    c16 = _med(peaks, "bf16_gflop_per_cpu_s")
    gflop = next((_med(rs, "gflop") for rs in rows.values() if rs and _med(rs, "gflop") > 0), 0)
    ref = rows.get("reference") or []
    rw, rc = _med(ref, "s_per_forward"), _med(ref, "cpu_s_per_forward")
    params = next((_med(rs, "params_m") for rs in rows.values() if rs), 0.0)
    print(
        f"\n{name}: denoiser forward ({params:.2f} M parameters, {gflop:.1f} GFLOP/forward), "
        f"{args.threads} thread(s), median over rounds"
    )
    print(
        f"matmul peak: float32 {p32:.1f} GFLOP/s wall ({c32:.1f} per CPU-second), "
        f"bf16 {p16:.1f} GFLOP/s wall ({c16:.1f} per CPU-second)"
    )
    print(
        f"{'variant':16s} {'s/forward':>9s} {'CPU s':>7s} {'GFLOP/s':>8s} {'% peak':>7s} "
        f"{'% peak CPU':>10s} {'RSS GB':>7s} {'vs reference':>12s} {'(CPU)':>6s}"
    )
    for v, rs in rows.items():
        if not rs:
            continue
        w, c = _med(rs, "s_per_forward"), _med(rs, "cpu_s_per_forward")
        low = "bf16" in v or "fp16" in v
        peak, peak_c = (p16, c16) if low else (p32, c32)
        gfs = gflop / w
        print(
            f"{v:16s} {w:9.3f} {c:7.3f} {gfs:8.1f} {100 * gfs / peak:6.1f}% "
            f"{100 * (gflop / c) / peak_c:9.1f}% {_med(rs, 'peak_rss_gb'):7.2f} "
            f"{rw / w:12.2f} {rc / c:6.2f}"
            + (f"  GPU {_med(rs, 'peak_cuda_gb'):.2f} GB" if "peak_cuda_gb" in rs[0] else "")
        )
    print("(% peak: of the float32 matmul peak; bf16/fp16 variants: of the bf16 peak)")


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--what", choices=("window", "forward", "all", "members"), default="all")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--windows", type=int, default=1, help="timed windows per window child")
    ap.add_argument("--forwards", type=int, default=2, help="timed forwards per forward child")
    ap.add_argument("--bundles", nargs="+", default=[str(REPO / "models" / "era5-global-shape")])
    ap.add_argument("--paper", action="store_true", help="also the paper-sized denoiser")
    ap.add_argument("--paper-shape", default="361x720", help="grid of the paper-sized denoiser")
    ap.add_argument("--compiled", action="store_true", help="also AOTInductor packages")
    ap.add_argument("--baseline-rev", default=DEFAULT_BASELINE_REV)
    ap.add_argument("--variants", nargs="+", default=None, help="only these forward variants")
    ap.add_argument(
        "--skip-bundle-forwards",
        action="store_true",
        help="forward benchmark of the paper-sized denoiser only",
    )
    ap.add_argument("--json", type=Path, default=None, help="write all measurements here")
    ap.add_argument("--members", type=int, default=8, help="members of the ensemble window")
    ap.add_argument("--member-batch", type=int, default=1, help="members per network call")
    ap.add_argument(
        "--jit",
        default="none",
        choices=("none", "default", "reduce-overhead", "max-autotune"),
        help="also torch.compile the denoiser with this mode (members benchmark)",
    )
    ap.add_argument(
        "--child", choices=("window", "forward", "peak", "members"), help=argparse.SUPPRESS
    )
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--bundle", help=argparse.SUPPRESS)
    ap.add_argument("--net", help=argparse.SUPPRESS)
    ap.add_argument("--package", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        fn = {
            "window": child_window,
            "forward": child_forward,
            "peak": child_peak,
            "members": child_members,
        }[args.child]
        print("RESULT " + json.dumps(fn(args)))
        return
    results: dict[str, Any] = {"window": {}, "forward": {}, "members": {}}
    results["load_start"] = load_line()
    print(f"{load_line()}; device {args.device}, {args.threads} thread(s)", flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench_speed_"))
    try:
        if args.what in ("window", "all"):
            bench_windows(args, work, results)
        if args.what in ("forward", "all"):
            bench_forwards(args, work, results)
        if args.what == "members":
            bench_members(args, work, results)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["load_end"] = load_line()
    print(f"\n{load_line()}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
