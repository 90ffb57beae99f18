"""QDM tables: fit settings, per-variable quantile tables, their file format and lookup.

What a fit produces and what the runtime reads (see :mod:`precipdiff.qdm` for the
method). Fitting lives offline in :mod:`precipdiff.offline.qdm_fit`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from precipdiff.calendars import TimeFields
from precipdiff.errors import BundleError, ConfigError, InputError

__all__ = [
    "FORMAT",
    "MULTIPLICATIVE_NAMES",
    "QDM_FILE",
    "Kind",
    "QDMConfig",
    "QDMTables",
    "VariableTable",
    "check_calendar",
    "check_not_negative",
    "default_kind",
    "group_index",
    "group_label",
    "interp_nodes",
    "tau_from_quantiles",
]

#: File name of the tables inside a bundle directory.
QDM_FILE = "qdm_tables.safetensors"
FORMAT = "precipdiff-qdm-1"

Kind = Literal["additive", "multiplicative"]
_KINDS = ("additive", "multiplicative")
_GROUPS = ("month", "window", "none")

#: Variables that are positive and corrected multiplicatively by default.
MULTIPLICATIVE_NAMES = frozenset(
    {"pr", "tp", "precip", "precipitation", "hus", "q", "huss", "hus850", "rr", "prw", "tcw"}
)


def default_kind(name: str) -> Kind:
    """Return the default QDM kind for a variable name.

    Parameters
    ----------
    name
        Variable name (ERA5, CMIP or demo-data names).

    Returns
    -------
    str
        ``"multiplicative"`` for humidity and precipitation, else ``"additive"``.
    """
    return "multiplicative" if name.lower() in MULTIPLICATIVE_NAMES else "additive"


@dataclass
class QDMConfig:
    """Settings of a quantile-delta-mapping fit.

    Parameters
    ----------
    n_quantiles
        Number of quantile nodes ``(i + 0.5) / n``, ``i = 0..n-1`` (>= 3).
    group
        ``"month"`` (one table per calendar month), ``"window"`` (``n_windows``
        moving windows of ``window_days`` days centred at equal fractions of the
        year; each time step uses the nearest centre) or ``"none"``.
    window_days
        Width of a moving window (``group="window"``) in days of a 365-day year;
        scaled to the calendar's year length.
    n_windows
        Number of moving-window centres per year (``group="window"``).
    kinds
        ``{variable: "additive" | "multiplicative"}``; variables not listed use
        :func:`default_kind`.
    trace
        ``{variable: threshold}`` in the variable's units for multiplicative
        variables (values below are treated as zero/dry); default 0.
    min_samples
        Minimum number of finite values per cell and group in each series.
    seed
        Seed of the generator for the sub-trace jitter.
    """

    n_quantiles: int = 50
    group: str = "month"
    window_days: int = 31
    n_windows: int = 24
    kinds: dict[str, str] = field(default_factory=dict)
    trace: dict[str, float] = field(default_factory=dict)
    min_samples: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if int(self.n_quantiles) < 3:
            raise ConfigError(f"QDMConfig.n_quantiles must be >= 3, got {self.n_quantiles}")
        if self.group not in _GROUPS:
            raise ConfigError(f"QDMConfig.group must be one of {_GROUPS}, got {self.group!r}")
        if not 1 <= int(self.window_days) <= 365:
            raise ConfigError(f"QDMConfig.window_days must be in 1..365, got {self.window_days}")
        if not 1 <= int(self.n_windows) <= 366:
            raise ConfigError(f"QDMConfig.n_windows must be in 1..366, got {self.n_windows}")
        for name, kind in self.kinds.items():
            if kind not in _KINDS:
                raise ConfigError(f"QDM kind of {name!r} must be one of {_KINDS}, got {kind!r}")
        for name, tr in self.trace.items():
            if not (np.isfinite(tr) and tr >= 0):
                raise ConfigError(f"QDM trace of {name!r} must be finite and >= 0, got {tr}")
            if self.kind_of(name) != "multiplicative" and tr > 0:
                raise ConfigError(
                    f"QDM trace threshold given for {name!r}, which is corrected additively; "
                    "a trace only applies to multiplicative variables"
                )
        if int(self.min_samples) < 2:
            raise ConfigError(f"QDMConfig.min_samples must be >= 2, got {self.min_samples}")

    def kind_of(self, name: str) -> Kind:
        """Return the kind used for ``name``.

        Parameters
        ----------
        name
            Variable name.

        Returns
        -------
        str
            ``"additive"`` or ``"multiplicative"``.
        """
        k = self.kinds.get(name)
        return default_kind(name) if k is None else k  # type: ignore[return-value]

    @property
    def n_groups(self) -> int:
        """Number of season groups (12, ``n_windows`` or 1)."""
        return {"month": 12, "window": int(self.n_windows), "none": 1}[self.group]

    @property
    def nodes(self) -> NDArray[np.float64]:
        """Quantile probabilities ``(i + 0.5) / n_quantiles``."""
        n = int(self.n_quantiles)
        return (np.arange(n, dtype=np.float64) + 0.5) / n

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QDMConfig:
        """Build from a dict, rejecting unknown keys.

        Parameters
        ----------
        data
            Keys of :class:`QDMConfig`.

        Returns
        -------
        QDMConfig
            The validated config.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown QDM config key(s) {unknown}; expected {sorted(known)}")
        return cls(**dict(data))


def group_index(tf: TimeFields, config: QDMConfig) -> NDArray[np.int64]:
    """Season group (0-based) each time step is corrected with.

    Parameters
    ----------
    tf
        Calendar fields of the times (:func:`precipdiff.calendars.time_fields`).
    config
        The QDM settings.

    Returns
    -------
    numpy.ndarray
        Group index per time step.
    """
    if config.group == "month":
        return tf.month - 1
    if config.group == "none":
        return np.zeros_like(tf.month)
    n = int(config.n_windows)
    return np.floor(tf.year_fraction * n + 0.5).astype(np.int64) % n


@dataclass
class VariableTable:
    """Quantile tables of one variable.

    Parameters
    ----------
    kind
        ``"additive"`` or ``"multiplicative"``.
    trace
        Trace threshold (multiplicative only).
    ref_q, hist_q
        Quantiles ``(group, quantile, lat, lon)`` of the reference and of the
        ESM historical series, float32.
    units
        Units of the variable (informative, checked by callers).
    """

    kind: Kind
    trace: float
    ref_q: NDArray[np.float32]
    hist_q: NDArray[np.float32]
    units: str = ""

    def factors(self) -> NDArray[np.float64]:
        """Correction at the nodes: ``ref_q / hist_q`` or ``ref_q - hist_q``.

        Returns
        -------
        numpy.ndarray
            ``(group, quantile, lat, lon)``. For multiplicative variables a
            node where both quantiles are 0 (dry) gets factor 1, and ``r / 0``
            the largest finite factor of that cell and group.
        """
        r = self.ref_q.astype(np.float64)
        h = self.hist_q.astype(np.float64)
        if self.kind == "additive":
            return r - h
        with np.errstate(divide="ignore", invalid="ignore"):
            f = r / h
        f = np.where((h <= 0) & (r <= 0), 1.0, f)
        bad = ~np.isfinite(f) & np.isfinite(r)
        if bad.any():
            # largest finite factor per cell and group; 1 where there is none (no
            # all-NaN RuntimeWarning from nanmax reaching `qdm apply` users)
            big = np.max(np.where(np.isfinite(f), f, -np.inf), axis=1, keepdims=True)
            big = np.where(np.isfinite(big), big, 1.0)
            f = np.where(bad, np.broadcast_to(big, f.shape), f)
        return f


@dataclass
class QDMTables:
    """Fitted QDM tables for one or more variables on one grid.

    Parameters
    ----------
    config
        The fit settings.
    variables
        ``{name: VariableTable}``.
    provenance
        Free-form description of the fit (periods, sources, calendar).
    """

    config: QDMConfig
    variables: dict[str, VariableTable]
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        shapes = {n: t.ref_q.shape for n, t in self.variables.items()}
        want = (self.config.n_groups, int(self.config.n_quantiles))
        for n, t in self.variables.items():
            if t.ref_q.shape != t.hist_q.shape or t.ref_q.shape[:2] != want:
                raise BundleError(
                    f"QDM table of {n!r} has shapes ref {t.ref_q.shape} / hist {t.hist_q.shape}; "
                    f"expected ({want[0]} groups, {want[1]} quantiles, lat, lon)"
                )
        if len({s[2:] for s in shapes.values()}) > 1:
            raise BundleError(f"QDM tables are on different grids: {shapes}")

    @property
    def grid_shape(self) -> tuple[int, int]:
        """``(nlat, nlon)`` of the tables."""
        first = next(iter(self.variables.values()))
        return (int(first.ref_q.shape[2]), int(first.ref_q.shape[3]))

    # ------------------------------------------------------------ serialisation
    def save(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        """Write the tables to a safetensors file; return the JSON description.

        Parameters
        ----------
        path
            Destination ``.safetensors`` file.

        Returns
        -------
        dict
            The manifest entry (without file name/hash); see :meth:`to_manifest`.
        """
        from safetensors.numpy import save_file

        from precipdiff.io.atomic import publish_permissions

        # Only season groups with data are stored (e.g. 3 of 12 months for DJF data).
        stored = self.stored_groups()
        arrays: dict[str, NDArray[np.float32]] = {}
        for n, t in self.variables.items():
            arrays[f"{n}/ref_q"] = np.ascontiguousarray(t.ref_q[stored], dtype=np.float32)
            arrays[f"{n}/hist_q"] = np.ascontiguousarray(t.hist_q[stored], dtype=np.float32)
        meta = self._meta()
        meta["stored_groups"] = [int(g) for g in stored]
        save_file(arrays, str(path), metadata={"precipdiff": json.dumps(meta)})
        publish_permissions(path)  # safetensors writes 0600 whatever the umask
        return meta

    def stored_groups(self) -> list[int]:
        """Season groups that hold data for at least one variable.

        Returns
        -------
        list of int
            Group indices in ascending order.
        """
        have = np.zeros(self.config.n_groups, dtype=bool)
        for t in self.variables.values():
            have |= np.isfinite(t.ref_q).reshape(t.ref_q.shape[0], -1).any(axis=1)
        return [int(g) for g in np.flatnonzero(have)]

    def _meta(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "method": "qdm",
            "config": self.config.to_dict(),
            "variables": {
                n: {"kind": t.kind, "trace": float(t.trace), "units": t.units}
                for n, t in self.variables.items()
            },
            "grid_shape": list(self.grid_shape),
            "provenance": self.provenance,
        }

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> QDMTables:
        """Read tables written by :meth:`save`.

        Parameters
        ----------
        path
            A ``.safetensors`` file.

        Returns
        -------
        QDMTables
            The tables.
        """
        from safetensors import SafetensorError, safe_open

        p = Path(path)
        if not p.is_file():
            raise BundleError(f"QDM table file {p} does not exist")
        try:
            with safe_open(str(p), framework="numpy") as f:
                meta_s = (f.metadata() or {}).get("precipdiff")
                arrays = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError) as exc:
            raise BundleError(f"cannot read QDM tables {p}: {exc}") from exc
        if not meta_s:
            raise BundleError(f"{p} has no precipdiff QDM metadata")
        meta = json.loads(meta_s)
        if meta.get("format") != FORMAT:
            raise BundleError(f"{p} has format {meta.get('format')!r}, expected {FORMAT!r}")
        config = QDMConfig.from_dict(meta["config"])
        variables = {}
        for n, v in meta["variables"].items():
            try:
                ref_q, hist_q = arrays[f"{n}/ref_q"], arrays[f"{n}/hist_q"]
            except KeyError as exc:
                raise BundleError(f"{p} lacks the tables of variable {n!r}") from exc
            groups = list(meta.get("stored_groups", range(config.n_groups)))
            if ref_q.shape != hist_q.shape or ref_q.shape[0] != len(groups):
                raise BundleError(
                    f"{p}: tables of {n!r} have shapes {ref_q.shape}/{hist_q.shape} but "
                    f"{len(groups)} stored groups are listed"
                )
            full_r = np.full((config.n_groups, *ref_q.shape[1:]), np.nan, dtype=np.float32)
            full_h = full_r.copy()
            full_r[groups], full_h[groups] = ref_q, hist_q
            variables[n] = VariableTable(v["kind"], float(v["trace"]), full_r, full_h, v["units"])
        return cls(config, variables, dict(meta.get("provenance", {})))

    def to_manifest(
        self, bundle_dir: str | os.PathLike[str], file: str = QDM_FILE
    ) -> dict[str, Any]:
        """Write the tables into a bundle directory; return the ``bias_correction`` entry.

        The quantile tables go to a float32 safetensors file; the manifest entry
        is small JSON (settings, variables, file name and sha256).

        Parameters
        ----------
        bundle_dir
            The bundle directory.
        file
            File name inside the bundle.

        Returns
        -------
        dict
            The value for ``Manifest.bias_correction``.
        """
        path = Path(bundle_dir) / file
        meta = self.save(path)
        meta["file"] = file
        meta["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        return meta

    @classmethod
    def from_manifest(
        cls, entry: Mapping[str, Any], bundle_dir: str | os.PathLike[str]
    ) -> QDMTables:
        """Load the tables a manifest's ``bias_correction`` entry refers to.

        Parameters
        ----------
        entry
            ``Manifest.bias_correction``.
        bundle_dir
            The bundle directory.

        Returns
        -------
        QDMTables
            The tables (after checking the file's sha256).
        """
        if entry.get("method") != "qdm" or "file" not in entry:
            raise BundleError(f"bias_correction entry is not a QDM table reference: {dict(entry)}")
        path = Path(bundle_dir) / str(entry["file"])
        if not path.is_file():
            raise BundleError(f"bundle {bundle_dir} is missing its QDM tables {entry['file']}")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if entry.get("sha256") and digest != entry["sha256"]:
            raise BundleError(f"{path} does not match the sha256 recorded in the manifest")
        return cls.load(path)

    def attach_to_bundle(self, bundle_dir: str | os.PathLike[str]) -> None:
        """Store the tables in a bundle and record them in its manifest.

        Parameters
        ----------
        bundle_dir
            An existing bundle directory (see :mod:`precipdiff.bundle`).
        """
        from precipdiff.bundle import read_manifest, write_manifest

        manifest = read_manifest(bundle_dir)
        if manifest.coarse_grid_obj().shape != self.grid_shape:
            raise BundleError(
                f"QDM tables are on a {self.grid_shape} grid but the bundle's coarse grid is "
                f"{manifest.coarse_grid_obj().shape}; fit QDM on the bundle's coarse grid"
            )
        manifest.bias_correction = self.to_manifest(bundle_dir)
        write_manifest(bundle_dir, manifest)


def _calendar_family(calendar: str) -> str:
    """Calendars that agree on every date after 1582 (standard = proleptic Gregorian then)."""
    from precipdiff.calendars import normalise_calendar

    c = normalise_calendar(calendar)
    return "standard" if c in ("standard", "proleptic_gregorian") else c


def check_calendar(tables: QDMTables, calendar: str, error: type[Exception] = InputError) -> None:
    """Refuse to apply tables fitted on an ESM in another calendar.

    The tables hold the ESM-historical distribution of one model; a series in
    another calendar comes from another model (or was decoded wrongly), so its
    season groups and its bias are not those the tables describe.

    Parameters
    ----------
    tables
        Fitted tables (``provenance["hist_calendar"]`` is the ESM's calendar; tables
        without it are not checked).
    calendar
        Calendar of the series to correct.
    error
        Exception class raised (``ConfigError`` for a namelist setting).

    Raises
    ------
    Exception
        ``error`` naming both calendars.
    """
    fitted = tables.provenance.get("hist_calendar")
    if not fitted or _calendar_family(str(fitted)) == _calendar_family(calendar):
        return
    raise error(
        f"the QDM tables were fitted on an ESM in the {str(fitted)!r} calendar but are "
        f"applied to a series in the {calendar!r} calendar; fit tables on this ESM's "
        "historical run (same model, same calendar)"
    )


def check_not_negative(name: str, label: str, a: NDArray[np.floating]) -> None:
    """Refuse negative values of a multiplicative variable (they would be zeroed silently).

    Parameters
    ----------
    name
        Variable name.
    label
        What the series is (for the message).
    a
        The values (NaN ignored).

    Raises
    ------
    InputError
        Naming the count and the minimum.
    """
    neg = np.asarray(a) < 0
    if neg.any():
        raise InputError(
            f"{label} {name!r} has {int(neg.sum())} negative value(s) (min "
            f"{float(np.nanmin(a)):.3g}) but is corrected multiplicatively: clip them "
            "(np.maximum(x, 0)) if they are numerical noise, or use the additive kind"
        )


def group_label(cfg: QDMConfig, g: int) -> str:
    """Name season group ``g`` for messages (``"month 3"``, ``"moving window 5 of 24"``).

    Parameters
    ----------
    cfg
        The QDM settings.
    g
        0-based group index.

    Returns
    -------
    str
        The label.
    """
    if cfg.group == "month":
        return f"month {g + 1}"
    if cfg.group == "window":
        return f"moving window {g} of {cfg.n_windows}"
    return "the single group"


def tau_from_quantiles(
    x: NDArray[np.floating], xp: NDArray[np.floating], nodes: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Non-exceedance probability of ``x`` from tabulated quantiles, per column.

    ``np.interp(x[:, c], xp[:, c], nodes)`` for every column ``c``: ``x`` is
    ``(n, C)``, ``xp`` ``(Q, C)`` ascending along axis 0; constant beyond the
    outer nodes. Vectorised over columns (``O(n * Q * C)`` compares, in chunks
    of time to bound memory); ``xp`` is read, never copied.
    """
    n, c = x.shape
    q = xp.shape[0]
    out = np.empty((n, c))
    cols = np.arange(c)
    step = max(1, int(4_000_000 // max(q * c, 1)))
    for s in range(0, n, step):
        xs = x[s : s + step]
        idx = np.count_nonzero(xp[None, :, :] <= xs[:, None, :], axis=1)  # 0..Q
        lo = np.clip(idx - 1, 0, q - 1)
        hi = np.clip(idx, 0, q - 1)
        x0 = xp[lo, cols].astype(np.float64)
        x1 = xp[hi, cols].astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            w = np.where(x1 > x0, (xs - x0) / (x1 - x0), 0.0)
        out[s : s + step] = nodes[lo] + w * (nodes[hi] - nodes[lo])
    return np.where(np.isnan(x), np.nan, out)


def interp_nodes(
    tau: NDArray[np.float64], nodes: NDArray[np.float64], fp: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Interpolate tables ``fp`` ``(Q, C)`` at probabilities ``tau`` ``(n, C)``.

    The nodes are equally spaced, so the bracketing index is computed directly
    (``O(n * C)``); constant beyond the outer nodes.
    """
    q = nodes.size
    dn = nodes[1] - nodes[0]
    pos = np.clip((tau - nodes[0]) / dn, 0.0, q - 1.0)
    pos = np.where(np.isfinite(pos), pos, 0.0)
    lo = np.minimum(np.floor(pos).astype(np.int64), q - 2)
    w = pos - lo
    cols = np.arange(fp.shape[1])[None, :]
    return np.asarray(fp[lo, cols] * (1.0 - w) + fp[lo + 1, cols] * w)
