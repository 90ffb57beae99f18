"""Loading AOTInductor-compiled networks stored in a bundle (``BUNDLE/compiled/``).

:func:`load_compiled` picks the packages matching the device, input shapes, torch
version and current weights; anything else falls back to the eager networks (or
raises, when compiled networks are required). The packages are written offline by
:func:`precipdiff.offline.export.export_bundle` (``precipdiff export BUNDLE``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import torch

from precipdiff.bundle.loader import Bundle, verify_file
from precipdiff.bundle.manifest import DENOISER_FILE, REGRESSION_FILE
from precipdiff.errors import BundleError, DeviceError

log = logging.getLogger(__name__)

#: Weight file each compiled network is built from (its sha256 ties package to weights).
WEIGHT_FILES = {"regression": REGRESSION_FILE, "denoiser": DENOISER_FILE}


def network_inputs(bundle: Bundle, network: str, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Return example inputs of one network at batch 1 on the bundle's grids.

    Parameters
    ----------
    bundle
        The loaded bundle.
    network
        ``"regression"`` or ``"denoiser"``.
    device
        Device of the tensors (``meta`` to get shapes only).

    Returns
    -------
    tuple of torch.Tensor
        ``(x,)`` for the regression, ``(x, sigma, cond)`` for the denoiser.
    """
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


def _mismatch(entry: dict[str, Any], bundle: Bundle, expected_shape: list[int]) -> str | None:
    """Why a compiled entry cannot be used here, or ``None`` when it matches."""
    m = bundle.manifest
    if entry["device"] != bundle.device.type:
        return f"compiled for {entry['device']}, running on {bundle.device.type}"
    if entry["torch"] != torch.__version__:
        return f"compiled with torch {entry['torch']}, running torch {torch.__version__}"
    if entry["weights_sha256"] != m.files.get(WEIGHT_FILES[entry["network"]]):
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
        expected = list(network_inputs(bundle, network, torch.device("meta"))[0].shape)
        for entry in bundle.manifest.compiled:
            if entry.get("network") != network:
                continue
            why = _mismatch(entry, bundle, expected)
            if why is not None:
                reasons.append(f"{entry['file']}: {why}")
                continue
            path = bundle.path / entry["file"]
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
