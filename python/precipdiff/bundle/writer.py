"""Writing a bundle: weights (safetensors), static fields and the manifest.

Used by training and by test fixtures; the runtime only reads bundles
(:mod:`precipdiff.bundle.loader`).
"""

from __future__ import annotations

import copy
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from safetensors.torch import save_file

from precipdiff.bundle.manifest import (
    DENOISER_FILE,
    REGRESSION_FILE,
    STATICS_FILE,
    Manifest,
    default_sampler,
    sha256_file,
    write_manifest,
)
from precipdiff.diffusion.edm import EDMPrecond
from precipdiff.diffusion.samplers import SamplerConfig
from precipdiff.errors import BundleError
from precipdiff.grids import LatLonGrid
from precipdiff.io.atomic import publish_permissions
from precipdiff.nn.unet import UNet
from precipdiff.statics import COMPUTED_STATICS
from precipdiff.transforms import PrecipTransform


def default_provenance(**extra: Any) -> dict[str, Any]:
    """Provenance of the current environment: versions, host, git commit.

    Parameters
    ----------
    **extra
        Further entries (e.g. ``data``, ``train_period``, ``val_period``).

    Returns
    -------
    dict
        JSON-serialisable provenance.
    """
    from precipdiff import __version__

    commit = None
    try:
        repo = Path(__file__).resolve().parents[3]
        out = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        commit = out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    prov: dict[str, Any] = {
        "precipdiff": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "git_commit": commit,
    }
    prov.update(extra)
    return prov


def _state_dict_cpu(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}


def save_bundle(
    path: str | os.PathLike[str],
    manifest: Manifest,
    regression: UNet,
    denoiser: EDMPrecond | UNet,
    statics: Mapping[str, np.ndarray | torch.Tensor] | None = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Write a bundle directory: weights (safetensors), statics and the manifest.

    The directory is assembled under a temporary name and renamed into place,
    so a crash never leaves a half-written bundle. ``manifest.files`` is filled
    with the sha256 of every written file; compiled packages are dropped (they
    belong to the old weights; run ``precipdiff export`` again).

    Parameters
    ----------
    path
        Destination directory.
    manifest
        The manifest (its ``regression``/``denoiser`` configs must match the
        networks).
    regression
        The regression UNet.
    denoiser
        The EDM-wrapped denoiser (or its raw UNet).
    statics
        Static field arrays keyed ``"coarse/<name>"``/``"fine/<name>"`` for every
        non-computed name in ``manifest.static_fields``.
    overwrite
        Replace an existing bundle at ``path``.

    Returns
    -------
    pathlib.Path
        The bundle directory.
    """
    dest = Path(path)
    if dest.exists() and not overwrite:
        raise BundleError(f"{dest} already exists (pass overwrite=True to replace it)")
    den_net = denoiser.net if isinstance(denoiser, EDMPrecond) else denoiser
    for label, net, cfg in (
        ("regression", regression, manifest.regression_config()),
        ("denoiser", den_net, manifest.denoiser_config()),
    ):
        net_cfg = getattr(net, "config", None)
        if net_cfg != cfg:
            raise BundleError(
                f"the {label} network's config {net_cfg} differs from the manifest's {cfg}"
            )
    needed = {
        f"{kind}/{name}"
        for kind in ("coarse", "fine")
        for name in manifest.static_fields[kind]
        if name not in COMPUTED_STATICS
    }
    given = dict(statics or {})
    if set(given) != needed:
        raise BundleError(
            f"static fields given {sorted(given)} do not match the manifest's {sorted(needed)}"
        )
    grids = {"coarse": manifest.coarse_grid_obj(), "fine": manifest.fine_grid_obj()}
    static_tensors: dict[str, torch.Tensor] = {}
    for key, arr in given.items():
        t = torch.as_tensor(np.asarray(arr, dtype=np.float32))
        kind = key.split("/", 1)[0]
        if tuple(t.shape) != grids[kind].shape:
            raise BundleError(
                f"static field {key} has shape {tuple(t.shape)}, the {kind} grid is "
                f"{grids[kind].shape}"
            )
        static_tensors[key] = t.contiguous()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.tmp"))
    try:
        save_file(_state_dict_cpu(regression), str(tmp / REGRESSION_FILE))
        save_file(_state_dict_cpu(den_net), str(tmp / DENOISER_FILE))
        written = [REGRESSION_FILE, DENOISER_FILE]
        if static_tensors:
            save_file(static_tensors, str(tmp / STATICS_FILE))
            written.append(STATICS_FILE)
        for name in written:  # safetensors writes 0600 whatever the umask
            publish_permissions(tmp / name)
        out = copy.deepcopy(manifest)
        out.files = {name: sha256_file(tmp / name) for name in written}
        out.compiled = []
        write_manifest(tmp, out)
        publish_permissions(tmp, directory=True)  # mkdtemp made it 0700
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def manifest_from_networks(
    *,
    variables: list[dict[str, Any]],
    coarse_grid: LatLonGrid,
    fine_grid: LatLonGrid,
    predictor_stats: Mapping[str, tuple[float, float]],
    precip_stats: tuple[float, float],
    regression: UNet,
    denoiser: EDMPrecond,
    sigma_c: float,
    transform: PrecipTransform | None = None,
    sampler: SamplerConfig | None = None,
    static_fields: Mapping[str, list[str]] | None = None,
    bias_correction: dict[str, Any] | None = None,
    provenance: Mapping[str, Any] | None = None,
    features: list[dict[str, Any]] | None = None,
    condition: Mapping[str, Any] | None = None,
) -> Manifest:
    """Build a :class:`Manifest` from trained networks and metadata.

    Parameters
    ----------
    variables
        Predictor variable dicts (``VariableSpec`` fields) in channel order.
    coarse_grid, fine_grid
        The grids.
    predictor_stats
        ``{name: (mean, std)}`` per feature (network channel), in physical units.
    precip_stats
        ``(mean, std)`` of transformed precipitation.
    regression, denoiser
        The trained networks (their configs go into the manifest).
    sigma_c
        Condition-noise level used in training.
    transform
        Precipitation transform (default ``log1p``, ``eps=0.1``).
    sampler
        Sampler defaults (default :func:`default_sampler`).
    static_fields
        ``{"coarse": [...], "fine": [...]}``.
    bias_correction
        QDM tables or ``None``.
    provenance
        Extra provenance merged over :func:`default_provenance`.
    features
        Feature dicts (``None``: the variables are the channels).
    condition
        ``{"source": ..., "predictors": ...}`` (default: truth, no predictors).

    Returns
    -------
    Manifest
        The validated manifest (``files`` is filled by :func:`save_bundle`).
    """
    return Manifest(
        variables=[dict(v) for v in variables],
        coarse_grid=coarse_grid.to_dict(),
        fine_grid=fine_grid.to_dict(),
        normalisation={
            "predictors": {
                n: {"mean": float(m), "std": float(s)} for n, (m, s) in predictor_stats.items()
            },
            "precip": {"mean": float(precip_stats[0]), "std": float(precip_stats[1])},
        },
        transform=(transform or PrecipTransform()).to_dict(),
        sigma_c=float(sigma_c),
        sampler=(sampler or default_sampler()).to_dict(),
        regression=regression.config.to_dict(),
        denoiser=cast(UNet, denoiser.net).config.to_dict(),
        sigma_data=denoiser.sigma_data,
        static_fields={
            k: list(v) for k, v in (static_fields or {"coarse": [], "fine": []}).items()
        },
        bias_correction=bias_correction,
        provenance=default_provenance(**dict(provenance or {})),
        features=[dict(f) for f in features] if features is not None else None,
        condition=dict(condition)
        if condition is not None
        else {
            "source": "truth",
            "predictors": False,
        },
    )
