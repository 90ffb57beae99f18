"""Compile a bundle's networks ahead of time (torch.export + AOTInductor).

``precipdiff export BUNDLE`` exports the regression UNet and the EDM denoiser
with static shapes (batch 1 on the bundle's coarse/fine grid) and compiles each
into an AOTInductor package under ``BUNDLE/compiled/``. Each package is recorded
in the manifest with the device type, input shape, torch version, the sha256 of
the weight file it was compiled from and its own sha256.

At run time :func:`precipdiff.bundle.compiled.load_compiled` picks the packages
matching the device, shapes, torch version and current weights. TorchScript is
not used: it is deprecated in torch 2.13 and adds nothing over AOTInductor here.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from precipdiff.bundle import COMPILED_DIR, load_bundle, read_manifest, sha256_file, write_manifest
from precipdiff.bundle.compiled import WEIGHT_FILES, network_inputs
from precipdiff.device import resolve_device
from precipdiff.errors import BundleError
from precipdiff.io.atomic import publish_permissions


class _DenoiserExport(nn.Module):
    """``(x, sigma[1], cond) -> D(x; sigma, cond)`` with a tensor sigma, for export."""

    def __init__(self, precond: nn.Module) -> None:
        super().__init__()
        self.precond = precond

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.precond(x, sigma, cond)


def export_bundle(
    path: str | os.PathLike[str],
    device: str = "cpu",
    *,
    networks: tuple[str, ...] = ("regression", "denoiser"),
) -> list[dict[str, Any]]:
    """Compile the bundle's networks for ``device`` and record them in the manifest.

    Parameters
    ----------
    path
        The bundle directory (modified in place; the manifest is rewritten
        atomically after every package is in place).
    device
        ``"cpu"`` or ``"cuda"``.
    networks
        Which networks to compile.

    Returns
    -------
    list of dict
        The new manifest entries.
    """
    dev = resolve_device(device)
    root = Path(path)
    bundle = load_bundle(root, dev)
    manifest = bundle.manifest
    out_dir = root / COMPILED_DIR
    out_dir.mkdir(exist_ok=True)
    entries = []
    for network in networks:
        if network not in WEIGHT_FILES:
            raise BundleError(f"unknown network {network!r}; expected regression or denoiser")
        module: nn.Module = (
            bundle.regression if network == "regression" else _DenoiserExport(bundle.denoiser)
        )
        args = network_inputs(bundle, network, dev)
        shape = list(args[0].shape)
        name = f"{network}-{dev.type}-{'x'.join(map(str, shape))}.pt2"
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
        entries.append(
            {
                "network": network,
                "file": f"{COMPILED_DIR}/{name}",
                "device": dev.type,
                "shape": shape,
                "torch": torch.__version__,
                "weights_sha256": manifest.files[WEIGHT_FILES[network]],
                "sha256": sha256_file(out_dir / name),
            }
        )
    current = read_manifest(root)
    new_files = {e["file"] for e in entries}
    keep = [
        e
        for e in current.compiled
        if e["file"] not in new_files
        and not any(e["network"] == n["network"] and e["device"] == n["device"] for n in entries)
    ]
    current.compiled = keep + entries
    write_manifest(root, current)
    return entries
