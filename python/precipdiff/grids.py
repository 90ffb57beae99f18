"""Latitude-longitude grids and precomputed sparse regridding.

A :class:`LatLonGrid` is defined by its 1-D coordinates (degrees), never by a
scale factor: ERA5 at 1° is 181×360 and at 0.25° is 721×1440 (721 is not 4×181).
Latitudes may be ascending or descending; longitudes may use any convention
(0..359, -180..179, or a regional window crossing the date line).

A :class:`Regridder` holds one ``scipy.sparse`` matrix built once at start-up,
so applying it every model timestep is a single sparse matrix product with no
Python loops. Rectilinear grids make both methods separable in latitude and
longitude, so the 2-D weights are the Kronecker product of two 1-D matrices.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from precipdiff.errors import GridError

__all__ = [
    "EARTH_RADIUS_M",
    "LatLonGrid",
    "RegridMethod",
    "Regridder",
    "coarsen_block_mean",
    "coarsen_grid",
]

EARTH_RADIUS_M = 6_371_000.0
"""Mean Earth radius used for cell areas (m)."""

_PERIODIC_TOL_DEG = 1e-4
RegridMethod = Literal["bilinear", "conservative"]


def _as_coord(values: npt.ArrayLike, name: str) -> np.ndarray:
    arr = np.array(values, dtype=np.float64).reshape(-1) if np.ndim(values) <= 1 else None
    if arr is None:
        raise GridError(f"{name} must be a 1-D coordinate array, got shape {np.shape(values)}")
    if arr.size == 0:
        raise GridError(f"{name} coordinate is empty")
    if not np.all(np.isfinite(arr)):
        raise GridError(f"{name} coordinate contains non-finite values")
    arr.setflags(write=False)
    return arr


def _edges_from_centres(x: np.ndarray) -> np.ndarray:
    """Cell edges (n+1) halfway between centres, extrapolated by half a step at the ends."""
    if x.size == 1:
        return np.array([x[0] - 0.5, x[0] + 0.5])
    mid = 0.5 * (x[1:] + x[:-1])
    return np.concatenate([[x[0] - (mid[0] - x[0])], mid, [x[-1] + (x[-1] - mid[-1])]])


@dataclass(frozen=True, eq=False)
class LatLonGrid:
    """A rectilinear latitude-longitude grid given by its cell-centre coordinates.

    Parameters
    ----------
    lat : array_like
        Latitudes of the cell centres in degrees, strictly ascending or strictly
        descending, within [-90, 90].
    lon : array_like
        Longitudes of the cell centres in degrees, strictly increasing modulo 360
        (a regional window may cross the date line, e.g. ``170 .. 190`` given as
        ``170 .. -170``), spanning less than 360°.

    Notes
    -----
    Arrays at the API are laid out ``(..., lat, lon)`` in the order the
    coordinates are given: a grid with descending latitudes expects fields with
    the northernmost row first.
    """

    lat: np.ndarray
    lon: np.ndarray
    _lon_cont: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        lat = _as_coord(self.lat, "latitude")
        lon = _as_coord(self.lon, "longitude")
        if np.any(np.abs(lat) > 90.0 + 1e-9):
            bad = lat[np.abs(lat) > 90.0 + 1e-9][0]
            raise GridError(f"latitude {bad} is outside [-90, 90] degrees")
        if lat.size > 1:
            d = np.diff(lat)
            if not (np.all(d > 0) or np.all(d < 0)):
                raise GridError(
                    "latitude must be strictly ascending or strictly descending "
                    f"(first values {lat[:4].tolist()})"
                )
        # Longitudes: strictly increasing modulo 360 -> continuous representation.
        steps = np.mod(np.diff(lon), 360.0)
        if np.any(steps <= 0):
            raise GridError(
                f"longitude must be strictly increasing (modulo 360); got {lon[:4].tolist()}..."
            )
        cont = np.concatenate([[lon[0]], lon[0] + np.cumsum(steps)])
        if cont[-1] - cont[0] >= 360.0 - 1e-9:
            raise GridError(
                f"longitudes span {cont[-1] - cont[0]:.6g}° >= 360°: a duplicated wrap point? "
                "drop the repeated longitude"
            )
        cont.setflags(write=False)
        object.__setattr__(self, "lat", lat)
        object.__setattr__(self, "lon", lon)
        object.__setattr__(self, "_lon_cont", cont)

    # ------------------------------------------------------------------ basics
    @property
    def shape(self) -> tuple[int, int]:
        """``(nlat, nlon)``."""
        return (int(self.lat.size), int(self.lon.size))

    @property
    def size(self) -> int:
        """Number of cells."""
        return int(self.lat.size * self.lon.size)

    @property
    def lat_ascending(self) -> bool:
        """Whether latitudes increase with index (a single row counts as ascending)."""
        return bool(self.lat.size < 2 or self.lat[1] > self.lat[0])

    @property
    def periodic(self) -> bool:
        """Whether the longitudes cover the full circle (global in longitude)."""
        n = self.lon.size
        if n < 3:
            return False
        span = self._lon_cont[-1] - self._lon_cont[0]
        return bool(abs(span + span / (n - 1) - 360.0) < _PERIODIC_TOL_DEG * max(1.0, n / 360))

    @property
    def lon_continuous(self) -> np.ndarray:
        """Longitudes unwrapped to be strictly increasing (start at ``lon[0]``)."""
        return self._lon_cont

    def _lat_edges(self) -> np.ndarray:
        return np.clip(_edges_from_centres(self.lat), -90.0, 90.0)

    def _lon_edges(self) -> np.ndarray:
        x = self._lon_cont
        if self.periodic:
            # Wrap: the first/last edges are halfway across the seam, so the
            # cells tile the circle exactly.
            ext = np.concatenate([[x[-1] - 360.0], x, [x[0] + 360.0]])
            return 0.5 * (ext[1:] + ext[:-1])
        return _edges_from_centres(x)

    @property
    def lat_bounds(self) -> np.ndarray:
        """Latitude cell bounds, shape ``(nlat, 2)``, in coordinate order, clipped at the poles."""
        e = self._lat_edges()
        return np.stack([e[:-1], e[1:]], axis=-1)

    @property
    def lon_bounds(self) -> np.ndarray:
        """Longitude cell bounds, shape ``(nlon, 2)``, continuous (may leave [0, 360))."""
        e = self._lon_edges()
        offset = self.lon - self._lon_cont  # back to the given convention, cell by cell
        return np.stack([e[:-1] + offset, e[1:] + offset], axis=-1)

    def cell_area(self, radius: float = EARTH_RADIUS_M) -> np.ndarray:
        """Exact spherical cell areas.

        Parameters
        ----------
        radius : float, optional
            Sphere radius; the default gives m². Pass ``1.0`` for steradians.

        Returns
        -------
        numpy.ndarray
            ``(nlat, nlon)`` areas, ``R² Δλ |sin φ₂ − sin φ₁|``.
        """
        le = np.deg2rad(self._lat_edges())
        dsin = np.abs(np.diff(np.sin(le)))
        dlon = np.deg2rad(np.diff(self._lon_edges()))
        return radius * radius * np.outer(dsin, dlon)

    # ------------------------------------------------------------ constructors
    @classmethod
    def regular(
        cls,
        dlat: float,
        dlon: float | None = None,
        *,
        lat_min: float = -90.0,
        lat_max: float = 90.0,
        lon_min: float = 0.0,
        lon_max: float | None = None,
        descending: bool = False,
    ) -> LatLonGrid:
        """Build a regular grid with centres from ``lat_min`` to ``lat_max`` inclusive.

        Parameters
        ----------
        dlat : float
            Latitude spacing in degrees.
        dlon : float, optional
            Longitude spacing in degrees (default ``dlat``).
        lat_min, lat_max : float
            First and last latitude centre (inclusive).
        lon_min : float
            First longitude centre.
        lon_max : float, optional
            Last longitude centre (inclusive). ``None`` gives a global, periodic
            grid ``lon_min, lon_min + dlon, ..., lon_min + 360 - dlon``.
        descending : bool
            Order latitudes north to south (as ERA5 files do).

        Returns
        -------
        LatLonGrid
            E.g. ``LatLonGrid.regular(1.0)`` is ERA5's 181×360 1° grid and
            ``LatLonGrid.regular(0.25)`` its 721×1440 0.25° grid.
        """
        dlon = dlat if dlon is None else dlon
        if dlat <= 0 or dlon <= 0:
            raise GridError(f"grid spacing must be positive, got dlat={dlat}, dlon={dlon}")
        nlat = round((lat_max - lat_min) / dlat) + 1
        if nlat < 1 or abs(lat_min + (nlat - 1) * dlat - lat_max) > 1e-6 * max(1.0, dlat):
            raise GridError(f"latitude range {lat_min}..{lat_max} is not a multiple of {dlat}")
        lat = lat_min + dlat * np.arange(nlat)
        if lon_max is None:
            nlon = round(360.0 / dlon)
            if abs(nlon * dlon - 360.0) > 1e-6:
                raise GridError(f"360° is not a multiple of the longitude spacing {dlon}")
        else:
            nlon = round((lon_max - lon_min) / dlon) + 1
            if nlon < 1 or abs(lon_min + (nlon - 1) * dlon - lon_max) > 1e-6 * max(1.0, dlon):
                raise GridError(f"longitude range {lon_min}..{lon_max} is not a multiple of {dlon}")
        lon = lon_min + dlon * np.arange(nlon)
        return cls(lat[::-1] if descending else lat, lon)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable description (for model manifests and restarts)."""
        return {"type": "latlon", "lat": self.lat.tolist(), "lon": self.lon.tolist()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatLonGrid:
        """Rebuild a grid from :meth:`to_dict` output; unknown keys are rejected.

        Parameters
        ----------
        data : Mapping
            ``{"type": "latlon", "lat": [...], "lon": [...]}`` (``type`` optional).

        Returns
        -------
        LatLonGrid
            The grid.
        """
        unknown = set(data) - {"type", "lat", "lon"}
        if unknown:
            raise GridError(f"unknown grid keys {sorted(unknown)}; expected type, lat, lon")
        if data.get("type", "latlon") != "latlon":
            raise GridError(f"unsupported grid type {data.get('type')!r}; expected 'latlon'")
        if "lat" not in data or "lon" not in data:
            raise GridError("grid description needs both 'lat' and 'lon'")
        return cls(np.asarray(data["lat"], dtype=np.float64), np.asarray(data["lon"]))

    # -------------------------------------------------------------- comparison
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LatLonGrid):
            return NotImplemented
        return bool(np.array_equal(self.lat, other.lat) and np.array_equal(self.lon, other.lon))

    def __hash__(self) -> int:
        return hash((self.lat.tobytes(), self.lon.tobytes()))

    def __repr__(self) -> str:
        def rng(x: np.ndarray) -> str:
            return f"{x[0]:g}..{x[-1]:g}"

        return (
            f"LatLonGrid({self.shape[0]}x{self.shape[1]}, lat {rng(self.lat)}, "
            f"lon {rng(self.lon)}{', periodic' if self.periodic else ''})"
        )

    def allclose(self, other: LatLonGrid, atol: float = 1e-6) -> bool:
        """Return whether shape and coordinates match within ``atol`` degrees (lon modulo 360).

        Parameters
        ----------
        other : LatLonGrid
            Grid to compare with.
        atol : float
            Absolute tolerance in degrees.

        Returns
        -------
        bool
            ``True`` when the grids match.
        """
        if self.shape != other.shape:
            return False
        dlon = np.mod(self.lon - other.lon + 180.0, 360.0) - 180.0
        return bool(
            np.allclose(self.lat, other.lat, atol=atol, rtol=0) and np.all(abs(dlon) <= atol)
        )

    def is_subset_of(self, other: LatLonGrid, atol: float = 1e-6) -> bool:
        """Whether every point of this grid is also a point of ``other``.

        Parameters
        ----------
        other : LatLonGrid
            The candidate enclosing grid.
        atol : float
            Tolerance in degrees (longitudes compared modulo 360).

        Returns
        -------
        bool
            ``True`` if each latitude and each longitude of ``self`` occurs in ``other``.
        """
        lat_ok = np.all(np.min(np.abs(self.lat[:, None] - other.lat[None, :]), axis=1) <= atol)
        d = np.mod(self.lon[:, None] - other.lon[None, :] + 180.0, 360.0) - 180.0
        lon_ok = np.all(np.min(np.abs(d), axis=1) <= atol)
        return bool(lat_ok and lon_ok)

    def subset_indices(
        self, other: LatLonGrid, atol: float = 1e-6
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return the indices into ``other`` of this grid's latitudes and longitudes.

        Parameters
        ----------
        other : LatLonGrid
            Enclosing grid (see :meth:`is_subset_of`).
        atol : float
            Tolerance in degrees.

        Returns
        -------
        tuple of numpy.ndarray
            ``(ilat, ilon)`` so that ``field_other[..., ilat[:, None], ilon]`` is on ``self``.
        """
        if not self.is_subset_of(other, atol):
            raise GridError(f"{self!r} is not a subset of {other!r}")
        ilat = np.argmin(np.abs(self.lat[:, None] - other.lat[None, :]), axis=1)
        d = np.mod(self.lon[:, None] - other.lon[None, :] + 180.0, 360.0) - 180.0
        ilon = np.argmin(np.abs(d), axis=1)
        return ilat, ilon


# ---------------------------------------------------------------------------
# 1-D weight builders (all vectorised; called once at Regridder init)
# ---------------------------------------------------------------------------


def _region(lat: tuple[float, float] | None, lon: tuple[float, float] | None) -> str:
    parts = []
    if lat is not None:
        parts.append(f"latitudes {lat[0]:.4g}..{lat[1]:.4g}")
    if lon is not None:
        parts.append(f"longitudes {lon[0]:.4g}..{lon[1]:.4g}")
    return " and ".join(parts)


def _bilinear_lat(src: LatLonGrid, dst: LatLonGrid, tol: float) -> sp.csr_matrix:
    """Linear interpolation matrix in latitude, (nlat_dst, nlat_src)."""
    order = np.argsort(src.lat)
    s = src.lat[order]
    edges = src._lat_edges()
    lo, hi = float(min(edges[0], edges[-1])), float(max(edges[0], edges[-1]))
    y = dst.lat
    outside = (y < lo - tol) | (y > hi + tol)
    if np.any(outside):
        bad = y[outside]
        raise GridError(
            f"destination {_region((float(bad.min()), float(bad.max())), None)} not covered "
            f"by the source grid (latitudes {lo:.4g}..{hi:.4g})"
        )
    n = s.size
    if n == 1:
        rows = np.arange(y.size)
        return sp.csr_matrix((np.ones(y.size), (rows, np.full(y.size, order[0]))), (y.size, n))
    # Within the outer half-cells (e.g. between the last centre and the pole) the
    # nearest row is used: constant extrapolation up to the cell bound.
    yc = np.clip(y, s[0], s[-1])
    i0 = np.clip(np.searchsorted(s, yc, side="right") - 1, 0, n - 2)
    w1 = (yc - s[i0]) / (s[i0 + 1] - s[i0])
    rows = np.repeat(np.arange(y.size), 2)
    cols = np.stack([order[i0], order[i0 + 1]], axis=1).ravel()
    vals = np.stack([1.0 - w1, w1], axis=1).ravel()
    m = sp.csr_matrix((vals, (rows, cols)), shape=(y.size, n))
    m.eliminate_zeros()
    return m


def _lon_relative(src: LatLonGrid, lon: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Destination longitudes expressed in the source's continuous frame.

    Returns ``(x, lo, hi)`` where ``lo, hi`` are the source's outer cell edges
    (continuous, relative to ``src.lon[0]``). The 360° frame is cut in the middle
    of the gap the source does not cover, so a destination point a hair west of
    ``lo`` stays just below ``lo`` instead of wrapping to ``lo + 360``.
    """
    e = src._lon_edges() - src._lon_cont[0]
    lo, hi = float(e[0]), float(e[-1])
    start = lo - 0.5 * max(0.0, 360.0 - (hi - lo))
    x = np.mod(np.asarray(lon, dtype=np.float64) - src._lon_cont[0] - start, 360.0) + start
    return x, lo, hi


def _bilinear_lon(src: LatLonGrid, dst: LatLonGrid, tol: float) -> sp.csr_matrix:
    """Linear interpolation matrix in longitude, (nlon_dst, nlon_src), seam-free if periodic."""
    s = src._lon_cont - src._lon_cont[0]
    n = s.size
    x, lo, hi = _lon_relative(src, dst.lon)
    if src.periodic:
        # Append the first column at +360 so the seam interval is an ordinary one.
        s_ext = np.concatenate([s, [360.0]])
        xm = np.mod(x, 360.0)
        i0 = np.clip(np.searchsorted(s_ext, xm, side="right") - 1, 0, n - 1)
        w1 = (xm - s_ext[i0]) / (s_ext[i0 + 1] - s_ext[i0])
        c0, c1 = i0, (i0 + 1) % n
    else:
        outside = (x < lo - tol) | (x > hi + tol)
        if np.any(outside):
            bad = dst.lon[outside]
            raise GridError(
                f"destination {_region(None, (float(bad.min()), float(bad.max())))} not covered "
                f"by the source grid (longitudes {src._lon_cont[0] + lo:.4g}.."
                f"{src._lon_cont[0] + hi:.4g})"
            )
        if n == 1:
            rows = np.arange(x.size)
            return sp.csr_matrix((np.ones(x.size), (rows, np.zeros(x.size, int))), (x.size, 1))
        xc = np.clip(x, s[0], s[-1])
        i0 = np.clip(np.searchsorted(s, xc, side="right") - 1, 0, n - 2)
        w1 = (xc - s[i0]) / (s[i0 + 1] - s[i0])
        c0, c1 = i0, i0 + 1
    rows = np.repeat(np.arange(x.size), 2)
    cols = np.stack([c0, c1], axis=1).ravel()
    vals = np.stack([1.0 - w1, w1], axis=1).ravel()
    m = sp.csr_matrix((vals, (rows, cols)), shape=(x.size, n))
    m.eliminate_zeros()
    return m


def _overlap(a0: np.ndarray, a1: np.ndarray, b0: np.ndarray, b1: np.ndarray) -> np.ndarray:
    """Overlap lengths of intervals [a0, a1] (rows) and [b0, b1] (columns)."""
    return np.clip(
        np.minimum(a1[:, None], b1[None, :]) - np.maximum(a0[:, None], b0[None, :]), 0.0, None
    )


def _conservative_lat(src: LatLonGrid, dst: LatLonGrid, tol: float) -> sp.csr_matrix:
    """Area-fraction matrix in latitude: overlap of sin(lat) bands / dst band width."""
    se, de = src._lat_edges(), dst._lat_edges()
    s0, s1 = np.minimum(se[:-1], se[1:]), np.maximum(se[:-1], se[1:])
    d0, d1 = np.minimum(de[:-1], de[1:]), np.maximum(de[:-1], de[1:])
    ov_deg = _overlap(d0, d1, s0, s1)
    uncovered = (d1 - d0) - ov_deg.sum(axis=1)
    if np.any(uncovered > tol):
        bad = uncovered > tol
        raise GridError(
            f"destination cells at {_region((float(d0[bad].min()), float(d1[bad].max())), None)} "
            f"not covered by the source grid (latitudes {s0.min():.4g}..{s1.max():.4g})"
        )
    sin = np.sin
    r = np.deg2rad
    ov = np.clip(
        sin(r(np.minimum(d1[:, None], s1[None, :]))) - sin(r(np.maximum(d0[:, None], s0[None, :]))),
        0.0,
        None,
    )
    ov[ov_deg <= 0] = 0.0
    # Renormalise by the covered part (a sliver below ``tol`` is ignored, not zero-filled).
    tot = ov.sum(axis=1, keepdims=True)
    return sp.csr_matrix(ov / np.where(tot > 0, tot, 1.0))


def _conservative_lon(src: LatLonGrid, dst: LatLonGrid, tol: float) -> sp.csr_matrix:
    """Length-fraction matrix in longitude, accounting for the 360° wrap."""
    se = src._lon_edges() - src._lon_cont[0]
    s0, s1 = se[:-1], se[1:]
    de = dst._lon_edges()
    # Put each dst cell's west edge in the source frame, then compare with shifts.
    x0, lo, _hi = _lon_relative(src, de[:-1])
    x1 = x0 + np.diff(de)
    ov = np.zeros((x0.size, s0.size))
    for shift in (-360.0, 0.0, 360.0):  # three fixed shifts, not a per-cell loop
        ov += _overlap(x0 + shift, x1 + shift, s0, s1)
    uncovered = (x1 - x0) - ov.sum(axis=1)
    if np.any(uncovered > tol):
        bad = uncovered > tol
        w = de[:-1][bad]
        e = de[1:][bad]
        raise GridError(
            f"destination cells at {_region(None, (float(w.min()), float(e.max())))} not covered "
            f"by the source grid (longitudes {src._lon_cont[0] + lo:.4g}.."
            f"{src._lon_cont[0] + s1[-1]:.4g})"
        )
    tot = ov.sum(axis=1, keepdims=True)
    return sp.csr_matrix(ov / np.where(tot > 0, tot, 1.0))


# ---------------------------------------------------------------------------
# Regridder
# ---------------------------------------------------------------------------


class Regridder:
    """Precomputed sparse remapping from one grid to another.

    Parameters
    ----------
    src, dst : LatLonGrid
        Source and destination grids.
    method : {"bilinear", "conservative"}
        ``bilinear``: separable linear interpolation between cell centres
        (seam-free across 0/360 on periodic grids; constant up to the pole/edge
        in the outermost half cells). ``conservative``: first-order conservative
        remapping with exact spherical overlap areas of lat-lon cells; it
        preserves the area-weighted integral.
    skipna : bool
        Default NaN handling of :meth:`__call__`: renormalise the weights over
        the finite source cells (e.g. E-OBS sea points); destination cells with
        no finite contribution become NaN.
    tolerance : float
        Degrees by which the destination may extend beyond the source's cell
        bounds before :class:`~precipdiff.errors.GridError` is raised.

    Notes
    -----
    All the work happens here at construction; :meth:`__call__` is one sparse
    matrix product on a ``(batch, nsrc)`` view of the input.
    """

    def __init__(
        self,
        src: LatLonGrid,
        dst: LatLonGrid,
        method: RegridMethod = "bilinear",
        *,
        skipna: bool = False,
        tolerance: float = 1e-3,
    ) -> None:
        if method == "bilinear":
            wlat, wlon = _bilinear_lat(src, dst, tolerance), _bilinear_lon(src, dst, tolerance)
        elif method == "conservative":
            wlat = _conservative_lat(src, dst, tolerance)
            wlon = _conservative_lon(src, dst, tolerance)
        else:
            raise GridError(
                f"unknown regridding method {method!r}; use 'bilinear' or 'conservative'"
            )
        weights = sp.kron(wlat, wlon, format="csr")
        weights.eliminate_zeros()
        self._init(weights, src.shape, dst.shape, method, src, dst, skipna)

    def _init(
        self,
        weights: sp.spmatrix,
        src_shape: tuple[int, ...],
        dst_shape: tuple[int, ...],
        method: str,
        src: LatLonGrid | None,
        dst: LatLonGrid | None,
        skipna: bool,
    ) -> None:
        w = sp.csr_matrix(weights, dtype=np.float64)
        w.sum_duplicates()
        w.sort_indices()
        self.weights: sp.csr_matrix = w
        self._w32 = w.astype(np.float32)  # float32 fields stay float32 (no upcast copy)
        self.src_shape = tuple(int(n) for n in src_shape)
        self.dst_shape = tuple(int(n) for n in dst_shape)
        self.method = method
        self.src = src
        self.dst = dst
        self.skipna = skipna

    @classmethod
    def from_weights(
        cls,
        weights: sp.spmatrix,
        src_shape: tuple[int, ...],
        dst_shape: tuple[int, ...],
        *,
        src: LatLonGrid | None = None,
        dst: LatLonGrid | None = None,
        method: str = "custom",
        skipna: bool = False,
    ) -> Regridder:
        """Wrap an existing sparse weight matrix ``(ndst, nsrc)``.

        Parameters
        ----------
        weights : scipy.sparse matrix
            Row ``i`` holds the weights of destination cell ``i`` (C-order flat index).
        src_shape, dst_shape : tuple of int
            Array shapes of one source / destination field.
        src, dst : LatLonGrid, optional
            The grids, when they are lat-lon grids.
        method : str
            Label recorded in :attr:`method`.
        skipna : bool
            Default NaN handling (see :class:`Regridder`).

        Returns
        -------
        Regridder
            The regridder.
        """
        nsrc, ndst = math.prod(src_shape), math.prod(dst_shape)
        if weights.shape != (ndst, nsrc):
            raise GridError(
                f"weight matrix has shape {weights.shape}, expected ({ndst}, {nsrc}) for "
                f"source {tuple(src_shape)} and destination {tuple(dst_shape)}"
            )
        if src is not None and src.shape != tuple(src_shape):
            raise GridError(f"source grid {src!r} does not match source shape {src_shape}")
        if dst is not None and dst.shape != tuple(dst_shape):
            raise GridError(f"destination grid {dst!r} does not match shape {dst_shape}")
        obj = cls.__new__(cls)
        obj._init(weights, src_shape, dst_shape, method, src, dst, skipna)
        return obj

    def __repr__(self) -> str:
        return (
            f"Regridder({self.method}, {self.src_shape} -> {self.dst_shape}, "
            f"nnz={self.weights.nnz})"
        )

    def __call__(self, field: npt.ArrayLike, *, skipna: bool | None = None) -> np.ndarray:
        """Remap ``field[..., *src_shape]`` to ``[..., *dst_shape]``.

        Parameters
        ----------
        field : array_like
            Source field(s); leading dimensions are batched.
        skipna : bool, optional
            Override the constructor's NaN handling for this call.

        Returns
        -------
        numpy.ndarray
            Remapped field, float32 for float32 input, float64 otherwise.
        """
        x = np.asarray(field)
        k = len(self.src_shape)
        if x.shape[x.ndim - k :] != self.src_shape or x.ndim < k:
            raise GridError(
                f"field shape {x.shape} does not end with the source grid shape {self.src_shape}"
            )
        lead = x.shape[: x.ndim - k]
        if x.dtype == np.float32:
            w = self._w32
        else:
            x = x.astype(np.float64, copy=False)
            w = self.weights
        x2 = x.reshape(-1, w.shape[1])
        use_mask = self.skipna if skipna is None else skipna
        if use_mask:
            valid = np.isfinite(x2)
            num = (w @ np.where(valid, x2, 0).T).T
            den = (w @ valid.astype(x2.dtype).T).T
            with np.errstate(invalid="ignore", divide="ignore"):
                out = np.where(den > 1e-6, num / np.where(den > 0, den, 1), np.nan)
        else:
            out = (w @ x2.T).T
        return np.ascontiguousarray(out, dtype=x.dtype).reshape(*lead, *self.dst_shape)


# ---------------------------------------------------------------------------
# Block coarsening (training targets: E-OBS 0.5° -> 2° is a ×4 block mean)
# ---------------------------------------------------------------------------


def coarsen_grid(grid: LatLonGrid, factor: int) -> LatLonGrid:
    """Grid of ``factor × factor`` blocks of ``grid`` (centres = block-centre means).

    Parameters
    ----------
    grid : LatLonGrid
        Fine grid; its shape must be divisible by ``factor``.
    factor : int
        Block size.

    Returns
    -------
    LatLonGrid
        Coarse grid whose cell bounds coincide with block bounds on regular grids.
    """
    nlat, nlon = grid.shape
    if factor < 1 or nlat % factor or nlon % factor:
        raise GridError(
            f"grid shape {grid.shape} is not divisible by the coarsening factor {factor}"
        )
    lat = grid.lat.reshape(-1, factor).mean(axis=1)
    lon = grid.lon_continuous.reshape(-1, factor).mean(axis=1)
    return LatLonGrid(lat, lon)


def coarsen_block_mean(
    field: npt.ArrayLike,
    factor: int,
    *,
    grid: LatLonGrid | None = None,
    skipna: bool = True,
    min_valid_fraction: float = 0.5,
) -> np.ndarray:
    """Mean over ``factor × factor`` blocks of the last two axes, NaN-aware.

    Parameters
    ----------
    field : array_like
        ``(..., nlat, nlon)`` with ``nlat`` and ``nlon`` divisible by ``factor``.
    factor : int
        Block size (4 for E-OBS 0.5° → 2°).
    grid : LatLonGrid, optional
        Fine grid: if given, the mean is weighted by exact cell areas, which makes
        it equal to conservative remapping onto :func:`coarsen_grid`.
    skipna : bool
        Ignore NaN cells (e.g. sea in E-OBS); otherwise any NaN makes the block NaN.
    min_valid_fraction : float
        With ``skipna``, blocks whose valid (area) fraction is below this become NaN.

    Returns
    -------
    numpy.ndarray
        ``(..., nlat // factor, nlon // factor)``, float32 for float32 input.
    """
    x = np.asarray(field)
    if x.ndim < 2:
        raise GridError(f"field must be at least 2-D (..., lat, lon), got shape {x.shape}")
    nlat, nlon = x.shape[-2:]
    if factor < 1 or nlat % factor or nlon % factor:
        raise GridError(f"field shape {x.shape} is not divisible by the coarsening factor {factor}")
    if grid is not None and grid.shape != (nlat, nlon):
        raise GridError(f"grid {grid!r} does not match field shape {x.shape}")
    out_dtype = x.dtype if x.dtype == np.float32 else np.float64
    xf = x.astype(np.float64, copy=False)
    w = np.ones((nlat, nlon)) if grid is None else grid.cell_area(1.0)
    shape = (*x.shape[:-2], nlat // factor, factor, nlon // factor, factor)
    xb = xf.reshape(shape)
    wb = np.broadcast_to(w.reshape(nlat // factor, factor, nlon // factor, factor), shape)
    valid = np.isfinite(xb) if skipna else np.ones(shape, bool)
    num = np.where(valid, xb * wb, 0.0).sum(axis=(-3, -1))
    if not skipna:
        num = (xb * wb).sum(axis=(-3, -1))
    den = np.where(valid, wb, 0.0).sum(axis=(-3, -1))
    tot = wb.sum(axis=(-3, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(den >= min_valid_fraction * tot, num / np.where(den > 0, den, 1), np.nan)
    return out.astype(out_dtype)
