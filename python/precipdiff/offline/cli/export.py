"""``precipdiff export BUNDLE``: compile the networks into the bundle (AOTInductor)."""

from __future__ import annotations

import argparse
import time

from precipdiff.server.config import PRECISION_CHOICES


def _run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from precipdiff.bundle.compiled import load_compiled
    from precipdiff.device import resolve_device
    from precipdiff.offline.export import export_bundle

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    t0 = time.perf_counter()
    entries = export_bundle(
        args.bundle,
        dev.type,
        networks=tuple(args.networks),
        precision=args.precision,
        rounds=args.rounds,
    )
    print(f"compiled {len(entries)} network(s) for {dev.type} in {time.perf_counter() - t0:.1f} s")
    for e in entries:
        print(f"  {e['file']}  input {e['shape']}  {e['precision']}  sha256 {e['sha256'][:16]}…")
        if "pays" in e:
            verdict = "used" if e["pays"] else "not used (eager is as fast)"
            print(
                f"    per forward: eager {e['eager_s']:.4g} s, compiled {e['compiled_s']:.4g} s "
                f"(ratio {e['compiled_s'] / e['eager_s']:.2f}, median of {args.rounds} "
                f"alternated rounds): {verdict}"
            )
    if set(args.networks) == {"regression", "denoiser"}:
        # Check the compiled networks against eager ones on random input.
        from precipdiff.bundle import load_bundle

        bundle = load_bundle(args.bundle, dev)
        prec = entries[-1]["precision"]
        compiled = load_compiled(bundle, required=True, precision=prec)
        assert compiled is not None
        reg_fn, den_fn = compiled
        g = torch.Generator(device=dev).manual_seed(0)
        c_reg = bundle.manifest.regression_config().in_channels
        x = torch.randn(1, c_reg, *bundle.coarse_grid.shape, generator=g, device=dev)
        c_den = bundle.manifest.denoiser_config().in_channels
        y = torch.randn(1, 1, *bundle.fine_grid.shape, generator=g, device=dev)
        cond = torch.randn(1, c_den - 1, *bundle.fine_grid.shape, generator=g, device=dev)
        sigma = torch.tensor([0.7], device=dev)
        with torch.no_grad():
            d_reg = float((reg_fn(x) - bundle.regression(x)).abs().max())
            d_den = float((den_fn(y, sigma, cond) - bundle.denoiser(y, sigma, cond)).abs().max())
        print(
            f"max |compiled - eager float32|: regression {d_reg:.2e}, denoiser ({prec}) "
            f"{d_den:.2e}" + ("" if np.isfinite(d_reg + d_den) else "  (non-finite!)")
        )
    return 0


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the ``export`` subcommand.

    Parameters
    ----------
    subparsers
        The ``add_subparsers`` action of the top-level parser.
    """
    p = subparsers.add_parser(
        "export",
        help="compile a bundle's networks (torch.export + AOTInductor) into the bundle",
    )
    p.add_argument("bundle", help="bundle directory (modified in place)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto: where the packages will run")
    p.add_argument(
        "--networks",
        nargs="+",
        choices=("regression", "denoiser"),
        default=["regression", "denoiser"],
        help="which networks to compile (default both)",
    )
    p.add_argument(
        "--precision",
        default="bundle",
        choices=PRECISION_CHOICES,
        help="denoiser precision of the package (default: the bundle's for the device)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="alternated eager/compiled forwards timed per network to decide whether the "
        "package pays (0: no timing, the package is used)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.set_defaults(func=_run)
