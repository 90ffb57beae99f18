"""Compile a bundle's networks ahead of time (torch.export + AOTInductor).

``precipdiff export BUNDLE`` exports the regression UNet and the EDM denoiser
with static shapes (batch 1 on the bundle's coarse/fine grid) and compiles each
into an AOTInductor package under ``BUNDLE/compiled/``. Each package is recorded
in the manifest with the device type, input shape, torch version, the sha256 of
the weight file it was compiled from and its own sha256.

At run time :func:`load_compiled` picks the packages matching the device, shapes,
torch version and current weights; anything else falls back to the eager
networks (or raises, when compiled networks are required). TorchScript is not
used: it is deprecated in torch 2.13 and adds nothing over AOTInductor here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from precipdiff.bundle import (
    COMPILED_DIR,
    DENOISER_FILE,
    REGRESSION_FILE,
    Bundle,
    load_bundle,
    read_manifest,
    sha256_file,
    write_manifest,
)
from precipdiff.errors import BundleError, DeviceError

log = logging.getLogger(__name__)

_WEIGHTS = {"regression": REGRESSION_FILE, "denoiser": DENOISER_FILE}


class _DenoiserExport(nn.Module):
    """``(x, sigma[1], cond) -> D(x; sigma, cond)`` with a tensor sigma, for export."""

    def __init__(self, precond: nn.Module) -> None:
        super().__init__()
        self.precond = precond

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.precond(x, sigma, cond)


def _example_inputs(bundle: Bundle, network: str, device: torch.device) -> tuple[torch.Tensor, ...]:
    m = bundle.manifest
    if network == "regression":
        c = m.regression_config().in_channels
        return (torch.zeros(1, c, *bundle.coarse_grid.shape, device=device),)
    c = m.denoiser_config().in_channels
    shape = bundle.fine_grid.shape
    return (
        torch.zeros(1, 1, *shape, device=device),
        torch.ones(1, device=device),
        torch.zeros(1, c - 1, *shape, device=device),
    )


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
    from precipdiff.generator import resolve_device

    dev = resolve_device(device)
    root = Path(path)
    bundle = load_bundle(root, dev)
    manifest = bundle.manifest
    out_dir = root / COMPILED_DIR
    out_dir.mkdir(exist_ok=True)
    entries = []
    for network in networks:
        if network not in _WEIGHTS:
            raise BundleError(f"unknown network {network!r}; expected regression or denoiser")
        module: nn.Module = (
            bundle.regression if network == "regression" else _DenoiserExport(bundle.denoiser)
        )
        args = _example_inputs(bundle, network, dev)
        shape = list(args[0].shape)
        name = f"{network}-{dev.type}-{'x'.join(map(str, shape))}.pt2"
        with torch.no_grad():
            program = torch.export.export(module.eval(), args)
        fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{name}.", suffix=".pt2")
        os.close(fd)
        try:
            torch._inductor.aoti_compile_and_package(program, package_path=tmp)
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
                "weights_sha256": manifest.files[_WEIGHTS[network]],
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


def _mismatch(entry: dict[str, Any], bundle: Bundle, expected_shape: list[int]) -> str | None:
    """Why a compiled entry cannot be used here, or ``None`` when it matches."""
    m = bundle.manifest
    if entry["device"] != bundle.device.type:
        return f"compiled for {entry['device']}, running on {bundle.device.type}"
    if entry["torch"] != torch.__version__:
        return f"compiled with torch {entry['torch']}, running torch {torch.__version__}"
    if entry["weights_sha256"] != m.files.get(_WEIGHTS[entry["network"]]):
        return "compiled from different weights"
    if list(entry["shape"]) != expected_shape:
        return f"compiled for input shape {entry['shape']}, the bundle needs {expected_shape}"
    return None


def load_compiled(
    bundle: Bundle, *, required: bool = False
) -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[..., torch.Tensor]] | None:
    """Load matching AOTInductor packages for the bundle's device, if any.

    Parameters
    ----------
    bundle
        The loaded bundle.
    required
        Raise :class:`BundleError` (naming why) instead of returning ``None``
        when no usable package exists.

    Returns
    -------
    tuple or None
        ``(regression_fn, denoise_fn)`` callables with the eager networks'
        signatures, or ``None`` (use eager).
    """
    found: dict[str, Any] = {}
    reasons: list[str] = []
    for network in ("regression", "denoiser"):
        expected = list(_example_inputs(bundle, network, torch.device("meta"))[0].shape)
        for entry in bundle.manifest.compiled:
            if entry.get("network") != network:
                continue
            why = _mismatch(entry, bundle, expected)
            if why is not None:
                reasons.append(f"{entry['file']}: {why}")
                continue
            path = bundle.path / entry["file"]
            from precipdiff.bundle import verify_file

            verify_file(bundle.path, entry["file"], entry["sha256"])
            try:
                with contextlib.redirect_stdout(None):
                    found[network] = torch._inductor.aoti_load_package(str(path))
            except Exception as exc:  # a package that fails to load: eager is still correct
                reasons.append(f"{entry['file']}: cannot be loaded ({exc})")
                continue
            break
        else:
            reasons.append(f"no compiled {network} package for {bundle.device.type}")
    if len(found) < 2:
        msg = f"bundle {bundle.path}: compiled networks not usable: " + "; ".join(reasons)
        if required:
            if bundle.device.type == "cuda" and not torch.cuda.is_available():
                raise DeviceError(msg)
            raise BundleError(msg + " (run `precipdiff export BUNDLE --device ...`)")
        if bundle.manifest.compiled:
            log.info("%s; using eager networks", msg)
        return None
    reg_pkg, den_pkg = found["regression"], found["denoiser"]

    def regression_fn(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([reg_pkg(x[i : i + 1].contiguous()) for i in range(x.shape[0])])

    def denoise_fn(x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        s = sigma.to(x.dtype).reshape(-1)
        if s.numel() == 1:
            s = s.expand(x.shape[0])
        return torch.cat(
            [
                den_pkg(
                    x[i : i + 1].contiguous(),
                    s[i : i + 1].contiguous(),
                    cond[i : i + 1].contiguous(),
                )
                for i in range(x.shape[0])
            ]
        )

    return regression_fn, denoise_fn
