"""Time and peak memory per member at true size: global 1° (181×360) → 0.25° (721×1440).

Side by side in one run (each configuration in its own subprocess, so peak RSS
is per configuration):

* the default few-step sampler (``bundle.default_sampler()``: Heun, 4 steps,
  7 network evaluations) against the 18-step Heun reference (35 evaluations);
* eager networks against AOTInductor-compiled ones (``--compiled``; compiling
  the two networks at this size takes minutes on a small CPU).

The networks have random weights (speed does not depend on them); their size
is set with ``--base-channels``/``--channel-mult``. GPU-ready: ``--device cuda``
(peak memory is then also reported from ``torch.cuda.max_memory_allocated``).

Usage::

    .venv/bin/python bench/bench_generate_speed.py [--threads 2] [--compiled]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(args: argparse.Namespace) -> None:
    import numpy as np
    import torch

    from precipdiff.bundle import default_sampler
    from precipdiff.diffusion import SamplerConfig
    from precipdiff.generator import PrecipGenerator
    from precipdiff.testing.models import DEFAULT_VARIABLES, random_predictors

    torch.set_num_threads(args.threads)
    gen = PrecipGenerator.from_bundle(
        args.bundle, device=args.device, use_compiled=args.mode.endswith("compiled")
    )
    sampler = (
        SamplerConfig(name="heun", steps=18)
        if args.mode.startswith("reference")
        else default_sampler()
    )
    x = random_predictors(DEFAULT_VARIABLES, gen.coarse_grid, times=1)
    # one forward per network first: allocator warm-up (and CUDA context)
    with torch.no_grad():
        gen.regress(x)
        y = torch.zeros(1, 1, *gen.fine_grid.shape, device=gen.device)
        c = torch.zeros(1, 1, *gen.fine_grid.shape, device=gen.device)
        t0 = time.perf_counter()
        gen.denoise_fn(y, torch.tensor([1.0], device=gen.device), c)
        if gen.device.type == "cuda":
            torch.cuda.synchronize()
        t_fwd = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = gen.generate(x, members=args.members, seed=0, sampler=sampler)
    if gen.device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    out = {
        "mode": args.mode,
        "nfe": sampler.nfe,
        "s_per_member": dt / args.members,
        "s_per_forward": t_fwd,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "shape": list(res.fine.shape),
        "finite": bool(np.isfinite(res.fine).all()),
    }
    if gen.device.type == "cuda":
        out["peak_cuda_gb"] = torch.cuda.max_memory_allocated() / 2**30
    print("RESULT " + json.dumps(out))


def interleaved(args: argparse.Namespace) -> None:
    """Eager vs compiled denoiser forwards, alternated so machine load hits both alike."""
    import statistics

    import torch

    from precipdiff.bundle import load_bundle
    from precipdiff.bundle.compiled import load_compiled

    torch.set_num_threads(args.threads)
    b = load_bundle(args.bundle, args.device)
    compiled = load_compiled(b, required=True)
    assert compiled is not None
    _, den_c = compiled
    c = b.manifest.denoiser_config().in_channels
    x = torch.randn(1, 1, *b.fine_grid.shape, device=b.device)
    cond = torch.randn(1, c - 1, *b.fine_grid.shape, device=b.device)
    sigma = torch.tensor([1.0], device=b.device)
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    with torch.no_grad():
        den_c(x, sigma, cond)  # warm-up
        b.denoiser(x, sigma, cond)
        for _ in range(args.interleave):
            for name, fn in (("eager", b.denoiser), ("compiled", den_c)):
                t0 = time.perf_counter()
                fn(x, sigma, cond)
                if b.device.type == "cuda":
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - t0)
    e, c_ = statistics.median(times["eager"]), statistics.median(times["compiled"])
    print(
        f"denoiser forward at {b.fine_grid.shape}, {args.interleave} alternated pairs: "
        f"eager median {e:.2f} s, compiled median {c_:.2f} s, compiled/eager {c_ / e:.2f}"
    )
    print(f"  eager {[round(t, 2) for t in times['eager']]}")
    print(f"  compiled {[round(t, 2) for t in times['compiled']]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--members", type=int, default=1)
    ap.add_argument("--base-channels", type=int, default=32)
    ap.add_argument("--channel-mult", default="1,2,2,4")
    ap.add_argument("--compiled", action="store_true", help="also time AOTInductor packages")
    ap.add_argument("--skip-reference", action="store_true", help="skip the 35-NFE reference")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="default", help=argparse.SUPPRESS)
    ap.add_argument("--bundle", default=None, help="existing bundle (default: make one)")
    ap.add_argument(
        "--interleave",
        type=int,
        default=0,
        help="only time N alternated eager/compiled denoiser forwards of an exported --bundle",
    )
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    if args.interleave:
        interleaved(args)
        return
    from precipdiff.grids import LatLonGrid
    from precipdiff.testing.models import make_tiny_bundle

    tmp = tempfile.mkdtemp(prefix="bench_speed_")
    if args.bundle is None:
        mult = tuple(int(m) for m in args.channel_mult.split(","))
        args.bundle = str(
            make_tiny_bundle(
                Path(tmp) / "global",
                coarse_grid=LatLonGrid.regular(1.0),
                fine_grid=LatLonGrid.regular(0.25),
                base_channels=args.base_channels,
                channel_mult=mult,
            )
        )
    modes = ["default-eager"] + ([] if args.skip_reference else ["reference-eager"])
    if args.compiled:
        from precipdiff.offline.export import export_bundle

        t0 = time.perf_counter()
        export_bundle(args.bundle, args.device)
        print(f"export (both networks, 721x1440 + 181x360): {time.perf_counter() - t0:.0f} s")
        modes += ["default-compiled"]
    results = {}
    for mode in modes:
        cmd = [sys.executable, __file__, "--child", "--mode", mode, "--bundle", args.bundle]
        cmd += ["--device", args.device, "--threads", str(args.threads)]
        cmd += ["--members", str(args.members)]
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
        if out.returncode or not line:
            print(f"{mode} failed:\n{out.stderr[-2000:]}")
            continue
        results[mode] = json.loads(line[0][7:])
    from precipdiff.bundle import read_manifest

    m = read_manifest(args.bundle)
    print(
        f"\nglobal 181x360 -> 721x1440, denoiser base {m.denoiser_config().base_channels} "
        f"mult {list(m.denoiser_config().channel_mult)}, device {args.device}, "
        f"{args.threads} thread(s), {args.members} member(s)"
    )
    base = results.get("default-eager")
    print(
        f"{'mode':18s} {'NFE':>4s} {'s/member':>9s} {'s/forward':>9s} "
        f"{'peak RSS GB':>11s} {'vs default-eager':>16s}"
    )
    for mode, r in results.items():
        ratio = r["s_per_member"] / base["s_per_member"] if base else float("nan")
        print(
            f"{mode:18s} {r['nfe']:4d} {r['s_per_member']:9.2f} {r['s_per_forward']:9.2f} "
            f"{r['peak_rss_gb']:11.2f} {ratio:16.2f}"
            + (f"  cuda peak {r['peak_cuda_gb']:.2f} GB" if "peak_cuda_gb" in r else "")
        )


if __name__ == "__main__":
    main()
