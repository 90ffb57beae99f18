"""Verification metrics for precipitation fields and ensembles.

All functions take numpy arrays laid out ``(time, [member,] lat, lon)`` (the
package's API layout, see ``docs/architecture.md``) and ignore NaN (for example
E-OBS is NaN over sea): a statistic is computed over the finite values only.
Spatial averages are area-weighted when a grid is passed (anything with a
``cell_area()`` method, such as :class:`precipdiff.grids.LatLonGrid`, or a 1-D
array of latitudes in degrees, which gives cos(latitude) weights) and unweighted
when ``grid`` is ``None`` (as the paper reports its mean absolute bias).

The scores follow the definitions of the paper (Aich et al. 2025, Sect. 3):
mean (absolute) bias of the time mean, RMSE, ensemble CRPS (standard and fair,
Ferro 2014), spread--skill ratio (Fortin et al. 2014), rank histograms, wet-day
frequency, high quantiles, power spectra, change signals and water-mass
consistency between the coarse and the fine field.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
from numpy.typing import ArrayLike, NDArray

from precipdiff.errors import InputError

__all__ = [
    "ChangeDraws",
    "SpreadSkill",
    "area_weights",
    "block_mean",
    "change_map_split_half",
    "change_signal",
    "change_signal_bootstrap",
    "change_signal_error",
    "crps_ensemble",
    "mae",
    "mean_absolute_bias",
    "mean_bias",
    "power_spectrum_radial",
    "power_spectrum_zonal",
    "quantiles",
    "rank_histogram",
    "rmse",
    "spatial_mean",
    "spread_skill",
    "time_mean_bias",
    "water_mass_consistency",
    "wet_day_frequency",
]

FloatArray = NDArray[np.float64]


@runtime_checkable
class HasCellArea(Protocol):
    """Anything that can report cell areas, e.g. :class:`precipdiff.grids.LatLonGrid`."""

    def cell_area(self) -> NDArray[np.floating]:
        """Return cell areas shaped ``(nlat, nlon)``."""
        ...


GridLike = HasCellArea | ArrayLike | None


def area_weights(grid: GridLike, shape: tuple[int, int]) -> FloatArray:
    """Return normalised area weights for a ``(nlat, nlon)`` field.

    Parameters
    ----------
    grid
        ``None`` (equal weights), an object with ``cell_area()`` (e.g. a
        ``LatLonGrid``), or a 1-D array of cell-centre latitudes in degrees
        (cos-latitude weights, exact for a regular grid).
    shape
        ``(nlat, nlon)`` of the field the weights are for.

    Returns
    -------
    numpy.ndarray
        Weights shaped ``shape`` summing to 1.

    Raises
    ------
    InputError
        If the grid's shape does not match ``shape``.
    """
    if grid is None:
        w = np.ones(shape, dtype=np.float64)
    elif isinstance(grid, HasCellArea):
        w = np.asarray(grid.cell_area(), dtype=np.float64)
    else:
        lat = np.asarray(grid, dtype=np.float64)
        if lat.ndim != 1:
            raise InputError(f"latitudes for area weights must be 1-D, got shape {lat.shape}")
        w = np.repeat(np.cos(np.deg2rad(lat))[:, None], shape[1], axis=1)
    if w.shape != tuple(shape):
        raise InputError(f"grid has shape {w.shape} but the field has (lat, lon) shape {shape}")
    return w / w.sum()


def spatial_mean(field: ArrayLike, grid: GridLike = None) -> FloatArray:
    """Area-weighted mean over the last two axes, ignoring NaN cells.

    Parameters
    ----------
    field
        Array ``(..., lat, lon)``.
    grid
        See :func:`area_weights`; ``None`` for an unweighted mean.

    Returns
    -------
    numpy.ndarray
        Array ``(...)`` of means (NaN where every cell is NaN).
    """
    x = np.asarray(field, dtype=np.float64)
    w = area_weights(grid, x.shape[-2:])
    valid = np.isfinite(x)
    wv = np.where(valid, w, 0.0)
    num = np.where(valid, x, 0.0) * wv
    den = wv.sum(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(num.sum(axis=(-2, -1)) / den)


def _check_pair(pred: NDArray[np.floating], obs: NDArray[np.floating]) -> NDArray[np.floating]:
    """Average an ensemble axis away and check shapes against ``obs``."""
    if pred.ndim == obs.ndim + 1:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN (sea) cells
            pred = np.nanmean(pred, axis=1) if pred.shape[1] > 1 else pred[:, 0]
    if pred.shape != obs.shape:
        raise InputError(
            f"prediction shape {pred.shape} does not match observation shape {obs.shape} "
            "(expected (time, [member,] lat, lon) and (time, lat, lon))"
        )
    return pred


def time_mean_bias(pred: ArrayLike, obs: ArrayLike) -> FloatArray:
    """Bias map of the time mean, ``mean_t(pred) - mean_t(obs)``.

    Parameters
    ----------
    pred
        ``(time, [member,] lat, lon)``; members are averaged first.
    obs
        ``(time, lat, lon)``. The two series may have different lengths (for
        example an ESM's free-running climate against observations): only their
        time means are compared.

    Returns
    -------
    numpy.ndarray
        ``(lat, lon)`` bias map (NaN where ``obs`` is NaN throughout).
    """
    p = np.asarray(pred, dtype=np.float64)
    o = np.asarray(obs, dtype=np.float64)
    if p.ndim == o.ndim + 1:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN (sea) cells
            p = np.nanmean(p, axis=1)
    if p.shape[1:] != o.shape[1:]:
        raise InputError(
            f"prediction grid {p.shape[1:]} does not match observation grid {o.shape[1:]}"
        )
    with np.errstate(invalid="ignore"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN (sea) cells
            return np.asarray(np.nanmean(p, axis=0) - np.nanmean(o, axis=0))


def mean_bias(pred: ArrayLike, obs: ArrayLike, grid: GridLike = None) -> float:
    """Spatial mean of the time-mean bias.

    Parameters
    ----------
    pred, obs
        See :func:`time_mean_bias`.
    grid
        See :func:`area_weights`; ``None`` gives the unweighted mean.

    Returns
    -------
    float
        Mean bias in the units of the inputs.
    """
    return float(spatial_mean(time_mean_bias(pred, obs), grid))


def mean_absolute_bias(pred: ArrayLike, obs: ArrayLike, grid: GridLike = None) -> float:
    """Spatial mean of the absolute time-mean bias (the paper's headline number).

    Parameters
    ----------
    pred, obs
        See :func:`time_mean_bias`.
    grid
        See :func:`area_weights`; ``None`` gives the unweighted mean used by the
        paper (0.424 mm/day for GFDL-ESM4 against ERA5).

    Returns
    -------
    float
        Mean absolute bias in the units of the inputs.
    """
    return float(spatial_mean(np.abs(time_mean_bias(pred, obs)), grid))


def rmse(pred: ArrayLike, obs: ArrayLike, grid: GridLike = None) -> float:
    """Root-mean-square error over time and space (members averaged first).

    Parameters
    ----------
    pred
        ``(time, [member,] lat, lon)``.
    obs
        ``(time, lat, lon)``.
    grid
        See :func:`area_weights`.

    Returns
    -------
    float
        RMSE in the units of the inputs.
    """
    o = np.asarray(obs, dtype=np.float64)
    p = _check_pair(np.asarray(pred, dtype=np.float64), o)
    mse_t = spatial_mean((p - o) ** 2, grid)
    return float(np.sqrt(np.nanmean(mse_t)))


def mae(pred: ArrayLike, obs: ArrayLike, grid: GridLike = None) -> float:
    """Mean absolute error over time and space (members averaged first).

    Parameters
    ----------
    pred
        ``(time, [member,] lat, lon)``.
    obs
        ``(time, lat, lon)``.
    grid
        See :func:`area_weights`.

    Returns
    -------
    float
        MAE in the units of the inputs.
    """
    o = np.asarray(obs, dtype=np.float64)
    p = _check_pair(np.asarray(pred, dtype=np.float64), o)
    return float(np.nanmean(spatial_mean(np.abs(p - o), grid)))


def crps_ensemble(ens: ArrayLike, obs: ArrayLike, fair: bool = False) -> FloatArray:
    """Pointwise ensemble CRPS.

    ``CRPS = mean_i |x_i - y| - 1/(2 M^2) sum_ij |x_i - x_j|`` (standard), or with
    ``1/(2 M (M-1))`` in the second term (fair CRPS, Ferro 2014), computed in
    ``O(M log M)`` from the sorted members.

    Parameters
    ----------
    ens
        ``(time, member, lat, lon)`` (any array whose axis 1 is the member axis).
    obs
        ``(time, lat, lon)``.
    fair
        Use the fair (unbiased for finite ensembles) estimator.

    Returns
    -------
    numpy.ndarray
        CRPS ``(time, lat, lon)``; NaN where ``obs`` is NaN. Average it with
        :func:`spatial_mean` and ``nanmean`` over time.

    Raises
    ------
    InputError
        On shape mismatch or a fair CRPS with a single member.
    """
    x = np.asarray(ens, dtype=np.float64)
    y = np.asarray(obs, dtype=np.float64)
    if x.ndim != y.ndim + 1 or x.shape[:1] + x.shape[2:] != y.shape:
        raise InputError(
            f"ensemble shape {x.shape} does not match observation shape {y.shape}: "
            "expected (time, member, lat, lon) and (time, lat, lon)"
        )
    m = x.shape[1]
    if fair and m < 2:
        raise InputError("the fair CRPS needs at least 2 ensemble members, got 1")
    skill = np.mean(np.abs(x - y[:, None]), axis=1)
    xs = np.sort(x, axis=1)
    # sum_ij |x_i - x_j| = 2 sum_k (2k - M - 1) x_(k), k = 1..M (sorted)
    k = np.arange(1, m + 1, dtype=np.float64).reshape((1, m) + (1,) * (x.ndim - 2))
    pair_sum = 2.0 * np.sum((2.0 * k - m - 1.0) * xs, axis=1)
    denom = 2.0 * m * (m - 1) if fair else 2.0 * m * m
    return np.asarray(skill - pair_sum / denom)


@dataclass(frozen=True)
class SpreadSkill:
    """Spread--skill summary of an ensemble.

    Parameters
    ----------
    spread
        Square root of the mean ensemble variance (``ddof=1``).
    skill
        RMSE of the ensemble mean against the observation.
    ratio
        ``sqrt((M+1)/M) * spread / skill``; 1 for a calibrated ensemble
        (Fortin et al. 2014).
    bin_spread, bin_skill
        Binned spread and RMSE (bins of equal population in spread) for the
        spread--skill plot.
    """

    spread: float
    skill: float
    ratio: float
    bin_spread: FloatArray
    bin_skill: FloatArray


def spread_skill(ens: ArrayLike, obs: ArrayLike, n_bins: int = 10) -> SpreadSkill:
    """Spread--skill ratio and binned spread--skill curve.

    Parameters
    ----------
    ens
        ``(time, member, lat, lon)`` with at least 2 members.
    obs
        ``(time, lat, lon)``.
    n_bins
        Number of equal-population spread bins for the curve.

    Returns
    -------
    SpreadSkill
        Summary values and the binned curve.
    """
    x = np.asarray(ens, dtype=np.float64)
    y = np.asarray(obs, dtype=np.float64)
    if x.ndim != y.ndim + 1 or x.shape[1] < 2:
        raise InputError(f"spread-skill needs (time, member>=2, lat, lon), got {x.shape}")
    m = x.shape[1]
    var = np.var(x, axis=1, ddof=1)
    err2 = (np.mean(x, axis=1) - y) ** 2
    ok = np.isfinite(err2) & np.isfinite(var)
    var, err2 = var[ok], err2[ok]
    spread = float(np.sqrt(var.mean()))
    skill = float(np.sqrt(err2.mean()))
    ratio = float(np.sqrt((m + 1) / m) * spread / skill) if skill > 0 else float("inf")
    order = np.argsort(var, kind="stable")
    chunks = np.array_split(order, min(n_bins, max(order.size, 1)))
    bs = np.array([np.sqrt(var[c].mean()) for c in chunks if c.size])
    bk = np.array([np.sqrt(err2[c].mean()) for c in chunks if c.size])
    return SpreadSkill(spread, skill, ratio, bs, bk)


def rank_histogram(ens: ArrayLike, obs: ArrayLike, seed: int = 0) -> NDArray[np.int64]:
    """Rank histogram (Talagrand diagram) with random tie breaking.

    Ties matter for precipitation (many members and the observation are exactly
    0): the observation's rank is drawn uniformly among the tied positions
    (Hamill 2001), with a seeded generator so the result is reproducible.

    Parameters
    ----------
    ens
        ``(time, member, lat, lon)``.
    obs
        ``(time, lat, lon)``.
    seed
        Seed of the tie-breaking generator.

    Returns
    -------
    numpy.ndarray
        Counts of the observation's rank, length ``M + 1``.
    """
    x = np.asarray(ens, dtype=np.float64)
    y = np.asarray(obs, dtype=np.float64)
    if x.ndim != y.ndim + 1 or x.shape[:1] + x.shape[2:] != y.shape:
        raise InputError(f"ensemble shape {x.shape} does not match observation shape {y.shape}")
    m = x.shape[1]
    ok = np.isfinite(y) & np.all(np.isfinite(x), axis=1)
    below = np.sum(x < y[:, None], axis=1)[ok]
    ties = np.sum(x == y[:, None], axis=1)[ok]
    rng = np.random.default_rng(seed)
    rank = below + np.floor(rng.random(below.shape) * (ties + 1)).astype(np.int64)
    return np.bincount(rank, minlength=m + 1).astype(np.int64)


def wet_day_frequency(x: ArrayLike, threshold: float = 1.0) -> FloatArray:
    """Fraction of days at or above ``threshold`` (mm/day), per cell.

    Parameters
    ----------
    x
        ``(time, [member,] lat, lon)`` precipitation in mm/day.
    threshold
        Wet-day threshold in mm/day (1 mm/day by convention).

    Returns
    -------
    numpy.ndarray
        ``(lat, lon)`` frequency in [0, 1] (NaN where every value is NaN).
    """
    a = np.asarray(x, dtype=np.float64)
    a = a.reshape((-1, *a.shape[-2:]))
    valid = np.isfinite(a)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(np.sum(a >= threshold, axis=0) / np.sum(valid, axis=0))


def quantiles(
    x: ArrayLike, q: Sequence[float] = (0.95, 0.99, 0.999), per_cell: bool = False
) -> FloatArray:
    """High quantiles (default p95, p99, p99.9) of the finite values.

    Parameters
    ----------
    x
        ``(time, [member,] lat, lon)``.
    q
        Probabilities in [0, 1].
    per_cell
        Return a map per quantile instead of quantiles pooled over all cells.

    Returns
    -------
    numpy.ndarray
        ``(len(q),)`` pooled, or ``(len(q), lat, lon)`` per cell.
    """
    a = np.asarray(x, dtype=np.float64)
    qs = np.asarray(q, dtype=np.float64)
    if np.any((qs < 0) | (qs > 1)):
        raise InputError(f"quantile probabilities must lie in [0, 1], got {list(q)}")
    if per_cell:
        a = a.reshape((-1, *a.shape[-2:]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.asarray(np.nanquantile(a, qs, axis=0))
    finite = a[np.isfinite(a)]
    if finite.size == 0:
        raise InputError("cannot compute quantiles: the field has no finite values")
    return np.asarray(np.quantile(finite, qs))


def _fill_nan(a: FloatArray) -> FloatArray:
    """Replace NaN cells by the field's mean over finite cells (per leading index)."""
    if not np.isnan(a).any():
        return a
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        m = np.nanmean(a, axis=(-2, -1), keepdims=True)
    return np.where(np.isnan(a), np.nan_to_num(m), a)


def power_spectrum_zonal(
    x: ArrayLike, lat: ArrayLike | None = None, lat_band: tuple[float, float] | None = None
) -> tuple[FloatArray, FloatArray]:
    """Zonal power spectrum for global (periodic) grids.

    An FFT along longitude of every latitude row, power averaged over time,
    members and the rows in ``lat_band``. NaN cells are replaced by the row's
    mean first.

    Parameters
    ----------
    x
        ``(time, [member,] lat, lon)`` on a periodic longitude grid.
    lat
        Cell-centre latitudes (needed with ``lat_band``).
    lat_band
        ``(south, north)`` in degrees; all rows when ``None``.

    Returns
    -------
    wavenumber, power
        Zonal wavenumbers ``0..nlon//2`` (cycles per circle) and mean power.
    """
    a = np.asarray(x, dtype=np.float64)
    a = a.reshape((-1, *a.shape[-2:]))
    if lat_band is not None:
        if lat is None:
            raise InputError("power_spectrum_zonal: lat_band given without lat")
        la = np.asarray(lat, dtype=np.float64)
        rows = (la >= min(lat_band)) & (la <= max(lat_band))
        if not rows.any():
            raise InputError(f"no latitude rows inside the band {lat_band}")
        a = a[:, rows, :]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        rowmean = np.nanmean(a, axis=-1, keepdims=True)
    a = np.where(np.isnan(a), np.nan_to_num(rowmean), a)
    nlon = a.shape[-1]
    f = np.fft.rfft(a, axis=-1) / nlon
    power = np.mean(np.abs(f) ** 2, axis=(0, 1))
    return np.arange(power.size, dtype=np.float64), np.asarray(power)


def power_spectrum_radial(
    x: ArrayLike,
    dx: float = 1.0,
    dy: float | None = None,
    detrend: bool = True,
    window: str | None = "hann",
) -> tuple[FloatArray, FloatArray]:
    """Radially averaged 2-D power spectrum for regional (non-periodic) grids.

    Each field is mean-removed (``detrend``), NaN cells are set to the field's
    mean of finite cells, and the field is tapered with a 2-D window before the
    FFT. Without a window a regional field is treated as periodic, and the jump
    between its opposite edges leaks power into every wavenumber: a smooth field
    then shows spurious fine-scale power (which flatters smooth baselines). The
    window's power is normalised out (``sum w^2``), so white noise has the same
    level with or without it. Power is averaged in annuli of equal wavenumber
    width, then over time and members.

    For land-only data (E-OBS) pass an all-land box (:func:`land_box`): filled sea
    cells have no variance, which lowers the power of every product equally but
    also adds coastline edges.

    Parameters
    ----------
    x
        ``(time, [member,] lat, lon)``.
    dx, dy
        Grid spacing along lon and lat (e.g. in degrees or km); ``dy = dx`` when
        ``None``. Wavenumbers are in cycles per unit of ``dx``.
    detrend
        Remove each field's mean before the FFT.
    window
        ``"hann"`` (default; a Hann taper in each direction) or ``None`` (no
        taper, as before version 0.2).

    Returns
    -------
    wavenumber, power
        Bin-centre wavenumbers (excluding 0) and mean power per bin.
    """
    if window not in ("hann", None):
        raise InputError(f"power_spectrum_radial: window must be 'hann' or None, got {window!r}")
    a = np.asarray(x, dtype=np.float64)
    a = _fill_nan(a.reshape((-1, *a.shape[-2:])))
    if detrend:
        a = a - a.mean(axis=(-2, -1), keepdims=True)
    ny, nx = a.shape[-2:]
    dy = dx if dy is None else dy
    if window == "hann":
        # periodic-free taper: the interior points of an (n + 2)-point Hann window
        w = np.outer(np.hanning(ny + 2)[1:-1], np.hanning(nx + 2)[1:-1])
        a = a * w
        norm = float(np.sum(w**2))
    else:
        norm = float(nx * ny)
    p = np.mean(np.abs(np.fft.fft2(a)) ** 2, axis=0) / (norm * nx * ny)
    ky = np.fft.fftfreq(ny, d=dy)
    kx = np.fft.fftfreq(nx, d=dx)
    kr = np.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)
    dk = max(1.0 / (nx * dx), 1.0 / (ny * dy))
    nbins = int(np.floor(min(0.5 / dx, 0.5 / dy) / dk))
    if nbins < 1:
        raise InputError(f"grid {ny}x{nx} is too small for a radial spectrum")
    edges = dk * (np.arange(nbins + 1) + 0.5)
    idx = np.digitize(kr.ravel(), edges) - 1
    sel = (idx >= 0) & (idx < nbins)
    sums = np.bincount(idx[sel], weights=p.ravel()[sel], minlength=nbins)
    counts = np.bincount(idx[sel], minlength=nbins)
    centres = dk * (np.arange(nbins) + 1.0)
    keep = counts > 0
    return centres[keep], sums[keep] / counts[keep]


def band_power_ratio(
    x: ArrayLike,
    ref: ArrayLike,
    wavelengths: tuple[float, float],
    dx: float = 1.0,
    dy: float | None = None,
) -> float:
    """Ratio of Hann-windowed spectral power in a wavelength band: ``x`` over ``ref``.

    Parameters
    ----------
    x, ref
        ``(time, [member,] lat, lon)`` fields on the same grid (e.g. an all-land
        box of generated and observed precipitation).
    wavelengths
        ``(shortest, longest)`` wavelength in units of ``dx`` (e.g. ``(1, 2)``
        degrees).
    dx, dy
        Grid spacing.

    Returns
    -------
    float
        ``sum P_x / sum P_ref`` over the radial bins whose wavelength lies in the band.

    Raises
    ------
    InputError
        When no bin falls in the band.
    """
    k, px = power_spectrum_radial(x, dx=dx, dy=dy)
    _, pr = power_spectrum_radial(ref, dx=dx, dy=dy)
    lo, hi = sorted(wavelengths)
    sel = (k >= 1.0 / hi - 1e-12) & (k <= 1.0 / lo + 1e-12)
    if not sel.any():
        raise InputError(f"no spectral bin between wavelengths {lo} and {hi} (bins {k})")
    return float(px[sel].sum() / pr[sel].sum())


def land_box(valid: ArrayLike) -> tuple[slice, slice]:
    """Return the largest axis-aligned box of cells valid (e.g. land) in every field.

    Parameters
    ----------
    valid
        ``(lat, lon)`` boolean mask (e.g. ``numpy.isfinite(obs).all(axis=0)``).

    Returns
    -------
    tuple of slice
        Row and column slices of the box with the most cells (ties: the first
        found scanning rows then columns).

    Raises
    ------
    InputError
        When no cell is valid.
    """
    m = np.asarray(valid, dtype=bool)
    if m.ndim != 2 or not m.any():
        raise InputError("land_box needs a 2-D mask with at least one valid cell")
    ny, nx = m.shape
    best = (0, (slice(0, 1), slice(0, 1)))
    # For each pair of rows, the longest run of columns valid in all rows between them.
    for r0 in range(ny):
        col_ok = np.ones(nx, dtype=bool)
        for r1 in range(r0, ny):
            col_ok &= m[r1]
            run = 0
            for c in range(nx + 1):
                if c < nx and col_ok[c]:
                    run += 1
                    continue
                area = run * (r1 - r0 + 1)
                if area > best[0]:
                    best = (area, (slice(r0, r1 + 1), slice(c - run, c)))
                run = 0
    return best[1]


def change_signal(
    hist: ArrayLike,
    fut: ArrayLike,
    q: Sequence[float] | None = None,
    kind: str = "relative",
    grid: GridLike = None,
) -> FloatArray:
    """Change between two periods, of the spatial-mean series' mean or quantiles.

    Parameters
    ----------
    hist, fut
        ``(time, [member,] lat, lon)`` for the two periods (lengths may differ).
    q
        Probabilities; when ``None`` the change of the time mean per cell is
        returned as a ``(lat, lon)`` map, otherwise the change of each quantile
        of the pooled values (all cells and times) as ``(len(q),)``.
    kind
        ``"relative"`` (``fut/hist - 1``, for precipitation) or ``"absolute"``
        (``fut - hist``).
    grid
        Unused for maps; kept for a uniform signature with area weighting of the
        mean change (``q=None``) via :func:`spatial_mean` by the caller.

    Returns
    -------
    numpy.ndarray
        The change signal.
    """
    if kind not in ("relative", "absolute"):
        raise InputError(f"change kind must be 'relative' or 'absolute', got {kind!r}")
    h = np.asarray(hist, dtype=np.float64)
    f = np.asarray(fut, dtype=np.float64)
    if q is None:
        h = h.reshape((-1, *h.shape[-2:]))
        f = f.reshape((-1, *f.shape[-2:]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            a, b = np.nanmean(h, axis=0), np.nanmean(f, axis=0)
    else:
        a, b = quantiles(h, q), quantiles(f, q)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(b / a - 1.0 if kind == "relative" else b - a)


def change_signal_error(
    model_hist: ArrayLike,
    model_fut: ArrayLike,
    new_hist: ArrayLike,
    new_fut: ArrayLike,
    q: Sequence[float] = (0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99),
    kind: str = "relative",
) -> dict[str, FloatArray]:
    """Compare a product's change signal per quantile with the model's own.

    Parameters
    ----------
    model_hist, model_fut
        The driving model (ESM) in the historical and future periods.
    new_hist, new_fut
        The corrected or generated product in the same periods.
    q
        Probabilities at which the change is compared.
    kind
        ``"relative"`` or ``"absolute"``, see :func:`change_signal`.

    Returns
    -------
    dict
        ``{"q", "model", "product", "difference"}`` arrays of length ``len(q)``.
    """
    cm = change_signal(model_hist, model_fut, q, kind)
    cp = change_signal(new_hist, new_fut, q, kind)
    return {"q": np.asarray(q, dtype=np.float64), "model": cm, "product": cp, "difference": cp - cm}


@dataclass(frozen=True)
class ChangeDraws:
    """Block-bootstrap draws of a relative change signal (:func:`change_signal_bootstrap`).

    Attributes
    ----------
    mean
        ``(n,)`` relative change of the spatial mean of the time-mean map.
    quantile
        ``(n, len(q))`` relative change of the pooled quantiles.
    maps
        ``(n, lat, lon)`` relative change of the time mean per cell.
    """

    mean: FloatArray
    quantile: FloatArray
    maps: FloatArray


class _Blocks:
    """A series cut into blocks: per-block sums, counts and finite values of each cell."""

    def __init__(self, x: ArrayLike, blocks: ArrayLike) -> None:
        a = np.asarray(x, dtype=np.float64)
        b = np.asarray(blocks)
        if a.ndim < 3 or b.shape != a.shape[:1]:
            raise InputError(
                f"blocks must label the leading (time) axis: got {b.shape} for a field {a.shape}"
            )
        self.ids = np.unique(b)
        self.sums = np.empty((self.ids.size, *a.shape[-2:]))
        self.counts = np.empty((self.ids.size, *a.shape[-2:]))
        self.values: list[FloatArray] = []
        for i, k in enumerate(self.ids):
            s = a[b == k].reshape((-1, *a.shape[-2:]))
            ok = np.isfinite(s)
            self.sums[i] = np.where(ok, s, 0.0).sum(axis=0)
            self.counts[i] = ok.sum(axis=0)
            self.values.append(s[ok])

    def mean_map(self, pick: NDArray[np.int64]) -> FloatArray:
        """Time mean per cell of the blocks ``pick`` (with repeats; NaN where no value)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.asarray(self.sums[pick].sum(axis=0) / self.counts[pick].sum(axis=0))

    def quantiles(self, pick: NDArray[np.int64], q: Sequence[float]) -> FloatArray:
        """Quantiles of the pooled finite values of the blocks ``pick`` (with repeats)."""
        vals = np.concatenate([self.values[i] for i in pick])
        if vals.size == 0:
            raise InputError("cannot compute quantiles: the resampled field has no finite values")
        return np.asarray(np.quantile(vals, q))


def _block_picks(n_blocks: int, n: int, seed: int) -> NDArray[np.int64]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_blocks, size=(n, n_blocks))


def change_signal_bootstrap(
    hist: ArrayLike,
    fut: ArrayLike,
    blocks_hist: ArrayLike,
    blocks_fut: ArrayLike,
    q: Sequence[float] = (0.9, 0.99),
    n: int = 500,
    seed: int = 0,
) -> ChangeDraws:
    """Block bootstrap of the relative change between two periods.

    Each draw resamples whole blocks (e.g. winters: days of one season are not
    independent) with replacement, separately in each period, and recomputes
    the change of the spatial mean of the time-mean map (as
    ``spatial_mean(time mean of fut) / spatial_mean(time mean of hist) - 1``,
    unweighted over cells with a finite mean), of the pooled quantiles (as
    :func:`change_signal` with ``q``) and the change map.

    The draws depend only on the number of blocks, ``n`` and ``seed``: two
    products on the same days with the same blocks, ``n`` and ``seed`` are
    resampled with the same blocks, so their differences are paired.

    Parameters
    ----------
    hist, fut
        ``(time, [member,] lat, lon)`` for the two periods.
    blocks_hist, blocks_fut
        ``(time,)`` block label of every time step (e.g. the winter's year).
    q
        Probabilities of the quantile changes.
    n
        Number of draws.
    seed
        Seed of the block draws.

    Returns
    -------
    ChangeDraws
        ``n`` draws of the mean change, the quantile changes and the change map.
    """
    if n < 1:
        raise InputError(f"the bootstrap needs n >= 1 draws, got {n}")
    bh, bf = _Blocks(hist, blocks_hist), _Blocks(fut, blocks_fut)
    ph = _block_picks(bh.ids.size, n, seed)
    pf = _block_picks(bf.ids.size, n, seed + 1)
    mean = np.empty(n)
    quant = np.empty((n, len(q)))
    maps = np.empty((n, *bh.sums.shape[1:]))
    for i in range(n):
        mh, mf = bh.mean_map(ph[i]), bf.mean_map(pf[i])
        qh, qf = bh.quantiles(ph[i], q), bf.quantiles(pf[i], q)
        with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean[i] = np.nanmean(mf) / np.nanmean(mh) - 1.0
            quant[i] = qf / qh - 1.0
            maps[i] = mf / mh - 1.0
    return ChangeDraws(mean=mean, quantile=quant, maps=maps)


def change_map_split_half(
    hist: ArrayLike,
    fut: ArrayLike,
    blocks_hist: ArrayLike,
    blocks_fut: ArrayLike,
    n: int = 200,
    seed: int = 0,
) -> FloatArray:
    """Correlations between the change maps of two disjoint halves of the blocks.

    Each draw splits the blocks of each period at random into two halves
    (without replacement) and correlates the relative change maps of the time
    mean computed from each half: how reproducible a change map is between
    independent samples of half the length. By the Spearman-Brown formula the
    reliability of the full-length map is ``2 r / (1 + r)`` for the mean
    correlation ``r``.

    Parameters
    ----------
    hist, fut
        ``(time, [member,] lat, lon)`` for the two periods.
    blocks_hist, blocks_fut
        ``(time,)`` block label of every time step (at least two blocks each).
    n
        Number of random splits.
    seed
        Seed of the splits.

    Returns
    -------
    numpy.ndarray
        ``(n,)`` correlations over the cells where both maps are finite.
    """
    bh, bf = _Blocks(hist, blocks_hist), _Blocks(fut, blocks_fut)
    if bh.ids.size < 2 or bf.ids.size < 2:
        raise InputError("a split-half comparison needs at least two blocks in each period")
    rng = np.random.default_rng(seed)
    kh, kf = bh.ids.size // 2, bf.ids.size // 2
    out = np.empty(n)
    for i in range(n):
        sh, sf = rng.permutation(bh.ids.size), rng.permutation(bf.ids.size)
        with np.errstate(invalid="ignore", divide="ignore"):
            a = bf.mean_map(sf[:kf]) / bh.mean_map(sh[:kh]) - 1.0
            b = bf.mean_map(sf[kf:]) / bh.mean_map(sh[kh:]) - 1.0
        ok = np.isfinite(a) & np.isfinite(b)
        out[i] = np.corrcoef(a[ok], b[ok])[0, 1] if ok.sum() > 2 else np.nan
    return out


def block_mean(fine: ArrayLike, factor: int, lat: ArrayLike | None = None) -> FloatArray:
    """Area-weighted mean of ``factor x factor`` blocks of a fine field.

    Parameters
    ----------
    fine
        ``(..., nlat_f, nlon_f)`` with both sizes multiples of ``factor``.
    factor
        Refinement factor between the coarse and the fine grid.
    lat
        Fine-grid latitudes for cos-latitude weights; equal weights when ``None``.

    Returns
    -------
    numpy.ndarray
        ``(..., nlat_f // factor, nlon_f // factor)``; NaN fine cells are ignored.
    """
    a = np.asarray(fine, dtype=np.float64)
    ny, nx = a.shape[-2:]
    if factor < 1 or ny % factor or nx % factor:
        raise InputError(f"fine grid {ny}x{nx} is not a multiple of the factor {factor}")
    if lat is None:
        w = np.ones((ny, nx))
    else:
        w = np.repeat(np.cos(np.deg2rad(np.asarray(lat, dtype=np.float64)))[:, None], nx, axis=1)
    shp = (*a.shape[:-2], ny // factor, factor, nx // factor, factor)
    valid = np.isfinite(a)
    wv = np.broadcast_to(w, a.shape) * valid
    num = (np.where(valid, a, 0.0) * wv).reshape(shp).sum(axis=(-3, -1))
    den = wv.reshape(shp).sum(axis=(-3, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(num / den)


def water_mass_consistency(
    coarse: ArrayLike, fine: ArrayLike, factor: int, lat_fine: ArrayLike | None = None
) -> dict[str, float]:
    """How well the fine field's block means reproduce the coarse field.

    Parameters
    ----------
    coarse
        ``(time, lat_c, lon_c)``.
    fine
        ``(time, [member,] lat_f, lon_f)`` with ``lat_f = factor * lat_c``.
    factor
        Refinement factor.
    lat_fine
        Fine latitudes for cos-latitude weighting of the blocks.

    Returns
    -------
    dict
        ``relative_total_error`` (domain total of the fine field over the coarse
        total, minus 1), ``block_mae`` (mean absolute difference of block means
        and coarse cells) and ``block_relative_mae`` (divided by the coarse mean).
    """
    c = np.asarray(coarse, dtype=np.float64)
    f = np.asarray(fine, dtype=np.float64)
    b = block_mean(f, factor, lat_fine)
    if b.ndim == c.ndim + 1:
        c = c[:, None]
    if b.shape[-2:] != c.shape[-2:]:
        raise InputError(
            f"fine grid {f.shape[-2:]} / {factor} = {b.shape[-2:]} does not match the coarse "
            f"grid {c.shape[-2:]}"
        )
    ok = np.isfinite(b) & np.isfinite(c)
    cb = np.broadcast_to(c, b.shape)
    diff = np.abs(b - cb)[ok]
    cmean = float(np.mean(cb[ok]))
    total_err = float(np.sum(b[ok]) / np.sum(cb[ok]) - 1.0) if np.sum(cb[ok]) else float("nan")
    mae_blocks = float(diff.mean())
    return {
        "relative_total_error": total_err,
        "block_mae": mae_blocks,
        "block_relative_mae": mae_blocks / cmean if cmean else float("nan"),
    }
