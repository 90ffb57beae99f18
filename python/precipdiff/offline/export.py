"""Compile a bundle's networks ahead of time (torch.export + AOTInductor), where it pays.

``precipdiff export BUNDLE`` exports the regression UNet and the EDM denoiser
with static shapes (batch 1 on the bundle's coarse/fine grid) and compiles each
into an AOTInductor package under ``BUNDLE/compiled/``. Each package is recorded
in the manifest with the device type, input shape, torch version, the sha256 of
the weight file it was compiled from, its own sha256, the denoiser's precision
and a measurement: the package and the eager inference network it would replace
(:func:`precipdiff.perf.precision.inference_copy`, the same precision) are timed
alternately on this machine (``rounds`` forwards each, median), and ``pays``
records whether the package is at least 5 % faster. Whether compiling pays
depends on the network's size: at base 8 the networks are memory-bound and gain
little, a paper-sized denoiser gains 1.6-1.8x (``bench/bench_generate_speed.py``).

At run time :func:`precipdiff.bundle.compiled.compiled_networks` uses, per network,
the packages matching the device, shapes, torch version, precision and current
weights that pay. TorchScript is not used: it is deprecated in torch 2.13 and adds
nothing over AOTInductor here.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from precipdiff.bundle import COMPILED_DIR, load_bundle, read_manifest, sha256_file, write_manifest
from precipdiff.bundle.compiled import WEIGHT_FILES, network_inputs
from precipdiff.device import resolve_device
from precipdiff.diffusion.edm import EDMPrecond
from precipdiff.errors import BundleError
from precipdiff.io.atomic import publish_permissions
from precipdiff.perf.precision import inference_copy, resolve_precision

#: A package is used by default when it is at least this much faster than eager.
PAYS_RATIO = 0.95


class _DenoiserExport(nn.Module):
    """``(x, sigma[1], cond) -> D(x; sigma, cond)`` with a tensor sigma, for export."""

    def __init__(self, precond: nn.Module) -> None:
        super().__init__()
        self.precond = precond

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.precond(x, sigma, cond)


def _median_forward_times(
    fns: dict[str, Any], args: tuple[torch.Tensor, ...], rounds: int, device: torch.device
) -> dict[str, float]:
    """Median seconds per call of each function, called alternately (one warm-up each)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    with torch.inference_mode():
        for fn in fns.values():
            fn(*args)
        for _ in range(rounds):
            for k, fn in fns.items():
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                fn(*args)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def export_bundle(
    path: str | os.PathLike[str],
    device: str = "cpu",
    *,
    networks: tuple[str, ...] = ("regression", "denoiser"),
    precision: str = "bundle",
    rounds: int = 3,
) -> list[dict[str, Any]]:
    """Compile the bundle's networks for ``device``, time them, record them in the manifest.

    Parameters
    ----------
    path
        The bundle directory (modified in place; the manifest is rewritten
        atomically after every package is in place).
    device
        ``"cpu"`` or ``"cuda"``.
    networks
        Which networks to compile.
    precision
        Precision of the denoiser package: ``"bundle"`` (the manifest's choice for
        the device type), ``"float32"``, ``"bf16"`` or ``"fp16"`` (CUDA). The
        regression is compiled in float32.
    rounds
        Alternated eager/compiled forwards timed per network (0: do not time; the
        package then counts as paying).

    Returns
    -------
    list of dict
        The new manifest entries.
    """
    dev = resolve_device(device)
    root = Path(path)
    bundle = load_bundle(root, dev)
    manifest = bundle.manifest
    prec = resolve_precision(precision, manifest.precision, dev.type)
    out_dir = root / COMPILED_DIR
    out_dir.mkdir(exist_ok=True)
    entries = []
    for network in networks:
        if network not in WEIGHT_FILES:
            raise BundleError(f"unknown network {network!r}; expected regression or denoiser")
        # What runs when the package is not used: the generator's inference copy.
        module: nn.Module = (
            inference_copy(bundle.regression, "float32")
            if network == "regression"
            else _DenoiserExport(
                EDMPrecond(
                    inference_copy(bundle.denoiser.net, prec),
                    sigma_data=bundle.denoiser.sigma_data,
                )
            )
        )
        net_prec = "float32" if network == "regression" else prec
        args = network_inputs(bundle, network, dev)
        shape = list(args[0].shape)
        suffix = "" if net_prec == "float32" else f"-{net_prec}"
        name = f"{network}-{dev.type}-{'x'.join(map(str, shape))}{suffix}.pt2"
        with torch.no_grad():
            program = torch.export.export(module.eval(), args)
        fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{name}.", suffix=".pt2")
        os.close(fd)
        try:
            torch._inductor.aoti_compile_and_package(program, package_path=tmp)
            publish_permissions(tmp)  # mkstemp made it 0600
            os.replace(tmp, out_dir / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        entry: dict[str, Any] = {
            "network": network,
            "file": f"{COMPILED_DIR}/{name}",
            "device": dev.type,
            "shape": shape,
            "torch": torch.__version__,
            "weights_sha256": manifest.files[WEIGHT_FILES[network]],
            "sha256": sha256_file(out_dir / name),
            "precision": net_prec,
        }
        if rounds > 0:
            with contextlib.redirect_stdout(None):
                pkg = torch._inductor.aoti_load_package(str(out_dir / name))
            t = _median_forward_times({"eager": module, "compiled": pkg}, args, rounds, dev)
            entry.update(
                eager_s=round(t["eager"], 6),
                compiled_s=round(t["compiled"], 6),
                pays=bool(t["compiled"] <= PAYS_RATIO * t["eager"]),
            )
        entries.append(entry)
    current = read_manifest(root)
    new_files = {e["file"] for e in entries}
    keep = [
        e
        for e in current.compiled
        if e["file"] not in new_files
        and not any(
            e["network"] == n["network"]
            and e["device"] == n["device"]
            and e.get("precision", "float32") == n["precision"]
            for n in entries
        )
    ]
    current.compiled = keep + entries
    write_manifest(root, current)
    return entries
