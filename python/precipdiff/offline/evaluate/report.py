"""Evaluation of precipitation products: metric sets, netCDF output, Markdown report.

:func:`evaluate_ensemble` computes the standard set of scores of a generated
ensemble (and optional deterministic baselines) against observations;
:class:`Report` collects tables and figures and writes Markdown;
:func:`write_metrics_netcdf` stores scalars and arrays in one netCDF file.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from precipdiff import __version__
from precipdiff.errors import InputError
from precipdiff.offline import metrics
from precipdiff.offline.evaluate import plots

__all__ = [
    "EnsembleEvaluation",
    "Report",
    "cf_variable_name",
    "day_keys",
    "djf_winter",
    "evaluate_ensemble",
    "evenly_spaced",
    "metric_units",
    "write_metrics_netcdf",
]

#: High quantiles reported everywhere.
HIGH_Q = (0.95, 0.99, 0.999)


def day_keys(times: Any) -> NDArray[np.int64]:
    """Calendar-day keys ``year * 10000 + month * 100 + day`` for matching two time axes.

    Works for ``datetime64`` and ``cftime`` times of any calendar (a 360-day
    model's 30 February simply matches nothing in a Gregorian series).

    Parameters
    ----------
    times
        Time values.

    Returns
    -------
    numpy.ndarray
        One integer per time.
    """
    t = np.asarray(getattr(times, "values", times))
    if np.issubdtype(t.dtype, np.datetime64):
        d = t.astype("datetime64[D]")
        y = d.astype("datetime64[Y]").astype(np.int64) + 1970
        m = d.astype("datetime64[M]").astype(np.int64) % 12 + 1
        day = (d - d.astype("datetime64[M]")).astype(np.int64) + 1
        return np.asarray(y * 10000 + m * 100 + day, dtype=np.int64)
    try:
        return np.array([x.year * 10000 + x.month * 100 + x.day for x in t.ravel()], np.int64)
    except AttributeError as exc:
        raise InputError(f"cannot read calendar days from times of type {t.dtype}") from exc


def djf_winter(times: Any) -> NDArray[np.int64]:
    """Label each day with its DJF winter: the year of the winter's January.

    December counts forward (1996-12-15 belongs to winter 1997), so the days of
    one winter share a label (the blocks of a winter-block bootstrap).

    Parameters
    ----------
    times
        Time values (``datetime64`` or ``cftime``, any calendar).

    Returns
    -------
    numpy.ndarray
        One integer per time.
    """
    from precipdiff.calendars import time_fields

    tf = time_fields(times)
    return np.asarray(tf.year + (tf.month == 12), dtype=np.int64)


def evenly_spaced(n: int, m: int | None) -> NDArray[np.int64]:
    """Pick ``m`` evenly spaced days of ``n`` (first and last included).

    The one rule every experiment uses to subsample days (``max_days`` options).

    Parameters
    ----------
    n
        Length of the series.
    m
        Days wanted; ``None`` or ``m >= n`` gives all ``n``.

    Returns
    -------
    numpy.ndarray
        Sorted, unique indices (fewer than ``m`` only where rounding merges two).
    """
    if m is None or m >= n:
        return np.arange(n, dtype=np.int64)
    return np.unique(np.linspace(0, n - 1, m).round().astype(np.int64))


@dataclass
class Report:
    """A Markdown report made of paragraphs, tables and figures.

    Parameters
    ----------
    title
        Top-level heading.
    blocks
        Markdown blocks in order (filled by the ``add_*`` methods).
    """

    title: str
    blocks: list[str] = field(default_factory=list)

    def add_text(self, text: str) -> None:
        """Append a paragraph (Markdown).

        Parameters
        ----------
        text
            The paragraph.
        """
        self.blocks.append(text.strip())

    def add_heading(self, text: str, level: int = 2) -> None:
        """Append a heading.

        Parameters
        ----------
        text
            Heading text.
        level
            Markdown level (2 = ``##``).
        """
        self.blocks.append("#" * level + " " + text)

    def add_table(
        self, columns: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 3
    ) -> None:
        """Append a table; floats are printed with ``digits`` decimals.

        Parameters
        ----------
        columns
            Header cells.
        rows
            Table rows (strings or numbers).
        digits
            Decimals of float cells.
        """

        def cell(v: Any) -> str:
            if isinstance(v, (float, np.floating)):
                return "n/a" if not np.isfinite(v) else f"{float(v):.{digits}f}"
            return str(v)

        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
        self.blocks.append("\n".join(lines))

    def add_figure(self, path: Path, base: Path, caption: str) -> None:
        """Append a figure by its path relative to the report.

        Parameters
        ----------
        path
            The PNG.
        base
            Directory of the report.
        caption
            Alt text and caption.
        """
        rel = os.path.relpath(path, base)
        self.blocks.append(f"![{caption}]({rel})\n\n*{caption}*")

    def write(self, path: str | os.PathLike[str], command: str | None = None) -> Path:
        """Write the report.

        Parameters
        ----------
        path
            Markdown file.
        command
            The command that produced the numbers, quoted in the footer.

        Returns
        -------
        pathlib.Path
            The file written.
        """
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        foot = f"Generated by precipdiff {__version__} on {stamp}"
        if command:
            foot += f" with `{command}`"
        text = f"# {self.title}\n\n" + "\n\n".join(self.blocks) + f"\n\n---\n{foot}.\n"
        p.write_text(text)
        return p


#: Units of metric names (regular expressions searched in the name, first match wins);
#: ``V`` stands for the units of the evaluated values (``value_units``), ``V2`` for their
#: square. Names matching none need ``units=`` (:func:`write_metrics_netcdf` refuses to
#: write a metric without units).
METRIC_UNITS: tuple[tuple[str, str], ...] = (
    (r"spread_skill_ratio|ratio", "1"),
    (r"wet_day_frequency|frequency", "1"),
    (r"rank_histogram", "1"),
    (r"power_spectrum", "V2 degree"),
    (r"(^|_)(rel|relative)(_|$)|_relative_|corr", "1"),
    (r"(^|_)change_(q|map)(_|$)", "1"),
    (r"runtime_s$|_seconds$", "s"),
    (
        r"(^|_)(mae|rmse|crps|crps_fair|bias|mean_bias|mean_absolute_bias|mab|p\d+(_\d+)?|"
        r"bias_map|spread|spread_skill_bin_spread|spread_skill_bin_rmse|block_mae|"
        r"max_quantile_error|noise_floor)(_|$)",
        "V",
    ),
)

#: Long names of coordinates the evaluation writes (units in the second field).
METRIC_COORDINATES: dict[str, tuple[str, str]] = {
    "q": ("quantile probability", "1"),
    "quantile": ("quantile probability", "1"),
    "wavenumber": ("radial wavenumber (cycles per degree)", "degree-1"),
    "rank": ("rank of the observation in the ensemble", "1"),
}


def metric_units(name: str, value_units: str = "mm day-1") -> str | None:
    """Units of a metric from its name (:data:`METRIC_UNITS`), or ``None`` if unknown.

    Parameters
    ----------
    name
        Metric name, e.g. ``crps_generated``, ``wet_day_frequency_obs``.
    value_units
        Units of the evaluated quantity (precipitation: ``mm day-1``).

    Returns
    -------
    str or None
        udunits-compatible units.
    """
    for pattern, units in METRIC_UNITS:
        if re.search(pattern, name):
            if units == "V":
                return value_units
            if units.startswith("V2"):
                return f"({value_units})^2" + units[2:]
            return units
    return None


def cf_variable_name(name: str) -> str:
    """Make a netCDF/CF variable name of a label: letters, digits, ``_``, a letter first.

    Parameters
    ----------
    name
        E.g. ``crps_regression (bilinear)``.

    Returns
    -------
    str
        E.g. ``crps_regression_bilinear``.
    """
    out = re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_")
    out = re.sub(r"_+", "_", out)
    return out if out[:1].isalpha() else f"v_{out}"


def write_metrics_netcdf(
    path: str | os.PathLike[str],
    scalars: Mapping[str, float],
    arrays: Mapping[str, tuple[Sequence[str], NDArray[Any]]] | None = None,
    coords: Mapping[str, NDArray[Any]] | None = None,
    attrs: Mapping[str, Any] | None = None,
    *,
    units: Mapping[str, str] | None = None,
    long_names: Mapping[str, str] | None = None,
    value_units: str = "mm day-1",
    title: str = "precipdiff evaluation metrics",
) -> Path:
    """Write scalar metrics and metric arrays to one CF-1.8 netCDF file, atomically.

    Every variable gets ``long_name`` and ``units`` (from ``units``, else from its name
    by :func:`metric_units`); names are made CF-valid by :func:`cf_variable_name` (the
    original label is kept in ``long_name``); a coordinate of strings (e.g. the product
    labels of a dimension ``product``) becomes an integer index coordinate plus a
    character label variable ``<dim>_label`` named in the ``coordinates`` attribute of
    every variable on that dimension, so CF tools (cfchecks, CDO, cf_xarray) read it.
    Stack related metrics along such a labelled dimension instead of numbering names.

    Parameters
    ----------
    path
        Output file.
    scalars
        ``{name: value}`` written as 0-d variables.
    arrays
        ``{name: (dims, array)}``.
    coords
        Coordinates by dimension name: numbers (``lat``, ``lon``, ``q``, ``wavenumber``,
        ...) or strings (labels).
    attrs
        Global attributes (structured values are stored as JSON).
    units
        Units by metric (or numeric coordinate) name, overriding the name rules.
    long_names
        Long names by metric name (default: the metric's label).
    value_units
        Units of the evaluated quantity, for the name rules (``mm day-1``; ``K`` for
        temperature).
    title
        Global ``title``.

    Returns
    -------
    pathlib.Path
        The file written.

    Raises
    ------
    InputError
        A metric whose units are not known, names that collide once made CF-valid, or
        arrays whose dimensions disagree with the coordinates.
    """
    from precipdiff.io import cf, import_netcdf4
    from precipdiff.io.atomic import atomic_path

    nc4 = import_netcdf4()
    units = dict(units or {})
    long_names = dict(long_names or {})
    variables: dict[str, tuple[tuple[str, ...], NDArray[Any]]] = {
        k: ((), np.asarray(float(v), dtype=np.float64)) for k, v in scalars.items()
    }
    for k, (dims, a) in (arrays or {}).items():
        variables[k] = (tuple(dims), np.asarray(a))
    cf_names: dict[str, str] = {}
    for k in variables:
        c = cf_variable_name(k)
        if c in cf_names.values() or c in (coords or {}):
            raise InputError(f"metric name {k!r} collides with another once made CF-valid ({c})")
        cf_names[k] = c
    var_units: dict[str, str] = {}
    for k in variables:
        u = units.get(k) or metric_units(k, value_units)
        if u is None:
            raise InputError(
                f"metric {k!r} has no known units: pass units={{{k!r}: ...}} to "
                "write_metrics_netcdf or add a rule to METRIC_UNITS"
            )
        var_units[k] = u
    sizes: dict[str, int] = {}
    for k, (dims, a) in variables.items():
        if len(dims) != a.ndim:
            raise InputError(f"metric {k!r}: dims {dims} for an array of shape {a.shape}")
        for d, n in zip(dims, a.shape, strict=True):
            if sizes.setdefault(d, n) != n:
                raise InputError(f"dimension {d!r} has sizes {sizes[d]} and {n} ({k!r})")
    coord_arrays = {str(d): np.asarray(v) for d, v in (coords or {}).items()}
    for d, v in coord_arrays.items():
        if sizes.setdefault(d, v.shape[0]) != v.shape[0]:
            raise InputError(f"coordinate {d!r} has {v.shape[0]} values, the data {sizes[d]}")
    labelled = {d for d, v in coord_arrays.items() if v.dtype.kind in "OUS"}
    gattrs = {
        k: (cf.json_attribute(v) if isinstance(v, (dict, list, tuple)) else v)
        for k, v in (attrs or {}).items()
    }
    with atomic_path(path) as tmp, nc4.Dataset(tmp, "w", format="NETCDF4") as ds:
        for d, n in sizes.items():
            ds.createDimension(d, n)
        for d, v in coord_arrays.items():
            if d in labelled:
                labels = [str(x).encode("utf-8") for x in v.tolist()]
                width = max(1, *(len(b) for b in labels))
                ds.createDimension(f"{d}_strlen", width)
                idx = ds.createVariable(d, "i4", (d,))
                idx.long_name = f"index of {d}"
                idx.units = "1"
                idx[:] = np.arange(len(labels), dtype=np.int32)
                lab = ds.createVariable(f"{d}_label", "S1", (d, f"{d}_strlen"))
                lab.long_name = f"{d} label"
                chars = b"".join(b.ljust(width, b"\0") for b in labels)  # UTF-8 bytes
                lab[:] = np.frombuffer(chars, dtype="S1").reshape(len(labels), width)
                lab.setncattr("_Encoding", "utf-8")  # readers (xarray) decode to text
                continue
            var = ds.createVariable(d, "f8", (d,))
            if d in ("lat", "lon"):
                var.setncatts(cf.coordinate_attributes(d))
            else:
                long_name, cu = METRIC_COORDINATES.get(d, (d, ""))
                cu = units.get(d, cu)
                if not cu:
                    raise InputError(
                        f"coordinate {d!r} has no known units: pass units={{{d!r}: ...}}"
                    )
                var.long_name = long_name
                var.units = cu
            var[:] = v.astype(np.float64)
        for k, (dims, a) in variables.items():
            var = ds.createVariable(cf_names[k], "f8", dims)
            var.long_name = long_names.get(k, k)
            var.units = var_units[k]
            aux = [f"{d}_label" for d in dims if d in labelled]
            if aux:
                var.coordinates = " ".join(aux)
            var[...] = a.astype(np.float64)
        ds.setncatts(cf.provenance_attributes(title=title, extra=gattrs))
    return Path(path)


@dataclass
class EnsembleEvaluation:
    """Scores of an ensemble and its baselines against observations.

    Parameters
    ----------
    scalars
        Flat ``{metric: value}`` (names like ``crps_ensemble``, ``mae_baseline``).
    arrays
        ``{name: (dims, array)}`` for the netCDF file (bias maps, spectra,
        rank histogram, spread-skill curve).
    coords
        Coordinates of the non-spatial dimensions (``product``, ``wavenumber``).
    rows
        Paper-shaped table rows ``(product, MAE, CRPS, bias, MAB, p99, wet-day
        frequency)``.
    spectra
        ``{label: (wavenumber, power)}``.
    spread_skill
        Spread-skill summary (ensembles of 2+ members).
    rank_hist
        Rank histogram counts (ensembles of 2+ members).
    """

    scalars: dict[str, float]
    arrays: dict[str, tuple[Sequence[str], NDArray[Any]]]
    coords: dict[str, NDArray[Any]]
    rows: list[list[Any]]
    spectra: dict[str, tuple[NDArray[np.float64], NDArray[np.float64]]]
    spread_skill: metrics.SpreadSkill | None
    rank_hist: NDArray[np.int64] | None


def evaluate_ensemble(
    ens: NDArray[np.floating],
    obs: NDArray[np.floating],
    lat: NDArray[np.floating],
    lon: NDArray[np.floating],
    baselines: Mapping[str, NDArray[np.floating]] | None = None,
    coarse: NDArray[np.floating] | None = None,
    factor: int | None = None,
    label: str = "ensemble",
    spectrum_box: tuple[slice, slice] | None = None,
    band_wavelengths: tuple[float, float] | None = None,
) -> EnsembleEvaluation:
    """Score an ensemble ``(time, member, lat, lon)`` and baselines against ``obs``.

    Parameters
    ----------
    ens
        Generated ensemble in mm/day.
    obs
        Observations ``(time, lat, lon)`` (NaN = no data, e.g. sea).
    lat, lon
        Fine-grid coordinates (regular spacing assumed for the spectrum).
    baselines
        ``{label: (time, lat, lon)}`` deterministic products (their CRPS is
        their MAE).
    coarse
        The coarse field the ensemble was generated from, for the water-mass
        check over the cells where the observations are valid (needs ``factor``).
    factor
        Refinement factor between the coarse and the fine grid.
    label
        Name of the ensemble in tables and figures.
    spectrum_box
        ``(rows, cols)`` of the sub-grid the spectra are computed on (e.g. the
        largest all-land box, :func:`precipdiff.offline.metrics.land_box`, so that
        filled sea cells and coastlines add no power); the whole grid when ``None``.
    band_wavelengths
        ``(shortest, longest)`` wavelength in the units of ``lat``/``lon``: adds
        ``band_power_ratio_<product>``, the Hann-windowed spectral power in that
        band relative to the observations' (all members of the ensemble).

    Returns
    -------
    EnsembleEvaluation
        The scores.
    """
    e = np.asarray(ens, dtype=np.float64)
    o = np.asarray(obs, dtype=np.float64)
    if e.ndim != 4 or e.shape[:1] + e.shape[2:] != o.shape:
        raise InputError(
            f"ensemble {e.shape} and observations {o.shape} do not match: expected "
            "(time, member, lat, lon) and (time, lat, lon)"
        )
    mask = np.isfinite(o)
    e = np.where(mask[:, None], e, np.nan)
    dx = float(abs(lon[1] - lon[0])) if len(lon) > 1 else 1.0
    dy = float(abs(lat[1] - lat[0])) if len(lat) > 1 else dx
    products: dict[str, NDArray[np.float64]] = {}
    for k, b in (baselines or {}).items():
        bb = np.asarray(b, dtype=np.float64)
        if bb.shape != o.shape:
            raise InputError(f"baseline {k!r} has shape {bb.shape}, observations {o.shape}")
        products[k] = np.where(mask, bb, np.nan)
    sc: dict[str, float] = {}
    arrays: dict[str, tuple[Sequence[str], NDArray[Any]]] = {}
    rows: list[list[Any]] = []
    obs_wet = float(np.nanmean(metrics.wet_day_frequency(o)))
    obs_q = metrics.quantiles(o, HIGH_Q)

    def score(name: str, p: NDArray[np.float64], crps: float) -> None:
        bias = metrics.mean_bias(p, o)
        mab = metrics.mean_absolute_bias(p, o)
        pq = metrics.quantiles(p, HIGH_Q)
        wet = float(np.nanmean(metrics.wet_day_frequency(p)))
        m = metrics.mae(p, o)
        sc.update(
            {
                f"mae_{name}": m,
                f"rmse_{name}": metrics.rmse(p, o),
                f"crps_{name}": crps,
                f"mean_bias_{name}": bias,
                f"mean_absolute_bias_{name}": mab,
                f"mean_absolute_bias_area_weighted_{name}": metrics.mean_absolute_bias(p, o, lat),
                f"wet_day_frequency_{name}": wet,
                f"p95_{name}": float(pq[0]),
                f"p99_{name}": float(pq[1]),
                f"p99_9_{name}": float(pq[2]),
            }
        )
        rows.append([name, m, crps, bias, mab, float(pq[1]), float(pq[2]), wet])
        arrays[f"bias_map_{name}"] = (("lat", "lon"), metrics.time_mean_bias(p, o))

    members = e.shape[1]
    crps_map = metrics.crps_ensemble(e, o, fair=False)
    crps_e = float(np.nanmean(crps_map))
    score(label, e, crps_e)
    if members > 1:
        sc[f"crps_fair_{label}"] = float(np.nanmean(metrics.crps_ensemble(e, o, fair=True)))
    # the first member alone, as a single realisation (its statistics are those of
    # one plausible field, unlike the smooth ensemble mean)
    member0 = e[:, 0]
    sc[f"p99_{label}_member0"] = float(metrics.quantiles(member0, (0.99,))[0])
    sc[f"wet_day_frequency_{label}_member0"] = float(np.nanmean(metrics.wet_day_frequency(member0)))
    for k, p in products.items():
        score(k, p, metrics.mae(p, o))
    rows.append(["observations", 0.0, 0.0, 0.0, 0.0, float(obs_q[1]), float(obs_q[2]), obs_wet])
    sc.update(
        {
            "wet_day_frequency_observations": obs_wet,
            "p95_observations": float(obs_q[0]),
            "p99_observations": float(obs_q[1]),
            "p99_9_observations": float(obs_q[2]),
        }
    )
    ss = None
    rh = None
    if members > 1:
        ss = metrics.spread_skill(e, o)
        rh = metrics.rank_histogram(e, o)
        sc[f"spread_{label}"] = ss.spread
        sc[f"spread_skill_ratio_{label}"] = ss.ratio
        arrays["rank_histogram"] = (("rank",), rh)
        arrays["spread_skill_bin_spread"] = (("spread_bin",), ss.bin_spread)
        arrays["spread_skill_bin_rmse"] = (("spread_bin",), ss.bin_skill)
    box = spectrum_box if spectrum_box is not None else (slice(None), slice(None))

    def cut(a: NDArray[np.float64]) -> NDArray[np.float64]:
        return a[..., box[0], box[1]]

    spectra: dict[str, tuple[NDArray[np.float64], NDArray[np.float64]]] = {}
    spectra["observations"] = metrics.power_spectrum_radial(cut(o), dx=dx, dy=dy)
    spectra[f"{label} (all members)"] = metrics.power_spectrum_radial(cut(e), dx=dx, dy=dy)
    for k, p in products.items():
        spectra[k] = metrics.power_spectrum_radial(cut(p), dx=dx, dy=dy)
    if band_wavelengths is not None:
        for name, p in [(label, e), *products.items()]:
            sc[f"band_power_ratio_{name}"] = metrics.band_power_ratio(
                cut(p), cut(o), band_wavelengths, dx=dx, dy=dy
            )
    labels = list(spectra)
    arrays["power_spectrum"] = (
        ("product", "wavenumber"),
        np.stack([spectra[k][1] for k in labels]),
    )
    coords: dict[str, NDArray[Any]] = {
        "product": np.array(labels, dtype=object),
        "wavenumber": spectra["observations"][0],
    }
    if coarse is not None and factor:
        # over the cells scored (valid observations): generated values elsewhere (e.g.
        # over the sea of a land-only target) were never trained against
        wm = metrics.water_mass_consistency(np.asarray(coarse, dtype=np.float64), e, factor, lat)
        for k, v in wm.items():
            sc[f"water_mass_{k}"] = v
    return EnsembleEvaluation(sc, arrays, coords, rows, spectra, ss, rh)


TABLE_COLUMNS = (
    "product",
    "MAE (mm/day)",
    "CRPS (mm/day)",
    "mean bias (mm/day)",
    "mean abs. bias of time mean (mm/day)",
    "p99 (mm/day)",
    "p99.9 (mm/day)",
    "wet-day freq. (>=1 mm/day)",
)


def figures_for(
    ev: EnsembleEvaluation,
    obs: NDArray[np.floating],
    products: Mapping[str, NDArray[np.floating]],
    lat: NDArray[np.floating],
    lon: NDArray[np.floating],
    out: Path,
    prefix: str = "",
) -> dict[str, Path]:
    """Write the standard figures of an evaluation.

    Parameters
    ----------
    ev
        The evaluation.
    obs
        Observations ``(time, lat, lon)``.
    products
        ``{label: values}`` for the QQ plot (e.g. one member, baselines).
    lat, lon
        Coordinates for the bias maps.
    out
        Directory for the PNGs.
    prefix
        File name prefix.

    Returns
    -------
    dict
        ``{figure kind: path}``.
    """
    figs: dict[str, Path] = {}
    maps = {
        k[len("bias_map_") :]: a for k, (_, a) in ev.arrays.items() if k.startswith("bias_map_")
    }
    mabs = {k: ev.scalars[f"mean_absolute_bias_{k}"] for k in maps}
    figs["bias"] = plots.plot_bias_maps(maps, lat, lon, out / f"{prefix}bias_maps.png", scores=mabs)
    figs["spectra"] = plots.plot_spectra(ev.spectra, out / f"{prefix}spectra.png")
    figs["qq"] = plots.plot_qq(obs, products, out / f"{prefix}qq.png")
    if ev.spread_skill is not None:
        figs["spread_skill"] = plots.plot_spread_skill(
            {"ensemble": (ev.spread_skill.bin_spread, ev.spread_skill.bin_skill)},
            out / f"{prefix}spread_skill.png",
        )
    if ev.rank_hist is not None:
        figs["rank_histogram"] = plots.plot_rank_histogram(
            ev.rank_hist, out / f"{prefix}rank_histogram.png"
        )
    return figs
