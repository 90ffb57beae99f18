"""Quantile delta mapping (Cannon et al. 2015) of ESM inputs onto the reanalysis.

The generator is trained on reanalysis predictors only. To drive it with an ESM,
each predictor is mapped, per grid cell and season group, so that its
historical distribution matches the reanalysis while the ESM's own change of
every quantile is kept (trend preservation). For a value ``x`` of a projection
period whose non-exceedance probability in the projection period is ``tau``::

    additive:        x' = x + (F_ref^-1(tau) - F_hist^-1(tau))
    multiplicative:  x' = x * (F_ref^-1(tau) / F_hist^-1(tau))

``F_ref`` is the reference (reanalysis) CDF and ``F_hist`` the ESM's CDF over the
same historical period, both on the bundle's coarse grid (regrid the ESM and the
reanalysis onto it first: :class:`precipdiff.grids.Regridder`). The correction
``F_ref^-1 / F_hist^-1`` (or the difference) is tabulated at ``n_quantiles``
equally spaced probabilities ``(i + 0.5) / n`` and interpolated linearly in
``tau`` (constant beyond the outer nodes), as xsdba's ``QuantileDeltaMapping``
does with ``interp="linear"``.

Multiplicative variables (humidity, precipitation) may have a trace threshold:
values below it are replaced by uniform random values in ``(0, trace)`` before
fitting and ranking (a seeded generator), and corrected values below it are set
to 0 (Cannon et al. 2015, Sect. 3).

Where ``tau`` comes from
------------------------
* **Offline** (:func:`apply_qdm`, ``projection="self"``): the empirical CDF of
  the series being corrected, per cell and group -- exactly Cannon's QDM (the
  series is the projection period).
* **Offline static** (``projection="static"``): ``tau = F_hist(x)``, i.e. plain
  quantile mapping; it does not preserve trends.
* **Online** (:class:`OnlineQDM`): the ESM's future is not known when a window
  is corrected. The projection CDF is a trailing estimate from the run's own
  window means: it starts as the ESM-historical CDF stored at fit time (so the
  first years equal static quantile mapping, which is exact when the run's
  climate equals its historical one) and every group's quantile function is
  relaxed towards the quantile function of each newly completed group period
  (a month for ``group="month"``) with weight ``n / (trailing_years * n_year)``
  (``n`` samples in that period, ``n_year`` expected per group and year): an
  exponential moving average of quantile functions whose memory is
  ``trailing_years``. See ``docs/qdm.md`` for the reasoning. The state is a
  few arrays (``state_dict()``) that the server's restart files store.
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
from numpy.typing import ArrayLike, NDArray

from precipdiff.calendars import TimeFields, time_fields
from precipdiff.errors import BundleError, ConfigError, InputError

__all__ = [
    "QDM_FILE",
    "OnlineQDM",
    "QDMConfig",
    "QDMTables",
    "VariableTable",
    "apply_qdm",
    "default_kind",
    "fit_qdm",
    "group_index",
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


def _fit_masks(tf: TimeFields, config: QDMConfig) -> list[NDArray[np.bool_]]:
    """Boolean sample mask per group for fitting (moving windows overlap)."""
    if config.group != "window":
        g = group_index(tf, config)
        return [g == k for k in range(config.n_groups)]
    n = int(config.n_windows)
    half = 0.5 * int(config.window_days) / 365.0
    masks = []
    for k in range(n):
        d = np.abs(tf.year_fraction - k / n)
        d = np.minimum(d, 1.0 - d)
        masks.append(d <= half + 1e-12)
    return masks


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
            big = np.nanmax(np.where(np.isfinite(f), f, np.nan), axis=1, keepdims=True)
            f = np.where(bad, np.broadcast_to(np.nan_to_num(big, nan=1.0), f.shape), f)
        return f


def _as_series(name: str, label: str, x: ArrayLike) -> NDArray[np.float64]:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 2:
        a = a[:, None, :]
    if a.ndim == 1:
        a = a[:, None, None]
    if a.ndim != 3:
        raise InputError(
            f"{label} series of {name!r} must be (time, lat, lon), got shape {a.shape}"
        )
    if np.isinf(a).any():
        raise InputError(f"{label} series of {name!r} contains {int(np.isinf(a).sum())} inf values")
    return a


def _jitter(a: NDArray[np.float64], trace: float, rng: np.random.Generator) -> NDArray[np.float64]:
    """Replace values below ``trace`` by uniform values in (0, trace) (Cannon 2015)."""
    if trace <= 0:
        return a
    low = np.isfinite(a) & (a < trace)
    out = a.copy()
    out[low] = rng.uniform(trace * 1e-3, trace, size=int(low.sum()))
    return out


def _group_quantiles(
    a: NDArray[np.float64], mask: NDArray[np.bool_], nodes: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    sub = a[mask]
    count = np.sum(np.isfinite(sub), axis=0)
    if sub.shape[0] == 0:
        return np.full((nodes.size, *a.shape[1:]), np.nan), count
    if np.isnan(sub).any():
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            q = np.nanquantile(sub, nodes, axis=0)
    else:
        q = np.quantile(sub, nodes, axis=0)
    return np.asarray(q), count


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

        # Only season groups with data are stored (e.g. 3 of 12 months for DJF data).
        stored = self.stored_groups()
        arrays: dict[str, NDArray[np.float32]] = {}
        for n, t in self.variables.items():
            arrays[f"{n}/ref_q"] = np.ascontiguousarray(t.ref_q[stored], dtype=np.float32)
            arrays[f"{n}/hist_q"] = np.ascontiguousarray(t.hist_q[stored], dtype=np.float32)
        meta = self._meta()
        meta["stored_groups"] = [int(g) for g in stored]
        save_file(arrays, str(path), metadata={"precipdiff": json.dumps(meta)})
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


def fit_qdm(
    ref: Mapping[str, ArrayLike],
    hist: Mapping[str, ArrayLike],
    ref_times: Any,
    hist_times: Any,
    config: QDMConfig | None = None,
    *,
    ref_calendar: str | None = None,
    hist_calendar: str | None = None,
    units: Mapping[str, str] | None = None,
) -> QDMTables:
    """Fit QDM tables per grid cell and season group.

    Parameters
    ----------
    ref
        ``{variable: (time, lat, lon)}`` reference (reanalysis) series on the
        bundle's coarse grid.
    hist
        ``{variable: (time, lat, lon)}`` ESM historical series on the same grid
        and in the same units (lengths and calendars may differ from ``ref``).
    ref_times, hist_times
        Time coordinates (see :func:`precipdiff.calendars.time_fields`).
    config
        Settings; defaults to :class:`QDMConfig()`.
    ref_calendar, hist_calendar
        Calendars when the times do not carry one.
    units
        ``{variable: units}`` recorded in the tables.

    Returns
    -------
    QDMTables
        The tables.

    Raises
    ------
    InputError
        On missing variables, mismatched grids or time lengths, too few valid
        samples, negative values of multiplicative variables without a trace, or
        a likely unit mismatch between ``ref`` and ``hist``.
    """
    cfg = config or QDMConfig()
    missing = sorted(set(ref) ^ set(hist))
    if missing:
        raise InputError(f"variables {missing} are in only one of the reference and ESM sets")
    if not ref:
        raise InputError("no variables given to fit QDM")
    tf_r = time_fields(ref_times, ref_calendar)
    tf_h = time_fields(hist_times, hist_calendar)
    masks_r = _fit_masks(tf_r, cfg)
    masks_h = _fit_masks(tf_h, cfg)
    nodes = cfg.nodes
    rng = np.random.default_rng(cfg.seed)
    tables: dict[str, VariableTable] = {}
    for name in ref:
        r = _as_series(name, "reference", ref[name])
        h = _as_series(name, "ESM historical", hist[name])
        if r.shape[1:] != h.shape[1:]:
            raise InputError(
                f"{name!r}: reference grid {r.shape[1:]} differs from ESM grid {h.shape[1:]}; "
                "regrid both onto the bundle's coarse grid before fitting QDM"
            )
        for label, a, tf in (("reference", r, tf_r), ("ESM historical", h, tf_h)):
            if a.shape[0] != tf.month.size:
                raise InputError(
                    f"{label} series of {name!r} has {a.shape[0]} time steps but "
                    f"{tf.month.size} times were given"
                )
        mr, mh = float(np.nanmedian(np.abs(r))), float(np.nanmedian(np.abs(h)))
        if mr > 0 and mh > 0 and not 0.1 < mr / mh < 10.0:
            want = (units or {}).get(name, "the reference's units")
            raise InputError(
                f"{name!r}: the reference median |value| {mr:.3g} and the ESM's {mh:.3g} differ "
                f"by more than a factor 10 -- likely a unit mismatch (convert the ESM field to "
                f"{want} first)"
            )
        kind = cfg.kind_of(name)
        trace = float(cfg.trace.get(name, 0.0))
        if kind == "multiplicative":
            for label, a in (("reference", r), ("ESM historical", h)):
                if trace == 0 and np.nanmin(a) < 0:
                    raise InputError(
                        f"{label} series of {name!r} has negative values (min {np.nanmin(a):.3g}) "
                        "but is corrected multiplicatively: set a trace threshold for it "
                        "(values below become dry) or use the additive kind"
                    )
            r = _jitter(r, trace, rng)
            h = _jitter(h, trace, rng)
        ref_q = np.full((cfg.n_groups, nodes.size, *r.shape[1:]), np.nan)
        hist_q = np.full_like(ref_q, np.nan)
        for g in range(cfg.n_groups):
            qr, nr = _group_quantiles(r, masks_r[g], nodes)
            qh, nh = _group_quantiles(h, masks_h[g], nodes)
            if nr.max(initial=0) == 0 and nh.max(initial=0) == 0:
                continue  # a season group absent from both (e.g. DJF-only data): no table
            masked = (nr == 0) & (nh == 0)  # e.g. a sea cell of a land-only product
            few = ~masked & ((nr < cfg.min_samples) | (nh < cfg.min_samples))
            if few.any():
                i, j = np.argwhere(few)[0]
                raise InputError(
                    f"QDM fit of {name!r}, {_group_label(cfg, g)}: cell (lat {i}, lon {j}) has "
                    f"{int(nr[i, j])} reference and {int(nh[i, j])} ESM values, fewer than "
                    f"min_samples={cfg.min_samples}"
                )
            ref_q[g], hist_q[g] = qr, qh
        tables[name] = VariableTable(
            kind,
            trace,
            ref_q.astype(np.float32),
            hist_q.astype(np.float32),
            (units or {}).get(name, ""),
        )
    prov = {
        "ref_period": [_date_str(tf_r, 0), _date_str(tf_r, -1)],
        "hist_period": [_date_str(tf_h, 0), _date_str(tf_h, -1)],
        "ref_calendar": tf_r.calendar,
        "hist_calendar": tf_h.calendar,
    }
    return QDMTables(cfg, tables, prov)


def _group_label(cfg: QDMConfig, g: int) -> str:
    if cfg.group == "month":
        return f"month {g + 1}"
    if cfg.group == "window":
        return f"moving window {g} of {cfg.n_windows}"
    return "the single group"


def _date_str(tf: TimeFields, i: int) -> str:
    return f"{int(tf.year[i]):04d}-{int(tf.month[i]):02d} (day {int(tf.dayofyear[i])})"


def _tau_from_quantiles(
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


def _interp_nodes(
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


def _ranks_pct(x: NDArray[np.float64]) -> NDArray[np.float64]:
    """Empirical non-exceedance probability per column, ``(rank - 1) / (n - 1)``.

    Ties get their average rank; NaN stays NaN. This is xsdba's ``rank(pct=True)``.
    """
    from scipy.stats import rankdata

    r = rankdata(x, axis=0, method="average", nan_policy="omit")
    n = np.sum(np.isfinite(x), axis=0, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        tau = np.where(n > 1, (r - 1.0) / (n - 1.0), 0.5)
    return np.where(np.isfinite(x), tau, np.nan)


def apply_qdm(
    tables: QDMTables,
    name: str,
    x: ArrayLike,
    times: Any,
    *,
    calendar: str | None = None,
    projection: Literal["self", "static"] = "self",
) -> NDArray[np.float32]:
    """Correct one variable's series with fitted tables.

    Parameters
    ----------
    tables
        Fitted tables.
    name
        Variable name (a key of ``tables.variables``).
    x
        ``(time, lat, lon)`` ESM series on the tables' grid, in their units.
    times
        Time coordinate of ``x``.
    calendar
        Calendar when ``times`` carries none.
    projection
        ``"self"``: ``tau`` from the empirical CDF of ``x`` itself per cell and
        group (QDM proper; pass one projection period, e.g. a 20-30-year
        slice); ``"static"``: ``tau = F_hist(x)`` (quantile mapping).

    Returns
    -------
    numpy.ndarray
        Corrected series, float32, same shape as ``x``; NaN stays NaN.
    """
    if name not in tables.variables:
        raise InputError(
            f"no QDM table for variable {name!r}; tables have {list(tables.variables)}"
        )
    if projection not in ("self", "static"):
        raise ConfigError(f"projection must be 'self' or 'static', got {projection!r}")
    t = tables.variables[name]
    cfg = tables.config
    a = _as_series(name, "ESM", x)
    if a.shape[1:] != tables.grid_shape:
        raise InputError(
            f"{name!r} is on a {a.shape[1:]} grid but the QDM tables are {tables.grid_shape}; "
            "regrid it onto the bundle's coarse grid first"
        )
    tf = time_fields(times, calendar)
    if tf.month.size != a.shape[0]:
        raise InputError(f"{name!r} has {a.shape[0]} time steps but {tf.month.size} times")
    if t.kind == "multiplicative" and t.trace == 0 and np.nanmin(a) < 0:
        raise InputError(
            f"{name!r} has negative values (min {np.nanmin(a):.3g}) but its QDM tables are "
            "multiplicative without a trace threshold"
        )
    rng = np.random.default_rng(cfg.seed + 1)
    if t.kind == "multiplicative":
        a = _jitter(a, t.trace, rng)
    groups = group_index(tf, cfg)
    factors = t.factors()
    nodes = cfg.nodes
    ny, nx = tables.grid_shape
    flat = a.reshape(a.shape[0], ny * nx)
    out = np.full_like(flat, np.nan)
    for g in np.unique(groups):
        sel = groups == g
        fg = factors[g].reshape(nodes.size, ny * nx)
        if np.isnan(fg).all() and np.isfinite(flat[sel]).any():
            raise InputError(
                f"{name!r}: the QDM tables have no data for {_group_label(cfg, int(g))}; "
                "the fit period did not cover this part of the year"
            )
        xs = flat[sel]
        if projection == "self":
            tau = _ranks_pct(xs)
        else:
            tau = _tau_from_quantiles(xs, t.hist_q[g].reshape(nodes.size, -1), nodes)
        af = _interp_nodes(tau, nodes, fg)
        out[sel] = xs * af if t.kind == "multiplicative" else xs + af
    if t.kind == "multiplicative" and t.trace > 0:
        out = np.where(out < t.trace, 0.0, out)
    return out.reshape(a.shape).astype(np.float32)


class OnlineQDM:
    """QDM applied window by window inside a running ESM, with a trailing projection CDF.

    Parameters
    ----------
    tables
        Fitted tables (on the bundle's coarse grid).
    trailing_years
        Memory of the projection CDF in years (``mode="trailing"``).
    samples_per_day
        Averaging windows per day (1 for daily windows); sets the expected number
        of samples per group and year.
    mode
        ``"trailing"`` (trend-preserving, stateful) or ``"static"`` (quantile
        mapping against the ESM-historical CDF; no state).
    buffer_days
        Capacity of the sample buffer in days; a group period longer than this
        is summarised in several parts.
    calendar
        The ESM's calendar, for times that carry none.

    Notes
    -----
    Per window: ``tau`` is read off the current projection quantile function of
    the window's group, the correction factor interpolated at ``tau`` is
    applied, and the raw (uncorrected) value is appended to a buffer. When the
    group changes (or the buffer is full) the buffer's quantile function
    relaxes the group's projection quantiles with weight
    ``n / (trailing_years * n_year)``.
    """

    def __init__(
        self,
        tables: QDMTables,
        trailing_years: float = 20.0,
        samples_per_day: float = 1.0,
        mode: Literal["trailing", "static"] = "trailing",
        buffer_days: int = 32,
        calendar: str | None = None,
    ) -> None:
        if mode not in ("trailing", "static"):
            raise ConfigError(f"online QDM mode must be 'trailing' or 'static', got {mode!r}")
        if not trailing_years > 0:
            raise ConfigError(f"online QDM trailing_years must be > 0, got {trailing_years}")
        if not samples_per_day > 0:
            raise ConfigError(f"online QDM samples_per_day must be > 0, got {samples_per_day}")
        self.tables = tables
        self.mode = mode
        self.trailing_years = float(trailing_years)
        self.samples_per_day = float(samples_per_day)
        self.calendar = calendar
        cfg = tables.config
        self.nodes = cfg.nodes
        ny, nx = tables.grid_shape
        self._ncell = ny * nx
        q = self.nodes.size
        # Precomputed at load: factor tables flattened to (group, Q, cells).
        self._factors = {
            n: t.factors().astype(np.float32).reshape(cfg.n_groups, q, -1)
            for n, t in tables.variables.items()
        }
        days = {"month": 365.25 / 12, "window": 365.25 / cfg.n_groups, "none": 365.25}[cfg.group]
        self._n_year = days * self.samples_per_day
        self._capacity = max(1, int(np.ceil(buffer_days * self.samples_per_day)))
        self._hist_q = {
            n: t.hist_q.reshape(cfg.n_groups, q, -1) for n, t in tables.variables.items()
        }
        self.proj_q = {n: h.astype(np.float32, copy=True) for n, h in self._hist_q.items()}
        self.buffer = {
            n: np.zeros((self._capacity, self._ncell), dtype=np.float32) for n in tables.variables
        }
        self.buffer_count = 0
        self.buffer_group = -1

    def _group(self, when: Any) -> int:
        tf = time_fields([when] if not isinstance(when, np.ndarray) else when, self.calendar)
        return int(group_index(tf, self.tables.config)[0])

    def apply(
        self, fields: Mapping[str, NDArray[np.floating]], when: Any
    ) -> dict[str, NDArray[np.float32]]:
        """Correct one window's fields and update the trailing projection CDF.

        Parameters
        ----------
        fields
            ``{variable: (lat, lon)}`` window means on the tables' grid;
            variables without a table pass through unchanged.
        when
            Date of the window (datetime, cftime or ``datetime64``), e.g. from
            :func:`precipdiff.calendars.model_time_to_date`.

        Returns
        -------
        dict
            Corrected fields (float32).

        Raises
        ------
        InputError
            On a wrong grid or non-finite values (named).
        """
        g = self._group(when)
        out: dict[str, NDArray[np.float32]] = {}
        shape = self.tables.grid_shape
        flat_in: dict[str, NDArray[np.float64]] = {}
        for name, arr in fields.items():
            a = np.asarray(arr)
            if name not in self._factors:
                out[name] = a.astype(np.float32, copy=False)
                continue
            if a.shape != shape:
                raise InputError(f"QDM input {name!r} has shape {a.shape}, expected {shape}")
            if not np.isfinite(a).all():
                raise InputError(
                    f"QDM input {name!r} has {int((~np.isfinite(a)).sum())} non-finite values"
                )
            t = self.tables.variables[name]
            x = a.reshape(1, -1).astype(np.float64)
            fg = self._factors[name][g]
            xp = self.proj_q[name][g] if self.mode == "trailing" else self._hist_q[name][g]
            tau = _tau_from_quantiles(x, xp, self.nodes)
            af = _interp_nodes(tau, self.nodes, fg)
            y = x * af if t.kind == "multiplicative" else x + af
            if t.kind == "multiplicative" and t.trace > 0:
                y = np.where(y < t.trace, 0.0, y)
            out[name] = y.reshape(shape).astype(np.float32)
            flat_in[name] = x[0]
        if self.mode == "trailing" and flat_in:
            if self.buffer_group not in (-1, g) or self.buffer_count >= self._capacity:
                self.flush()
            self.buffer_group = g
            for name, v in flat_in.items():
                self.buffer[name][self.buffer_count] = v
            self.buffer_count += 1
        return out

    def flush(self) -> None:
        """Fold the buffered samples into their group's projection quantiles."""
        n = self.buffer_count
        if n == 0 or self.buffer_group < 0:
            self.buffer_count = 0
            return
        g = self.buffer_group
        w = min(1.0, n / (self.trailing_years * self._n_year))
        for name, buf in self.buffer.items():
            qs = np.quantile(buf[:n].astype(np.float64), self.nodes, axis=0)
            mixed = (1.0 - w) * self.proj_q[name][g].astype(np.float64) + w * qs
            self.proj_q[name][g] = mixed.astype(np.float32)
        self.buffer_count = 0
        self.buffer_group = -1

    def state_dict(self) -> dict[str, NDArray[Any]]:
        """Return the running state as arrays (for the server's restart files).

        Returns
        -------
        dict
            ``"<var>/proj_q"`` (group, Q, cells) float32, ``"<var>/buffer"``
            (capacity, cells) float32, ``"buffer_count"`` and ``"buffer_group"``
            (int64 scalars as 1-element arrays).
        """
        st: dict[str, NDArray[Any]] = {}
        for name in self.proj_q:
            st[f"{name}/proj_q"] = self.proj_q[name].copy()
            st[f"{name}/buffer"] = self.buffer[name].copy()
        st["buffer_count"] = np.array([self.buffer_count], dtype=np.int64)
        st["buffer_group"] = np.array([self.buffer_group], dtype=np.int64)
        return st

    def load_state_dict(self, state: Mapping[str, ArrayLike]) -> None:
        """Restore a state from :meth:`state_dict`.

        Parameters
        ----------
        state
            The arrays.

        Raises
        ------
        InputError
            When a key is missing or an array has the wrong shape (named).
        """
        expected = set(self.state_dict())
        missing = sorted(expected - set(state))
        extra = sorted(set(state) - expected)
        if missing or extra:
            raise InputError(f"online QDM state: missing keys {missing}, unexpected keys {extra}")
        for name in self.proj_q:
            for key, ref in (
                (f"{name}/proj_q", self.proj_q[name]),
                (f"{name}/buffer", self.buffer[name]),
            ):
                arr = np.asarray(state[key])
                if arr.shape != ref.shape:
                    raise InputError(
                        f"online QDM state {key!r} has shape {arr.shape}, expected {ref.shape}"
                    )
        for name in self.proj_q:
            self.proj_q[name] = np.array(state[f"{name}/proj_q"], dtype=np.float32)
            self.buffer[name] = np.array(state[f"{name}/buffer"], dtype=np.float32)
        self.buffer_count = int(np.asarray(state["buffer_count"]).ravel()[0])
        self.buffer_group = int(np.asarray(state["buffer_group"]).ravel()[0])
        if not 0 <= self.buffer_count <= self._capacity:
            raise InputError(f"online QDM state buffer_count {self.buffer_count} is out of range")
