"""Predictor and precipitation variables: names, canonical units, sanity checks.

One :class:`VariableSpec` describes a variable as the models see it (canonical
name, CF standard name, canonical units, pressure level). ERA5, CMIP6, NCEP and
the demo data sets use different names and units for the same quantity; this
module maps them onto the spec (:func:`resolve_variable`), converts values to
canonical units (:func:`to_canonical`), and catches the usual mistakes
(:func:`check_finite`, :func:`check_range`: pressure in hPa where Pa was
expected, humidity in g/kg, temperature in °C, precipitation in kg m-2 s-1
labelled as mm/day).

Canonical units: Pa, kg kg-1, m s-1, K, and mm/day for precipitation.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from precipdiff.errors import ConfigError, InputError

__all__ = [
    "KNOWN_VARIABLES",
    "VariableSpec",
    "check_finite",
    "check_range",
    "convert_units",
    "describe_conversion",
    "get_variable",
    "normalise_units",
    "resolve_variable",
    "to_canonical",
]


@dataclass(frozen=True)
class VariableSpec:
    """A physical variable as the models expect it.

    Parameters
    ----------
    name : str
        Canonical name used in bundles and at the Python API (e.g. ``"hus850"``).
    standard_name : str
        CF standard name (e.g. ``"specific_humidity"``).
    units : str
        Canonical units (``Pa``, ``kg kg-1``, ``m s-1``, ``K`` or ``mm/day``).
    level_hpa : float or None
        Pressure level in hPa for 3-D variables, ``None`` for single-level fields.
    aliases : tuple of str
        Other names the variable has in data sets (ERA5 ``q``, CMIP6 ``hus``, ...).
    valid_range : tuple of float or None
        Physically plausible ``(min, max)`` in canonical units; values outside
        trigger :func:`check_range`.
    """

    name: str
    standard_name: str
    units: str
    level_hpa: float | None = None
    aliases: tuple[str, ...] = ()
    valid_range: tuple[float, float] | None = None
    base_aliases: tuple[str, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if not self.name or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.name):
            raise ConfigError(f"invalid variable name {self.name!r}")
        if normalise_units(self.units) not in _CANONICAL_UNITS:
            raise ConfigError(
                f"variable {self.name}: canonical units {self.units!r} not one of "
                f"{sorted(_CANONICAL_UNITS)}"
            )
        if self.level_hpa is not None and not (0 < self.level_hpa <= 1100):
            raise ConfigError(f"variable {self.name}: level_hpa={self.level_hpa} outside (0, 1100]")
        if self.valid_range is not None:
            lo, hi = self.valid_range
            if not lo < hi:
                raise ConfigError(f"variable {self.name}: valid_range {self.valid_range} is empty")
        object.__setattr__(self, "aliases", tuple(self.aliases))
        object.__setattr__(self, "base_aliases", tuple(self.base_aliases))

    @property
    def all_names(self) -> tuple[str, ...]:
        """The canonical name followed by all aliases (level-specific names first)."""
        seen: dict[str, None] = {self.name: None}
        for a in (*self.aliases, *self.base_aliases):
            seen.setdefault(a, None)
        return tuple(seen)

    def at_level(self, level_hpa: float) -> VariableSpec:
        """Return this spec at a pressure level, named e.g. ``hus850``.

        Parameters
        ----------
        level_hpa : float
            Pressure level in hPa.

        Returns
        -------
        VariableSpec
            Spec with level-suffixed name and aliases; the unsuffixed names are
            kept as ``base_aliases`` (a file variable ``q`` with a level axis).
        """
        lev = f"{level_hpa:g}"
        base = self.base_aliases or (self.name, *self.aliases)
        return replace(
            self,
            name=f"{base[0]}{lev}",
            level_hpa=float(level_hpa),
            aliases=tuple(f"{a}{lev}" for a in base[1:]),
            base_aliases=base,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (for the model manifest)."""
        return {
            "name": self.name,
            "standard_name": self.standard_name,
            "units": self.units,
            "level_hpa": self.level_hpa,
            "aliases": list(self.aliases),
            "valid_range": list(self.valid_range) if self.valid_range else None,
            "base_aliases": list(self.base_aliases),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VariableSpec:
        """Rebuild from :meth:`to_dict` output; unknown keys are rejected.

        Parameters
        ----------
        data : Mapping
            Serialised spec.

        Returns
        -------
        VariableSpec
            The spec.
        """
        allowed = {
            "name",
            "standard_name",
            "units",
            "level_hpa",
            "aliases",
            "valid_range",
            "base_aliases",
        }
        unknown = set(data) - allowed
        if unknown:
            raise ConfigError(f"unknown variable keys {sorted(unknown)}; allowed {sorted(allowed)}")
        vr = data.get("valid_range")
        return cls(
            name=data["name"],
            standard_name=data["standard_name"],
            units=data["units"],
            level_hpa=data.get("level_hpa"),
            aliases=tuple(data.get("aliases", ())),
            valid_range=(float(vr[0]), float(vr[1])) if vr else None,
            base_aliases=tuple(data.get("base_aliases", ())),
        )


# ---------------------------------------------------------------------------
# Units
# ---------------------------------------------------------------------------

_CANONICAL_UNITS = {"Pa", "kg kg-1", "m s-1", "K", "mm day-1"}

# Spellings seen in ERA5 (``kg kg**-1``), CMIP, NCEP, E-OBS and by hand -> one form.
_UNIT_SYNONYMS = {
    "pa": "Pa",
    "hpa": "hPa",
    "mb": "hPa",
    "mbar": "hPa",
    "millibars": "hPa",
    "millibar": "hPa",
    "kpa": "kPa",
    "kg kg-1": "kg kg-1",
    "kg/kg": "kg kg-1",
    "1": "kg kg-1",
    "g kg-1": "g kg-1",
    "g/kg": "g kg-1",
    "m s-1": "m s-1",
    "m/s": "m s-1",
    "km h-1": "km h-1",
    "km/h": "km h-1",
    "k": "K",
    "kelvin": "K",
    "degk": "K",
    "degc": "degC",
    "deg_c": "degC",
    "celsius": "degC",
    "c": "degC",
    "degrees_celsius": "degC",
    "mm day-1": "mm day-1",
    "mm/day": "mm day-1",
    "mm/d": "mm day-1",
    "mm d-1": "mm day-1",
    "kg m-2 day-1": "mm day-1",
    "kg m-2 d-1": "mm day-1",
    "kg m-2 s-1": "kg m-2 s-1",
    "mm s-1": "kg m-2 s-1",
    "mm/s": "kg m-2 s-1",
    "mm h-1": "mm h-1",
    "mm/h": "mm h-1",
    "mm/hr": "mm h-1",
    "m s-1 lwe": "m s-1 lwe",
    "m day-1": "m day-1",
    "m/day": "m day-1",
    "m": "m",
    "mm": "mm",
    "kg m-2": "mm",
}

# (scale, offset): canonical = value * scale + offset
_TO_CANONICAL: dict[tuple[str, str], tuple[float, float]] = {
    ("Pa", "Pa"): (1.0, 0.0),
    ("hPa", "Pa"): (100.0, 0.0),
    ("kPa", "Pa"): (1000.0, 0.0),
    ("kg kg-1", "kg kg-1"): (1.0, 0.0),
    ("g kg-1", "kg kg-1"): (1e-3, 0.0),
    ("m s-1", "m s-1"): (1.0, 0.0),
    ("km h-1", "m s-1"): (1.0 / 3.6, 0.0),
    ("K", "K"): (1.0, 0.0),
    ("degC", "K"): (1.0, 273.15),
    ("mm day-1", "mm day-1"): (1.0, 0.0),
    ("kg m-2 s-1", "mm day-1"): (86400.0, 0.0),
    ("mm h-1", "mm day-1"): (24.0, 0.0),
    ("m day-1", "mm day-1"): (1000.0, 0.0),
    ("m s-1", "mm day-1"): (86400_000.0, 0.0),
}

# Accumulations (ERA5 ``tp`` in m over the output interval) need the period.
_ACCUMULATION_TO_MM = {"m": 1000.0, "mm": 1.0}


def normalise_units(units: str) -> str:
    """Return one spelling for a units string (``kg kg**-1`` → ``kg kg-1``).

    Parameters
    ----------
    units : str
        Units as written in a file.

    Returns
    -------
    str
        Normalised units; unknown spellings are returned with whitespace and
        ``**`` exponents tidied.
    """
    u = " ".join(str(units).strip().replace("**", "").replace("^", "").split())
    u = re.sub(r"\bdays?\b", "day", u)
    return _UNIT_SYNONYMS.get(u.lower(), u)


def convert_units(
    values: npt.ArrayLike,
    from_units: str,
    to_units: str,
    *,
    name: str = "variable",
    accumulation_hours: float | None = None,
) -> np.ndarray:
    """Convert values between units known to precipdiff.

    Parameters
    ----------
    values : array_like
        Data.
    from_units, to_units : str
        Units (any spelling :func:`normalise_units` understands).
    name : str
        Variable name for error messages.
    accumulation_hours : float, optional
        Accumulation period when ``from_units`` is an amount (``m`` or ``mm``,
        e.g. ERA5 hourly ``tp``: 1).

    Returns
    -------
    numpy.ndarray
        Converted values (float32 stays float32).
    """
    src, dst = normalise_units(from_units), normalise_units(to_units)
    x = np.asarray(values)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    if src in _ACCUMULATION_TO_MM and dst == "mm day-1":
        if accumulation_hours is None or accumulation_hours <= 0:
            raise InputError(
                f"{name}: units {from_units!r} are an accumulated amount; the accumulation "
                "period is needed to convert to mm/day (ERA5 hourly tp: accumulation_hours=1)"
            )
        scale = _ACCUMULATION_TO_MM[src] * 24.0 / accumulation_hours
        return (x * scale).astype(x.dtype, copy=False)
    key = (src, dst)
    if key not in _TO_CANONICAL:
        raise InputError(
            f"{name}: cannot convert units {from_units!r} to {to_units!r}; known source units "
            f"for {dst}: {sorted({a for a, b in _TO_CANONICAL if b == dst}) or 'none'}"
        )
    scale, offset = _TO_CANONICAL[key]
    if scale == 1.0 and offset == 0.0:
        return x
    return (x * scale + offset).astype(x.dtype, copy=False)


def describe_conversion(
    spec: VariableSpec, units: str | None, *, accumulation_hours: float | None = None
) -> str | None:
    """Say what :func:`to_canonical` will do to data in ``units``, or ``None`` if nothing.

    Used to log unit conversions once (they are never silent).

    Parameters
    ----------
    spec : VariableSpec
        Target variable.
    units : str or None
        Units attribute of the data.
    accumulation_hours : float, optional
        Accumulation period of an amount (see :func:`convert_units`).

    Returns
    -------
    str or None
        E.g. ``"psl: hPa -> Pa (x 100)"``, ``"ta850: degC -> K (+ 273.15)"``.
    """
    if not units:
        return None
    src, dst = normalise_units(units), normalise_units(spec.units)
    if src in _ACCUMULATION_TO_MM and dst == "mm day-1" and accumulation_hours:
        scale = _ACCUMULATION_TO_MM[src] * 24.0 / accumulation_hours
        return (
            f"{spec.name}: {units} accumulated over {accumulation_hours:g} h -> {spec.units} "
            f"(x {scale:g})"
        )
    if src == dst or (src, dst) not in _TO_CANONICAL:
        return None
    scale, offset = _TO_CANONICAL[(src, dst)]
    if scale == 1.0 and offset == 0.0:
        return None
    how = []
    if scale != 1.0:
        how.append(f"x {scale:g}")
    if offset != 0.0:
        how.append(f"{'+' if offset > 0 else '-'} {abs(offset):g}")
    return f"{spec.name}: {units} -> {spec.units} ({', '.join(how)})"


def to_canonical(
    spec: VariableSpec,
    values: npt.ArrayLike,
    units: str | None,
    *,
    accumulation_hours: float | None = None,
) -> np.ndarray:
    """Convert ``values`` given in ``units`` to ``spec.units``.

    Parameters
    ----------
    spec : VariableSpec
        Target variable.
    values : array_like
        Data.
    units : str or None
        Units attribute of the data; ``None``/empty means "already canonical".
    accumulation_hours : float, optional
        See :func:`convert_units`.

    Returns
    -------
    numpy.ndarray
        Values in canonical units.
    """
    if not units:
        return np.asarray(values)
    return convert_units(
        values, units, spec.units, name=spec.name, accumulation_hours=accumulation_hours
    )


# ---------------------------------------------------------------------------
# Known variables
# ---------------------------------------------------------------------------

_BASE_SPECS = [
    VariableSpec(
        "hus",
        "specific_humidity",
        "kg kg-1",
        aliases=("q", "shum", "spfh", "specific_humidity"),
        valid_range=(0.0, 0.05),
    ),
    VariableSpec(
        "ua",
        "eastward_wind",
        "m s-1",
        aliases=("u", "uwnd", "u_component_of_wind"),
        valid_range=(-150.0, 150.0),
    ),
    VariableSpec(
        "va",
        "northward_wind",
        "m s-1",
        aliases=("v", "vwnd", "v_component_of_wind"),
        valid_range=(-150.0, 150.0),
    ),
    VariableSpec(
        "ta",
        "air_temperature",
        "K",
        aliases=("t", "air", "temperature"),
        valid_range=(150.0, 350.0),
    ),
    VariableSpec(
        "uas",
        "eastward_wind",
        "m s-1",
        aliases=("u10", "10u", "10m_u_component_of_wind"),
        valid_range=(-100.0, 100.0),
    ),
    VariableSpec(
        "vas",
        "northward_wind",
        "m s-1",
        aliases=("v10", "10v", "10m_v_component_of_wind"),
        valid_range=(-100.0, 100.0),
    ),
    VariableSpec(
        "psl",
        "air_pressure_at_mean_sea_level",
        "Pa",
        aliases=("msl", "slp", "mslp", "prmsl", "mean_sea_level_pressure"),
        valid_range=(85_000.0, 110_000.0),
    ),
    VariableSpec(
        "tas",
        "air_temperature",
        "K",
        aliases=("t2m", "2t", "t2", "2m_temperature"),
        valid_range=(170.0, 345.0),
    ),
    # The long names (``specific_humidity``, ``10m_u_component_of_wind``, ...) are those of the
    # ARCO-ERA5 and WeatherBench2 Zarr stores.
    # Reanalysis precipitation has tiny negative values (NCEP: -1e-10 kg m-2 s-1):
    # tolerate them in the range check; the transform clamps at zero.
    VariableSpec(
        "pr",
        "lwe_precipitation_rate",
        "mm/day",
        aliases=("tp", "rr", "precip", "prate", "precipitation", "total_precipitation"),
        valid_range=(-0.01, 2000.0),
    ),
]

KNOWN_VARIABLES: dict[str, VariableSpec] = {s.name: s for s in _BASE_SPECS}
"""Base variables by canonical name; :func:`get_variable` adds pressure levels."""

_LEVELLED = {"hus", "ua", "va", "ta"}
_AMBIGUOUS_STANDARD_NAMES = {
    s.standard_name
    for s in _BASE_SPECS
    if sum(t.standard_name == s.standard_name for t in _BASE_SPECS) > 1
}


def get_variable(name: str) -> VariableSpec:
    """Look up a known variable by canonical name, alias, or name + level.

    Parameters
    ----------
    name : str
        ``"psl"``, ``"msl"``, ``"tp"``, ``"hus850"``, ``"q850"``, ``"ta500"``, ...

    Returns
    -------
    VariableSpec
        The spec (level-suffixed for pressure-level variables).
    """
    for spec in _BASE_SPECS:
        if name in spec.all_names:
            return spec
    m = re.fullmatch(r"([A-Za-z_]+?)(\d+(?:\.\d+)?)", name)
    if m:
        base, lev = m.group(1), float(m.group(2))
        for spec in _BASE_SPECS:
            if spec.name in _LEVELLED and base in spec.all_names:
                return spec.at_level(lev)
    known = sorted(n for s in _BASE_SPECS for n in s.all_names)
    raise ConfigError(
        f"unknown variable {name!r}; known names {known} (pressure-level ones take a level "
        "suffix in hPa, e.g. hus850)"
    )


def resolve_variable(dataset_vars: Iterable[str] | Mapping[str, Any], spec: VariableSpec) -> str:
    """Find the name under which ``spec`` is stored in a data set.

    Parameters
    ----------
    dataset_vars : iterable of str, or mapping of name to attributes
        Variable names of the data set. With a mapping (e.g. ``ds.data_vars`` of
        xarray, or ``{name: attrs}``), a CF ``standard_name`` match is used as
        a last resort when no name matches -- only for standard names that
        identify one known variable (not ``air_temperature``, which is both
        ``ta`` and ``tas``).
    spec : VariableSpec
        The wanted variable.

    Returns
    -------
    str
        The data-set variable name.

    Raises
    ------
    InputError
        When no name matches; the message lists the names that are present.
    """
    names = list(dataset_vars)
    for cand in spec.all_names:
        if cand in names:
            return cand
    lower = {n.lower(): n for n in names}
    for cand in spec.all_names:
        if cand.lower() in lower:
            return lower[cand.lower()]
    # A CF standard_name shared by several known variables (air_temperature: ta and
    # tas; eastward_wind: ua and uas) must not be used: it would read 2 m
    # temperature as 850 hPa temperature.
    if isinstance(dataset_vars, Mapping) and spec.standard_name not in _AMBIGUOUS_STANDARD_NAMES:
        hits = []
        for n in names:
            attrs = getattr(dataset_vars[n], "attrs", dataset_vars[n])
            if isinstance(attrs, Mapping) and attrs.get("standard_name") == spec.standard_name:
                hits.append(n)
        if len(hits) == 1:
            return hits[0]
    raise InputError(
        f"variable {spec.name} ({spec.standard_name}) not found: looked for "
        f"{list(spec.all_names)}; the data contain {sorted(names)}"
    )


# ---------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------


def _locations(
    idx: np.ndarray,
    shape: tuple[int, ...],
    coords: Mapping[str, Sequence[Any] | np.ndarray] | None,
    dims: Sequence[str] | None,
) -> list[str]:
    if dims is None or len(dims) != len(shape):
        # (..., lat, lon) convention: name the last two axes lat/lon, the first time.
        names = [f"dim{i}" for i in range(len(shape))]
        if len(shape) >= 2:
            names[-2], names[-1] = "lat", "lon"
        if len(shape) >= 3:
            names[0] = "time"
        dims = names
    out = []
    for row in idx:
        parts = []
        for d, i in zip(dims, row, strict=True):
            c = coords.get(d) if coords else None
            if c is not None and len(c) > i:
                v = c[int(i)]
                parts.append(f"{d}={v:g}" if isinstance(v, (float, np.floating)) else f"{d}={v}")
            else:
                parts.append(f"{d}[{int(i)}]")
        out.append("(" + ", ".join(parts) + ")")
    return out


def check_finite(
    name: str,
    array: npt.ArrayLike,
    *,
    coords: Mapping[str, Sequence[Any] | np.ndarray] | None = None,
    dims: Sequence[str] | None = None,
    max_report: int = 5,
) -> None:
    """Raise :class:`InputError` if ``array`` holds NaN or infinite values.

    Parameters
    ----------
    name : str
        Variable name for the message.
    array : array_like
        Data, ``(..., lat, lon)`` by default.
    coords : mapping, optional
        Coordinate values by dimension name (e.g. ``{"time": t, "lat": lat,
        "lon": lon}``) to report locations in coordinates instead of indices.
    dims : sequence of str, optional
        Dimension names of ``array``; default ``(time, ..., lat, lon)``.
    max_report : int
        How many locations to list.

    Raises
    ------
    InputError
        Naming the count of bad values and the first few locations.
    """
    x = np.asarray(array)
    if not np.issubdtype(x.dtype, np.number):
        raise InputError(f"{name}: expected numeric data, got dtype {x.dtype}")
    bad = ~np.isfinite(x)
    n_bad = int(bad.sum())
    if n_bad == 0:
        return
    first = np.argwhere(bad)[:max_report]
    locs = _locations(first, x.shape, coords, dims)
    n_nan = int(np.isnan(x).sum())
    raise InputError(
        f"{name}: {n_bad} non-finite value(s) of {x.size} ({n_nan} NaN, {n_bad - n_nan} Inf); "
        f"first at {', '.join(locs)}"
    )


# Likely unit mix-ups per canonical unit: (factor applied to data, description).
_UNIT_HINTS: dict[str, list[tuple[float, float, str]]] = {
    "Pa": [(100.0, 0.0, "hPa"), (1000.0, 0.0, "kPa")],
    "kg kg-1": [(1e-3, 0.0, "g kg-1")],
    "K": [(1.0, 273.15, "degC")],
    "m s-1": [(1.0 / 3.6, 0.0, "km h-1")],
    "mm day-1": [
        (86400.0, 0.0, "kg m-2 s-1"),
        (1000.0, 0.0, "m/day (or an accumulation in m)"),
        (24.0, 0.0, "mm/h"),
        (1000.0 * 24.0, 0.0, "m per hour (ERA5 hourly tp)"),
    ],
}


_MIN_PRECIP_SAMPLE = 1000
_MAX_TINY_PRECIP = 1e-3


def check_range(
    spec: VariableSpec,
    array: npt.ArrayLike,
    *,
    max_bad_fraction: float = 0.0,
) -> None:
    """Raise :class:`InputError` if values fall outside ``spec.valid_range``.

    Parameters
    ----------
    spec : VariableSpec
        Variable with its plausible range in canonical units.
    array : array_like
        Data in canonical units (NaN ignored, e.g. E-OBS sea points).
    max_bad_fraction : float
        Fraction of out-of-range values tolerated.

    Raises
    ------
    InputError
        Naming the variable, the observed range, the expected range and, when the
        data would fit after a common conversion, the probable unit mistake
        (e.g. "looks like hPa").
    """
    if spec.valid_range is None:
        return
    x = np.asarray(array, dtype=np.float64)
    finite = x[np.isfinite(x)]
    if finite.size == 0:
        return
    lo, hi = spec.valid_range
    out = (finite < lo) | (finite > hi)
    n_out = int(out.sum())
    if n_out <= max_bad_fraction * finite.size:
        if (
            normalise_units(spec.units) == "mm day-1"
            and finite.size >= _MIN_PRECIP_SAMPLE
            and 0.0 < finite.max() < _MAX_TINY_PRECIP
        ):
            # Everything in range but implausibly tiny: a rate in kg m-2 s-1 (~1e-5)
            # or an hourly amount in m (~1e-4) labelled as mm/day.
            raise InputError(
                f"{spec.name}: all {finite.size} values are below {_MAX_TINY_PRECIP:g} mm/day "
                f"(max {finite.max():.3g}); the values look like kg m-2 s-1 or an hourly "
                "accumulation in m rather than mm/day: set the units attribute or convert"
            )
        return
    msg = (
        f"{spec.name}: {n_out} of {finite.size} values outside the plausible range "
        f"[{lo:g}, {hi:g}] {spec.units} (data range {finite.min():.6g} .. {finite.max():.6g}, "
        f"median {np.median(finite):.6g})"
    )
    for scale, offset, label in _UNIT_HINTS.get(normalise_units(spec.units), []):
        conv = finite * scale + offset
        if np.mean((conv >= lo) & (conv <= hi)) > 0.99:
            msg += (
                f"; the values look like {label} rather than {spec.units}: set the units "
                f"attribute to {label!r} or convert the data"
            )
            break
    raise InputError(msg)
