"""Network input features: the predictors as the networks see them.

A bundle's *variables* are what the host model hands over (e.g. ``hus850``,
``ta850``, ``psl``: specific humidity, temperature, sea-level pressure); its
*features* are the input channels of the regression network, each either one of
those variables or a quantity derived from them on the coarse grid, after
regridding and after any bias correction of the variables:

* ``identity``: the variable itself;
* ``relative_humidity``: relative humidity (fraction, 0-1) at the variable's
  pressure level from specific humidity and temperature, with the saturation
  vapour pressure over water of Bolton (1980, Eq. 10)::

      e   = q p / (0.622 + 0.378 q)
      e_s = 611.2 Pa * exp(17.67 (T - 273.15) / (T - 29.65))
      RH  = e / e_s

Why derived features: a model trained on reanalysis is applied to a warmer
climate. Specific humidity and temperature both change with warming while
relative humidity, to first order, does not (Clausius-Clapeyron), so a network
that reads ``hus850`` and ``ta850`` directly extrapolates beyond its training
range in a warmer climate, whereas relative humidity keeps the inputs in the
range the network was trained on (docs/training.md, "Predictor sets").

A bundle without features uses its variables as channels, in order (bundles
written before features existed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from precipdiff.errors import BundleError, ConfigError, InputError, reject_unknown_keys

#: Operations a feature can apply, with the number of input variables they take.
FEATURE_OPS: dict[str, int] = {"identity": 1, "relative_humidity": 2}


@dataclass(frozen=True)
class FeatureSpec:
    """One input channel of the regression network.

    Parameters
    ----------
    name
        Channel name (normalisation statistics are keyed by it).
    op
        ``"identity"`` or ``"relative_humidity"`` (:data:`FEATURE_OPS`).
    inputs
        Names of the bundle variables the operation reads: one for
        ``identity``; specific humidity (kg kg-1) then temperature (K) for
        ``relative_humidity``.
    pressure_pa
        Pressure of the level in Pa (``relative_humidity`` only).
    """

    name: str
    op: str = "identity"
    inputs: tuple[str, ...] = field(default_factory=tuple)
    pressure_pa: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(str(i) for i in self.inputs))
        if self.op not in FEATURE_OPS:
            raise ConfigError(
                f"feature {self.name!r}: op {self.op!r} is not supported; "
                f"expected one of {sorted(FEATURE_OPS)}"
            )
        if len(self.inputs) != FEATURE_OPS[self.op]:
            raise ConfigError(
                f"feature {self.name!r}: op {self.op!r} takes {FEATURE_OPS[self.op]} input "
                f"variable(s), got {list(self.inputs)}"
            )
        if self.op == "relative_humidity":
            if self.pressure_pa is None or not 100.0 <= self.pressure_pa <= 110000.0:
                raise ConfigError(
                    f"feature {self.name!r}: relative_humidity needs pressure_pa in "
                    f"[100, 110000] Pa, got {self.pressure_pa}"
                )
        elif self.pressure_pa is not None:
            raise ConfigError(
                f"feature {self.name!r}: pressure_pa only applies to relative_humidity"
            )

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict.

        Returns
        -------
        dict
            The feature.
        """
        d = asdict(self)
        d["inputs"] = list(self.inputs)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSpec:
        """Build from :meth:`to_dict` output, rejecting unknown keys.

        Parameters
        ----------
        data
            The mapping.

        Returns
        -------
        FeatureSpec
            The feature.
        """
        reject_unknown_keys(cls, dict(data), "feature")
        d = dict(data)
        d["inputs"] = tuple(d.get("inputs", ()))
        return cls(**d)


def identity_features(variables: Sequence[str]) -> list[FeatureSpec]:
    """Return one identity feature per variable (the behaviour without features).

    Parameters
    ----------
    variables
        Variable names.

    Returns
    -------
    list of FeatureSpec
        The features.
    """
    return [FeatureSpec(name=v, inputs=(v,)) for v in variables]


def parse_features(entries: Sequence[str | Mapping[str, Any]]) -> list[FeatureSpec]:
    """Parse a feature list from a config or manifest.

    A plain string names a variable used as it is; ``"rh850"`` (``rh`` + a
    pressure level in hPa) is shorthand for relative humidity from ``hus<level>``
    and ``ta<level>``; a mapping is a full :class:`FeatureSpec`.

    Parameters
    ----------
    entries
        The entries.

    Returns
    -------
    list of FeatureSpec
        The features, in channel order.

    Raises
    ------
    ConfigError
        On an invalid entry or duplicate names.
    """
    out: list[FeatureSpec] = []
    for e in entries:
        if isinstance(e, str):
            if e.startswith("rh") and e[2:].isdigit():
                level = int(e[2:])
                spec = FeatureSpec(
                    name=e,
                    op="relative_humidity",
                    inputs=(f"hus{level}", f"ta{level}"),
                    pressure_pa=100.0 * level,
                )
            else:
                spec = FeatureSpec(name=e, inputs=(e,))
        elif isinstance(e, Mapping):
            spec = FeatureSpec.from_dict(e)
        else:
            raise ConfigError(f"feature entry must be a name or a mapping, got {e!r}")
        out.append(spec)
    names = [f.name for f in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"features have duplicate names: {names}")
    return out


def redefined_features(
    reference: Sequence[FeatureSpec], others: Sequence[FeatureSpec]
) -> list[str]:
    """Return the names in ``others`` that a feature of ``reference`` uses for another quantity.

    Normalisation statistics are keyed by feature name, so one name must mean one
    quantity across a bundle's feature sets (the regression's and the denoiser's).

    Parameters
    ----------
    reference
        The features the names are defined by (e.g. the regression's).
    others
        Features that may reuse those names (e.g. the denoiser's own).

    Returns
    -------
    list of str
        The clashing names, in the order of ``others`` (empty if none).
    """
    by_name = {f.name: f for f in reference}
    return [f.name for f in others if f.name in by_name and by_name[f.name] != f]


def required_variables(features: Sequence[FeatureSpec]) -> list[str]:
    """Return the variables the features read, in first-use order.

    Parameters
    ----------
    features
        The features.

    Returns
    -------
    list of str
        Variable names.
    """
    seen: list[str] = []
    for f in features:
        for v in f.inputs:
            if v not in seen:
                seen.append(v)
    return seen


def relative_humidity(q: np.ndarray, t: np.ndarray, pressure_pa: float) -> np.ndarray:
    """Relative humidity (fraction) from specific humidity and temperature.

    Parameters
    ----------
    q
        Specific humidity in kg kg-1.
    t
        Temperature in K.
    pressure_pa
        Pressure in Pa.

    Returns
    -------
    numpy.ndarray
        ``e / e_s`` (float32); not clipped at 1 (supersaturation in the input
        data stays visible).
    """
    q64 = np.asarray(q, np.float64)
    t64 = np.asarray(t, np.float64)
    e = q64 * pressure_pa / (0.622 + 0.378 * q64)
    es = 611.2 * np.exp(17.67 * (t64 - 273.15) / (t64 - 29.65))
    return np.asarray(e / es, np.float32)


def compute_features(
    features: Sequence[FeatureSpec], fields: Mapping[str, np.ndarray]
) -> np.ndarray:
    """Compute the feature channels from variable fields.

    Parameters
    ----------
    features
        The features, in channel order.
    fields
        ``{variable: (..., lat, lon)}`` arrays in canonical units, all the same
        shape.

    Returns
    -------
    numpy.ndarray
        ``(..., n_features, lat, lon)`` float32 (the feature axis third from last).

    Raises
    ------
    InputError
        When an input variable is missing.
    """
    chans = []
    for f in features:
        missing = [v for v in f.inputs if v not in fields]
        if missing:
            raise InputError(
                f"feature {f.name!r} needs variable(s) {missing}; got {sorted(fields)}"
            )
        if f.op == "identity":
            chans.append(np.asarray(fields[f.inputs[0]], np.float32))
        else:
            assert f.pressure_pa is not None
            chans.append(relative_humidity(fields[f.inputs[0]], fields[f.inputs[1]], f.pressure_pa))
    return np.stack(chans, axis=-3).astype(np.float32, copy=False)


def check_features_against(features: Sequence[FeatureSpec], variables: Sequence[str]) -> None:
    """Check that every feature reads only known variables (manifest validation).

    Parameters
    ----------
    features
        The features.
    variables
        The bundle's variable names.

    Raises
    ------
    BundleError
        Naming the first feature that reads an unknown variable.
    """
    for f in features:
        unknown = [v for v in f.inputs if v not in variables]
        if unknown:
            raise BundleError(
                f"manifest feature {f.name!r} reads variable(s) {unknown} that are not among "
                f"the bundle's variables {list(variables)}"
            )
