"""Loading a bundle: hash checks, strict weight loading, static fields.

Compiled (AOTInductor) networks are picked by :mod:`precipdiff.bundle.compiled`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from precipdiff.bundle.manifest import (
    DENOISER_FILE,
    REGRESSION_FILE,
    STATICS_FILE,
    Manifest,
    read_manifest,
    sha256_file,
)
from precipdiff.diffusion.edm import EDMPrecond
from precipdiff.errors import BundleError
from precipdiff.grids import LatLonGrid
from precipdiff.nn.unet import UNet
from precipdiff.statics import COMPUTED_STATICS, computed_static
from precipdiff.transforms import PrecipTransform


def verify_file(bundle: Path, name: str, expected: str) -> Path:
    """Check one bundle file against its recorded sha256.

    Parameters
    ----------
    bundle
        The bundle directory.
    name
        File name relative to the bundle.
    expected
        The recorded hex sha256.

    Returns
    -------
    pathlib.Path
        The verified file.
    """
    p = bundle / name
    if not p.is_file():
        raise BundleError(f"bundle {bundle} is missing {name} (listed in its manifest)")
    actual = sha256_file(p)
    if actual != expected:
        raise BundleError(
            f"{p} is corrupt or was modified: sha256 {actual[:16]}… does not match the "
            f"manifest's {expected[:16]}…"
        )
    return p


def _load_weights(net: torch.nn.Module, path: Path, label: str) -> None:
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise BundleError(f"cannot read the {label} weights {path}: {exc}") from exc
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise BundleError(
            f"{path} does not fit the {label} architecture in the manifest: "
            f"missing {missing[:5]}{'…' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'…' if len(unexpected) > 5 else ''}"
        )
    wrong = [k for k in expected if tuple(expected[k].shape) != tuple(state[k].shape)]
    if wrong:
        k = wrong[0]
        raise BundleError(
            f"{path}: {label} weight {k} has shape {tuple(state[k].shape)}, the manifest's "
            f"architecture needs {tuple(expected[k].shape)} ({len(wrong)} mismatched tensor(s))"
        )
    net.load_state_dict(state, strict=True)


def static_field_arrays(
    manifest: Manifest, kind: str, stored: Mapping[str, torch.Tensor]
) -> np.ndarray:
    """Return the static fields of one grid as ``(n, nlat, nlon)`` float32.

    Parameters
    ----------
    manifest
        The manifest.
    kind
        ``"coarse"`` or ``"fine"``.
    stored
        Tensors read from ``statics.safetensors``.

    Returns
    -------
    numpy.ndarray
        The fields in manifest order (empty first axis when there are none).
    """
    grid = manifest.coarse_grid_obj() if kind == "coarse" else manifest.fine_grid_obj()
    nlat, nlon = grid.shape
    out = []
    for name in manifest.static_fields[kind]:
        field_ = computed_static(name, grid)
        if field_ is None:
            key = f"{kind}/{name}"
            if key not in stored:
                raise BundleError(f"static field {key} is listed in the manifest but not stored")
            field_ = stored[key].numpy()
        out.append(field_)
    return np.asarray(out, dtype=np.float32).reshape(len(out), nlat, nlon)


@dataclass
class Bundle:
    """A loaded model bundle (networks in eval mode on ``device``).

    Parameters
    ----------
    path
        The bundle directory.
    manifest
        Its validated manifest.
    regression
        The regression UNet.
    denoiser
        The EDM-preconditioned denoiser.
    statics_coarse, statics_fine
        Static input fields ``(n, nlat, nlon)`` float32.
    device
        Device of the networks.
    """

    path: Path
    manifest: Manifest
    regression: UNet
    denoiser: EDMPrecond
    statics_coarse: np.ndarray
    statics_fine: np.ndarray
    device: torch.device

    @property
    def coarse_grid(self) -> LatLonGrid:
        """The coarse (regression) grid."""
        return self.manifest.coarse_grid_obj()

    @property
    def fine_grid(self) -> LatLonGrid:
        """The fine (diffusion) grid."""
        return self.manifest.fine_grid_obj()

    @property
    def transform(self) -> PrecipTransform:
        """The precipitation transform."""
        return self.manifest.transform_obj()


def load_bundle(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> Bundle:
    """Load a bundle: validate the manifest, verify hashes, load weights strictly.

    Parameters
    ----------
    path
        The bundle directory.
    device
        Where to put the networks.

    Returns
    -------
    Bundle
        The loaded bundle.
    """
    from precipdiff.bundle.registry import find_bundle

    root = find_bundle(path)
    manifest = read_manifest(root)
    required = [REGRESSION_FILE, DENOISER_FILE]
    if any(manifest.static_fields[k] for k in ("coarse", "fine")) and any(
        n not in COMPUTED_STATICS for k in ("coarse", "fine") for n in manifest.static_fields[k]
    ):
        required.append(STATICS_FILE)
    for name in required:
        if name not in manifest.files:
            raise BundleError(f"{root}: the manifest records no sha256 for {name}")
    for name, digest in manifest.files.items():
        verify_file(root, name, digest)
    dev = torch.device(device)
    regression = UNet(manifest.regression_config())
    _load_weights(regression, root / REGRESSION_FILE, "regression")
    den_net = UNet(manifest.denoiser_config())
    _load_weights(den_net, root / DENOISER_FILE, "denoiser")
    denoiser = EDMPrecond(den_net, sigma_data=manifest.sigma_data)
    stored: dict[str, torch.Tensor] = {}
    if STATICS_FILE in manifest.files:
        try:
            stored = load_file(str(root / STATICS_FILE))
        except (SafetensorError, OSError, ValueError) as exc:
            raise BundleError(f"cannot read {root / STATICS_FILE}: {exc}") from exc
    return Bundle(
        path=root,
        manifest=manifest,
        regression=regression.to(dev).eval(),
        denoiser=denoiser.to(dev).eval(),
        statics_coarse=static_field_arrays(manifest, "coarse", stored),
        statics_fine=static_field_arrays(manifest, "fine", stored),
        device=dev,
    )
