"""ESMF/SCRIP remapping weight files (netCDF): reading and writing.

A weight file holds the sparse matrix ``S`` in 1-based ``row``/``col`` form with
the grids' dimensions (``src_grid_dims``/``dst_grid_dims``, fastest-varying
first) and, for rectilinear grids, their cell centres. :func:`read_scrip_weights`
returns a :class:`~precipdiff.grids.Regridder`; :func:`write_scrip_weights`
writes one. The regridding maths stays in :mod:`precipdiff.grids` (no file I/O
there).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from precipdiff.errors import GridError
from precipdiff.grids import LatLonGrid, Regridder
from precipdiff.io import cf, import_netcdf4
from precipdiff.io.atomic import atomic_path

__all__ = ["read_scrip_weights", "write_scrip_weights"]


def read_scrip_weights(
    path: str | Path,
    *,
    src: LatLonGrid | None = None,
    dst: LatLonGrid | None = None,
    skipna: bool = False,
) -> Regridder:
    """Read an ESMF/SCRIP weight file (``row``, ``col``, ``S``, 1-based indices).

    Parameters
    ----------
    path : str or pathlib.Path
        netCDF file as written by ``ESMF_RegridWeightGen`` or :func:`write_scrip_weights`.
    src, dst : LatLonGrid, optional
        Grids to attach; checked against ``src_grid_dims``/``dst_grid_dims``.
        When omitted, lat-lon grids are rebuilt from ``xc_*``/``yc_*`` if the
        file's grids are rectilinear, otherwise only shapes are known (e.g. a
        cubed-sphere source).
    skipna : bool
        Default NaN handling (see :class:`Regridder`).

    Returns
    -------
    Regridder
        The regridder. ``src_shape`` is ``src_grid_dims`` reversed (SCRIP
        stores dimensions fastest-varying first, i.e. ``(nlon, nlat)``).
    """
    nc4 = import_netcdf4()
    path = Path(path)
    if not path.exists():
        raise GridError(f"SCRIP weight file {path} does not exist")
    with nc4.Dataset(path) as ds:
        missing = [v for v in ("row", "col", "S") if v not in ds.variables]
        if missing:
            raise GridError(
                f"{path} is not an ESMF/SCRIP weight file: missing variables {missing} "
                f"(has {sorted(ds.variables)})"
            )
        n_a = len(ds.dimensions["n_a"]) if "n_a" in ds.dimensions else None
        n_b = len(ds.dimensions["n_b"]) if "n_b" in ds.dimensions else None
        row = np.asarray(ds.variables["row"][:], dtype=np.int64) - 1
        col = np.asarray(ds.variables["col"][:], dtype=np.int64) - 1
        s = np.asarray(ds.variables["S"][:], dtype=np.float64)

        def dims(name: str, n: int | None) -> tuple[int, ...]:
            if name in ds.variables:
                return tuple(int(v) for v in np.asarray(ds.variables[name][:])[::-1])
            if n is None:
                raise GridError(f"{path}: neither {name} nor its n_a/n_b dimension present")
            return (n,)

        src_shape, dst_shape = dims("src_grid_dims", n_a), dims("dst_grid_dims", n_b)
        for tag, shape, n in (("a", src_shape, n_a), ("b", dst_shape, n_b)):
            if n is not None and math.prod(shape) != n:
                raise GridError(f"{path}: grid dims {shape} disagree with n_{tag}={n}")
        if src is None:
            src = _grid_from_scrip(ds, "a", src_shape)
        if dst is None:
            dst = _grid_from_scrip(ds, "b", dst_shape)
    nsrc, ndst = math.prod(src_shape), math.prod(dst_shape)
    if row.size and (row.min() < 0 or row.max() >= ndst or col.min() < 0 or col.max() >= nsrc):
        raise GridError(f"{path}: row/col indices out of range for grids {nsrc} -> {ndst}")
    w = sp.csr_matrix((s, (row, col)), shape=(ndst, nsrc))
    method = "scrip"
    return Regridder.from_weights(
        w, src_shape, dst_shape, src=src, dst=dst, method=method, skipna=skipna
    )


def write_scrip_weights(regridder: Regridder, path: str | Path) -> None:
    """Write the weights as an ESMF-style weight file (1-based ``row``/``col``/``S``).

    Parameters
    ----------
    regridder : Regridder
        The weights to write, with its grids' cell centres when it has them.
    path : str or pathlib.Path
        Output netCDF path (written atomically).
    """
    nc4 = import_netcdf4()
    coo = regridder.weights.tocoo()
    order = np.lexsort((coo.col, coo.row))
    with atomic_path(path) as tmp, nc4.Dataset(tmp, "w", format="NETCDF4") as ds:
        ds.title = "precipdiff remapping weights"
        ds.map_method = regridder.method
        ds.conventions = "SCRIP"  # the weight-file layout (ESMF reads this attribute)
        ds.Conventions = cf.CONVENTIONS  # and the attributes are CF
        ds.history = cf.history_line()
        ds.createDimension("n_a", math.prod(regridder.src_shape))
        ds.createDimension("n_b", math.prod(regridder.dst_shape))
        ds.createDimension("n_s", coo.nnz)
        ds.createDimension("src_grid_rank", len(regridder.src_shape))
        ds.createDimension("dst_grid_rank", len(regridder.dst_shape))

        def var(name: str, dtype: str, dims: tuple[str, ...], long_name: str, **attrs: str) -> Any:
            v = ds.createVariable(name, dtype, dims)
            v.long_name = long_name
            v.setncatts(attrs)
            return v

        var("src_grid_dims", "i4", ("src_grid_rank",), "source grid dimensions (lon, lat)")[:] = (
            np.array(regridder.src_shape[::-1], dtype=np.int32)
        )
        var("dst_grid_dims", "i4", ("dst_grid_rank",), "destination grid dimensions")[:] = np.array(
            regridder.dst_shape[::-1], dtype=np.int32
        )
        var("row", "i4", ("n_s",), "destination cell of each weight (1-based)")[:] = (
            coo.row[order] + 1
        ).astype(np.int32)
        var("col", "i4", ("n_s",), "source cell of each weight (1-based)")[:] = (
            coo.col[order] + 1
        ).astype(np.int32)
        var("S", "f8", ("n_s",), "remapping weight", units="1")[:] = coo.data[order]
        for tag, grid in (("a", regridder.src), ("b", regridder.dst)):
            if grid is None:
                continue
            lat2, lon2 = np.meshgrid(grid.lat, grid.lon, indexing="ij")
            n = "n_" + tag
            which = "source" if tag == "a" else "destination"
            var("yc_" + tag, "f8", (n,), f"{which} cell centre latitude", units="degrees")[:] = (
                lat2.ravel()
            )
            var("xc_" + tag, "f8", (n,), f"{which} cell centre longitude", units="degrees")[:] = (
                lon2.ravel()
            )
            area = var("area_" + tag, "f8", (n,), f"{which} cell area", units="sr")
            area[:] = grid.cell_area(1.0).ravel()
            var("mask_" + tag, "i4", (n,), f"{which} cell mask (1: used)")[:] = np.ones(
                grid.size, np.int32
            )
        frac_b = np.asarray(regridder.weights.sum(axis=1)).ravel()
        var("frac_b", "f8", ("n_b",), "covered fraction of each destination cell", units="1")[:] = (
            frac_b
        )


def _grid_from_scrip(ds: Any, tag: str, shape: tuple[int, ...]) -> LatLonGrid | None:
    """Rebuild a rectilinear lat-lon grid from ``yc_<tag>``/``xc_<tag>``, if possible."""
    if len(shape) != 2 or f"yc_{tag}" not in ds.variables or f"xc_{tag}" not in ds.variables:
        return None
    yv, xv = ds.variables[f"yc_{tag}"], ds.variables[f"xc_{tag}"]
    yc = np.asarray(yv[:], dtype=np.float64).reshape(shape)
    xc = np.asarray(xv[:], dtype=np.float64).reshape(shape)
    if "rad" in str(getattr(yv, "units", "")).lower():
        yc, xc = np.rad2deg(yc), np.rad2deg(xc)
    lat, lon = yc[:, 0], xc[0, :]
    if not (np.allclose(yc, lat[:, None]) and np.allclose(xc, lon[None, :])):
        return None  # curvilinear: shapes only
    try:
        return LatLonGrid(lat, lon)
    except GridError:
        return None
