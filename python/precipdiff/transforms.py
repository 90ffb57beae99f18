"""Invertible precipitation transform used inside the networks.

Precipitation is heavy-tailed and bounded below by zero. The networks see it in
a compressed space, ``z = log(1 + P / eps)`` with ``P`` in mm/day, which makes
the distribution closer to Gaussian and gives light rain and extremes comparable
weight. The inverse, ``P = eps * (exp(z) - 1)``, is clamped at zero so that
generated precipitation is never negative, whatever the network outputs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import numpy as np
import torch

from precipdiff.errors import ConfigError, reject_unknown_keys

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)

#: Transforms known to :class:`PrecipTransform`.
TRANSFORM_KINDS = ("log1p", "identity")


@dataclass(frozen=True)
class PrecipTransform:
    """Invertible transform between precipitation (mm/day) and network space.

    Parameters
    ----------
    kind
        ``"log1p"`` (``z = log(1 + P/eps)``, the default) or ``"identity"``
        (``z = P``; the inverse still clamps at zero).
    eps
        Scale of the ``log1p`` transform in mm/day; rates well below ``eps`` are
        treated almost linearly, rates well above it logarithmically.
    max_rate
        Upper bound of :meth:`inverse` in mm/day, so that a wild network output
        can never produce an infinite rate (the world record daily total is
        about 1825 mm).
    """

    kind: str = "log1p"
    eps: float = 0.1
    max_rate: float = 5000.0

    def __post_init__(self) -> None:
        if self.kind not in TRANSFORM_KINDS:
            raise ConfigError(
                f"PrecipTransform.kind={self.kind!r} is not supported; expected one of "
                f"{', '.join(TRANSFORM_KINDS)}"
            )
        if not (np.isfinite(self.eps) and self.eps > 0):
            raise ConfigError(
                f"PrecipTransform.eps must be a finite positive number, got {self.eps}"
            )
        if not (np.isfinite(self.max_rate) and self.max_rate > 0):
            raise ConfigError(
                f"PrecipTransform.max_rate must be a finite positive number, got {self.max_rate}"
            )

    def forward(self, mm_per_day: ArrayT) -> ArrayT:
        """Map precipitation in mm/day to network space.

        Negative input (e.g. the tiny negative values of reanalysis output) is
        clamped to zero first.

        Parameters
        ----------
        mm_per_day
            Precipitation rate in mm/day (numpy array or torch tensor).

        Returns
        -------
        numpy.ndarray or torch.Tensor
            The transformed field, same type and shape.
        """
        if isinstance(mm_per_day, torch.Tensor):
            p = torch.clamp(mm_per_day, min=0.0)
            return torch.log1p(p / self.eps) if self.kind == "log1p" else p
        p_np = np.maximum(mm_per_day, 0.0)
        out = np.log1p(p_np / self.eps) if self.kind == "log1p" else p_np
        return out.astype(np.asarray(mm_per_day).dtype, copy=False)

    def inverse(self, z: ArrayT) -> ArrayT:
        """Map network space back to precipitation in mm/day (never negative).

        Parameters
        ----------
        z
            Field in network space (numpy array or torch tensor).

        Returns
        -------
        numpy.ndarray or torch.Tensor
            Precipitation in mm/day, in ``[0, max_rate]`` everywhere.
        """
        z_max = math.log1p(self.max_rate / self.eps) if self.kind == "log1p" else self.max_rate
        if isinstance(z, torch.Tensor):
            zc = torch.clamp(z, max=z_max)
            p = self.eps * torch.expm1(zc) if self.kind == "log1p" else zc
            return torch.clamp(p, min=0.0, max=self.max_rate)
        zc_np = np.minimum(np.asarray(z), z_max)
        p_np = self.eps * np.expm1(zc_np) if self.kind == "log1p" else zc_np
        return np.clip(p_np, 0.0, self.max_rate).astype(np.asarray(z).dtype, copy=False)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable description (for the bundle manifest).

        Returns
        -------
        dict
            ``{"kind": ..., "eps": ..., "max_rate": ...}``.
        """
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrecipTransform:
        """Build a transform from :meth:`to_dict` output, rejecting unknown keys.

        Parameters
        ----------
        data
            Mapping with keys ``kind`` and ``eps``.

        Returns
        -------
        PrecipTransform
            The transform.
        """
        reject_unknown_keys(cls, data, "transform")
        return cls(**data)
