"""Inference precision: ``float32``, ``bf16`` (CPU and GPU), ``fp16`` (GPU only).

A bundle records the precision its denoiser runs at by default on each device type
(manifest ``precision``, e.g. ``{"cpu": "float32", "cuda": "bf16"}``), chosen from
measured evidence (``bench/bench_precision.py``: the generated fields and CRPS,
spread-skill and p99 on the Iberia validation split, and speed); the namelist
(``precision``) and :class:`~precipdiff.generator.PrecipGenerator` can override it.

Reduced precision means a copy of the denoiser's UNet with bf16/fp16 weights whose
activations stay in that dtype (one cast on the way in and out, none per layer:
autocast would cast every convolution's input and weights in every call;
``bench/bench_generate_speed.py --what forward`` compares the two). The EDM
preconditioning, the sampler and the regression stay float32; so do the
noise-level sinusoids, and GroupNorm accumulates its statistics in float32
internally.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from precipdiff.errors import ConfigError

__all__ = [
    "DEVICE_TYPES",
    "PRECISIONS",
    "check_precision",
    "default_precision",
    "dtype_of",
    "inference_copy",
    "resolve_precision",
]

PRECISIONS = ("float32", "bf16", "fp16")
DEVICE_TYPES = ("cpu", "cuda")
_DTYPES = {"float32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: Memory formats of the inference copies. ``contiguous`` (NCHW) is what runs:
#: ``channels_last`` convolves faster with oneDNN but torch 2.13's channels-last CPU
#: GroupNorm loses accuracy (errors of 4 % of the standard deviation where a group's
#: mean is large against its spread -- dry regions), so it is kept for experiments
#: (``bench/bench_generate_speed.py``) only.
MEMORY_FORMATS = ("contiguous", "channels_last")


def check_precision(precision: str, device_type: str, *, what: str = "precision") -> str:
    """Validate a precision for a device type.

    Parameters
    ----------
    precision
        One of :data:`PRECISIONS`.
    device_type
        ``"cpu"`` or ``"cuda"``.
    what
        Name used in error messages (e.g. ``"precipdiff_nml: precision"``).

    Returns
    -------
    str
        The precision.

    Raises
    ------
    ConfigError
        For an unknown precision, or ``fp16`` on the CPU (no fast fp16 convolutions
        there, and fp16's range is a risk bf16 does not have).
    """
    if precision not in PRECISIONS:
        raise ConfigError(
            f"{what} = {precision!r} is not one of {', '.join(map(repr, PRECISIONS))}"
        )
    if precision == "fp16" and device_type != "cuda":
        raise ConfigError(
            f"{what} = 'fp16' needs a CUDA device; use 'bf16' or 'float32' on the CPU"
        )
    return precision


def default_precision() -> dict[str, str]:
    """Return the manifest default: float32 everywhere.

    Returns
    -------
    dict
        ``{"cpu": "float32", "cuda": "float32"}``.
    """
    return {d: "float32" for d in DEVICE_TYPES}


def validate_manifest_precision(value: Any) -> dict[str, str]:
    """Check a manifest ``precision`` mapping; return it with every device type present.

    Parameters
    ----------
    value
        ``{device_type: precision}``.

    Returns
    -------
    dict
        The mapping, missing device types filled with ``float32``.

    Raises
    ------
    ConfigError
        For unknown device types or precisions, or ``fp16`` for the CPU.
    """
    if not isinstance(value, Mapping):
        raise ConfigError(f"manifest precision must map device type -> precision, got {value!r}")
    unknown = sorted(set(value) - set(DEVICE_TYPES))
    if unknown:
        raise ConfigError(f"manifest precision has unknown device type(s) {unknown}")
    out = default_precision()
    for dev, prec in value.items():
        out[str(dev)] = check_precision(str(prec), str(dev), what=f"manifest precision[{dev!r}]")
    return out


def resolve_precision(
    requested: str, manifest_precision: Mapping[str, str], device_type: str
) -> str:
    """Return the precision to run at.

    Parameters
    ----------
    requested
        ``"bundle"`` (the manifest's choice for this device type) or one of
        :data:`PRECISIONS`.
    manifest_precision
        The manifest's ``precision`` mapping.
    device_type
        ``"cpu"`` or ``"cuda"``.

    Returns
    -------
    str
        One of :data:`PRECISIONS`.
    """
    if requested == "bundle":
        return check_precision(
            manifest_precision.get(device_type, "float32"), device_type, what="bundle precision"
        )
    return check_precision(requested, device_type)


def dtype_of(precision: str) -> torch.dtype:
    """Return the torch dtype of a precision name.

    Parameters
    ----------
    precision
        One of :data:`PRECISIONS`.

    Returns
    -------
    torch.dtype
        ``float32``, ``bfloat16`` or ``float16``.
    """
    return _DTYPES[check_precision(precision, "cuda")]


def inference_copy(
    module: nn.Module, precision: str = "float32", memory_format: str = "contiguous"
) -> nn.Module:
    """Return a frozen copy of a network for inference.

    Parameters
    ----------
    module
        The network (left unchanged).
    precision
        Dtype of the copy's weights and activations.
    memory_format
        ``"channels_last"`` or ``"contiguous"`` for 4-D weights (and hence for the
        activations the convolutions produce).

    Returns
    -------
    torch.nn.Module
        A copy in eval mode with ``requires_grad=False`` parameters.
    """
    if memory_format not in MEMORY_FORMATS:
        raise ConfigError(
            f"memory_format {memory_format!r} is not one of {', '.join(map(repr, MEMORY_FORMATS))}"
        )
    net = copy.deepcopy(module).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    net = net.to(dtype_of(precision))
    if memory_format == "channels_last":
        for p in net.parameters():
            if p.dim() == 4:
                p.data = p.data.contiguous(memory_format=torch.channels_last)
    return net
