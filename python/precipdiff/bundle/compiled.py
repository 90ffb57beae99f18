"""Loading AOTInductor-compiled networks stored in a bundle (``BUNDLE/compiled/``).

:func:`compiled_networks` picks, per network, the package matching the device,
input shapes, torch version, precision and current weights; anything else falls
back to the eager network (or raises, when compiled networks are required). The
packages are written offline by :func:`precipdiff.offline.export.export_bundle`
(``precipdiff export BUNDLE``), which also times each package against the eager
network it replaces, interleaved, on the machine that exported it, and records
``eager_s``, ``compiled_s`` and ``pays`` in the entry. With the default policy
``"auto"`` only packages that pay are used (entries written before these fields
existed count as paying); ``"always"`` uses any matching package and requires both.
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


#: ``auto``: matching packages recorded as paying; ``always``: any matching package,
#: both networks required; ``never``: eager networks.
POLICIES = ("auto", "always", "never")


def _mismatch(
    entry: dict[str, Any], bundle: Bundle, expected_shape: list[int], precision: str
) -> str | None:
    """Why a compiled entry cannot be used here, or ``None`` when it matches."""
    m = bundle.manifest
    if entry["device"] != bundle.device.type:
        return f"compiled for {entry['device']}, running on {bundle.device.type}"
    have = entry.get("precision", "float32")
    if entry["network"] == "denoiser" and have != precision:
        return f"compiled at precision {have}, running at {precision}"
    if entry["torch"] != torch.__version__:
        return f"compiled with torch {entry['torch']}, running torch {torch.__version__}"
    if entry["weights_sha256"] != m.files.get(WEIGHT_FILES[entry["network"]]):
        return "compiled from different weights"
    if list(entry["shape"]) != expected_shape:
        return f"compiled for input shape {entry['shape']}, the bundle needs {expected_shape}"
    return None


def compiled_networks(
    bundle: Bundle, *, precision: str = "float32", policy: str = "auto"
) -> dict[str, Callable[..., torch.Tensor]]:
    """Load the usable AOTInductor packages of a bundle, network by network.

    Parameters
    ----------
    bundle
        The loaded bundle.
    precision
        The denoiser's inference precision (a package must have been compiled at it;
        the regression always runs float32).
    policy
        One of :data:`POLICIES`. ``"always"`` raises :class:`BundleError` (naming
        why) unless both networks have a matching package.

    Returns
    -------
    dict
        ``{"regression": fn(x), "denoiser": fn(x, sigma, cond)}`` for the networks
        whose package is used (possibly empty), with the eager networks' signatures.
    """
    if policy not in POLICIES:
        raise BundleError(f"compiled policy {policy!r} is not one of {', '.join(POLICIES)}")
    if policy == "never":
        return {}
    found: dict[str, Any] = {}
    reasons: list[str] = []
    for network in ("regression", "denoiser"):
        expected = list(network_inputs(bundle, network, torch.device("meta"))[0].shape)
        for entry in bundle.manifest.compiled:
            if entry.get("network") != network:
                continue
            why = _mismatch(entry, bundle, expected, precision)
            if why is not None:
                reasons.append(f"{entry['file']}: {why}")
                continue
            # A matching package is verified even when it is not used: a bundle with a
            # corrupt file is reported, whatever the measurement says.
            path = verify_file(bundle.path, entry["file"], entry["sha256"])
            if policy == "auto" and not entry.get("pays", True):
                reasons.append(
                    f"{entry['file']}: not faster than eager when exported "
                    f"({entry.get('compiled_s', 0):.3g} s vs {entry.get('eager_s', 0):.3g} s "
                    "per forward)"
                )
                continue
            try:
                with contextlib.redirect_stdout(None):
                    found[network] = torch._inductor.aoti_load_package(str(path))
            except Exception as exc:  # a package that fails to load: eager is still correct
                reasons.append(f"{entry['file']}: cannot be loaded ({exc})")
                continue
            break
        else:
            reasons.append(f"no usable compiled {network} package for {bundle.device.type}")
    if policy == "always" and len(found) < 2:
        msg = f"bundle {bundle.path}: compiled networks not usable: " + "; ".join(reasons)
        if bundle.device.type == "cuda" and not torch.cuda.is_available():
            raise DeviceError(msg)
        raise BundleError(msg + " (run `precipdiff export BUNDLE --device ...`)")
    if reasons and bundle.manifest.compiled:
        log.info("bundle %s: %s; those networks run eager", bundle.path, "; ".join(reasons))
    out: dict[str, Callable[..., torch.Tensor]] = {}
    if "regression" in found:
        out["regression"] = _regression_fn(found["regression"])
    if "denoiser" in found:
        out["denoiser"] = _denoiser_fn(found["denoiser"])
    return out


def _regression_fn(pkg: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    def regression_fn(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([pkg(x[i : i + 1].contiguous()) for i in range(x.shape[0])])

    return regression_fn


def _denoiser_fn(pkg: Any) -> Callable[..., torch.Tensor]:
    def denoise_fn(x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        s = sigma.to(x.dtype).reshape(-1)
        if s.numel() == 1:
            s = s.expand(x.shape[0])
        return torch.cat(
            [
                pkg(
                    x[i : i + 1].contiguous(),
                    s[i : i + 1].contiguous(),
                    cond[i : i + 1].contiguous(),
                )
                for i in range(x.shape[0])
            ]
        )

    return denoise_fn


def load_compiled(
    bundle: Bundle, *, required: bool = False, precision: str = "float32"
) -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[..., torch.Tensor]] | None:
    """Load matching AOTInductor packages of both networks, if any.

    Parameters
    ----------
    bundle
        The loaded bundle.
    required
        Raise :class:`BundleError` (naming why) instead of returning ``None``
        when no usable package exists.
    precision
        The denoiser package's precision.

    Returns
    -------
    tuple or None
        ``(regression_fn, denoise_fn)`` callables with the eager networks'
        signatures, or ``None`` (use eager). Whether the packages pay is not
        considered here: :class:`~precipdiff.generator.PrecipGenerator` uses
        :func:`compiled_networks`.
    """
    try:
        nets = compiled_networks(bundle, precision=precision, policy="always")
    except (BundleError, DeviceError):
        if required:
            raise
        return None
    return nets["regression"], nets["denoiser"]
