"""The training store: daily predictors and precipitation, prepared once, read many times.

``precipdiff prepare`` (:mod:`precipdiff.offline.train.prepare`) writes it; the training
stages read only it (``data.store``). It is a Zarr group (format 2, readable by
``xarray.open_zarr``) holding, for every day of the prepared period:

============================  =========================  ================================
array                         shape                      chunks
============================  =========================  ================================
``<predictor>`` (``hus850``)  time x lat x lon           one day (the coarse grid)
``pr``                        time x lat_fine x lon_fine one day x ``fine_chunk``
``pr_coarse``                 time x lat x lon           one day
``moments``                   time x moment_var x 3      ``days_per_task`` days
``samples_per_day``           time x moment_var          ``days_per_task`` days
``done``                      task                       one task
============================  =========================  ================================

Values are in canonical units (predictors: Pa, kg kg-1, m s-1, K; precipitation:
mm/day daily means, NaN = missing); latitude ascends. ``pr_coarse`` is the
NaN-aware block mean of ``pr`` (:func:`precipdiff.grids.coarsen_block_mean`),
exactly as the stages define the coarse target. ``moments`` holds, per day, the
count, sum and sum of squares of every predictor and of the transformed coarse
precipitation over valid cells, so the normalisation statistics of any split
are a sum over its days (:meth:`TrainingStore.stats`) instead of a pass over
the data. ``done`` marks finished units of work, which makes ``prepare``
resumable. The group attributes (``precipdiff_store``) describe the grids, the
variables, the transform of the moments, the split of the stored statistics
and the configuration the store was prepared with.

Small fine-grid chunks (default 144 x 144) make a random 128 x 128 patch cost
at most four chunk reads, which is what keeps a GPU fed
(``bench/bench_train_loader.py``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from precipdiff.errors import ConfigError, InputError
from precipdiff.grids import LatLonGrid

#: Format version written into the store's attributes.
STORE_FORMAT = 1
#: Group attribute holding the store's description.
ATTR = "precipdiff_store"
#: Name of the transformed coarse precipitation in ``moments``.
TARGET_MOMENTS = "pr_coarse_transformed"
#: The three statistics stored per day and variable.
MOMENT_STATS = ("count", "sum", "sum_sq")


def _zarr() -> Any:
    try:
        import zarr
    except ImportError as exc:  # pragma: no cover - zarr is a dependency
        raise InputError("training stores need the 'zarr' package (pip install zarr)") from exc
    return zarr


def _compressor() -> Any:
    import numcodecs

    # lz4 decompresses at GB/s: a training store is read far more often than written.
    return numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE)


@dataclass(frozen=True)
class StoreLayout:
    """What a new store holds (the arguments of :func:`create_store`).

    Parameters
    ----------
    days
        The days, ``datetime64[D]``, consecutive.
    fine_grid, coarse_grid
        Grids of ``pr`` and of the predictors / ``pr_coarse``.
    predictors
        Predictor variable specs (``VariableSpec.to_dict()`` form).
    target
        The precipitation spec (``VariableSpec.to_dict()`` form).
    coarsen_factor, min_valid_fraction
        How ``pr_coarse`` is made from ``pr``.
    transform
        ``PrecipTransform.to_dict()`` of the stored target moments.
    fine_chunk
        ``(lat, lon)`` chunk of ``pr``.
    days_per_task
        Days per unit of work.
    config
        The prepare configuration (JSON-serialisable), compared on resume.
    """

    days: np.ndarray
    fine_grid: LatLonGrid
    coarse_grid: LatLonGrid
    predictors: list[dict[str, Any]]
    target: dict[str, Any]
    coarsen_factor: int
    min_valid_fraction: float
    transform: dict[str, Any]
    fine_chunk: tuple[int, int]
    days_per_task: int
    config: dict[str, Any]

    @property
    def n_tasks(self) -> int:
        """Number of units of work."""
        return -(-int(self.days.size) // self.days_per_task)

    @property
    def moment_variables(self) -> list[str]:
        """Variables of the ``moments`` array, in order."""
        return [str(p["name"]) for p in self.predictors] + [TARGET_MOMENTS]


def _days_to_int(days: np.ndarray) -> np.ndarray:
    return np.asarray(days, dtype="datetime64[D]").astype(np.int64)


def create_store(path: str | Path, layout: StoreLayout) -> None:
    """Create an empty training store (arrays filled with NaN, nothing done).

    Parameters
    ----------
    path
        The Zarr directory (must not exist).
    layout
        What it holds.
    """
    zarr = _zarr()
    path = Path(path)
    if path.exists():
        raise ConfigError(f"{path} exists already")
    nt = int(layout.days.size)
    hc, wc = layout.coarse_grid.shape
    hf, wf = layout.fine_grid.shape
    comp = _compressor()
    root = zarr.open_group(str(path), mode="w-", zarr_format=2)

    def array(
        name: str,
        data: np.ndarray | None,
        shape: tuple[int, ...],
        chunks: tuple[int, ...],
        dtype: Any,
        dims: Sequence[str],
        attrs: Mapping[str, Any] | None = None,
        fill: Any = None,
    ) -> None:
        a = root.create_array(
            name,
            shape=shape,
            chunks=chunks,
            dtype=dtype,
            compressors=comp,
            fill_value=fill,
        )
        # xarray reads the dimension names of a format-2 store from this attribute.
        a.attrs.update({"_ARRAY_DIMENSIONS": list(dims), **(attrs or {})})
        if data is not None:
            a[...] = data

    array(
        "time",
        _days_to_int(layout.days),
        (nt,),
        (max(nt, 1),),
        np.int64,
        ["time"],
        {"units": "days since 1970-01-01", "calendar": "proleptic_gregorian"},
    )
    deg_n = {"units": "degrees_north", "standard_name": "latitude"}
    deg_e = {"units": "degrees_east", "standard_name": "longitude"}
    array("lat", layout.coarse_grid.lat, (hc,), (hc,), np.float64, ["lat"], deg_n)
    array("lon", layout.coarse_grid.lon, (wc,), (wc,), np.float64, ["lon"], deg_e)
    array("lat_fine", layout.fine_grid.lat, (hf,), (hf,), np.float64, ["lat_fine"], deg_n)
    array("lon_fine", layout.fine_grid.lon, (wf,), (wf,), np.float64, ["lon_fine"], deg_e)
    for spec in layout.predictors:
        attrs = {"units": spec["units"], "standard_name": spec["standard_name"]}
        if spec.get("level_hpa") is not None:
            attrs["level_hpa"] = spec["level_hpa"]
        array(
            str(spec["name"]),
            None,
            (nt, hc, wc),
            (1, hc, wc),
            np.float32,
            ["time", "lat", "lon"],
            attrs,
            np.nan,
        )
    pr_attrs = {"units": "mm/day", "standard_name": layout.target["standard_name"]}
    fc = (1, min(layout.fine_chunk[0], hf), min(layout.fine_chunk[1], wf))
    array(
        "pr", None, (nt, hf, wf), fc, np.float32, ["time", "lat_fine", "lon_fine"], pr_attrs, np.nan
    )
    array(
        "pr_coarse",
        None,
        (nt, hc, wc),
        (1, hc, wc),
        np.float32,
        ["time", "lat", "lon"],
        {**pr_attrs, "long_name": "block mean of pr"},
        np.nan,
    )
    nv = len(layout.moment_variables)
    dpt = layout.days_per_task
    array(
        "moments",
        None,
        (nt, nv, len(MOMENT_STATS)),
        (dpt, nv, len(MOMENT_STATS)),
        np.float64,
        ["time", "moment_variable", "moment_stat"],
        {"moment_variables": layout.moment_variables, "moment_stats": list(MOMENT_STATS)},
        np.nan,
    )
    array(
        "samples_per_day",
        None,
        (nt, nv),
        (dpt, nv),
        np.int32,
        ["time", "moment_variable"],
        {"long_name": "source time steps averaged into each day (target: of pr)"},
        0,
    )
    array("done", None, (layout.n_tasks,), (1,), np.uint8, ["task"], None, 0)
    root.attrs[ATTR] = {
        "format": STORE_FORMAT,
        "complete": False,
        "predictors": layout.predictors,
        "target": layout.target,
        "fine_grid": layout.fine_grid.to_dict(),
        "coarse_grid": layout.coarse_grid.to_dict(),
        "coarsen_factor": int(layout.coarsen_factor),
        "min_valid_fraction": float(layout.min_valid_fraction),
        "transform": layout.transform,
        "days_per_task": int(dpt),
        "first_day": str(layout.days[0]) if nt else None,
        "last_day": str(layout.days[-1]) if nt else None,
        "config": layout.config,
    }


def task_days(n_days: int, days_per_task: int, task: int) -> slice:
    """Day positions of one unit of work.

    Parameters
    ----------
    n_days
        Days in the store.
    days_per_task
        Days per unit of work.
    task
        The unit of work.

    Returns
    -------
    slice
        Positions along ``time``.
    """
    start = task * days_per_task
    return slice(start, min(start + days_per_task, n_days))


class _LocalChunks:
    """Direct reads of one local format-2 Zarr array, chunk file by chunk file.

    The loader's hot path: a random patch is a few chunk files of ``pr``; going
    through zarr's asynchronous machinery costs more than decompressing them.
    Used only for arrays laid out as :func:`create_store` writes them (C order,
    no filters, a numcodecs compressor or none); anything else reads through zarr.
    """

    def __init__(self, directory: Path, meta: dict[str, Any]) -> None:
        import numcodecs

        self.dir = directory
        self.shape = tuple(int(n) for n in meta["shape"])
        self.chunks = tuple(int(n) for n in meta["chunks"])
        self.dtype = np.dtype(meta["dtype"])
        fill = meta.get("fill_value")
        self.fill = np.nan if fill in ("NaN", None) else fill
        self.codec = None if meta["compressor"] is None else numcodecs.get_codec(meta["compressor"])
        self.sep = meta.get("dimension_separator") or "."

    @classmethod
    def open(cls, directory: Path) -> _LocalChunks | None:
        try:
            meta = json.loads((directory / ".zarray").read_text())
        except (OSError, ValueError):
            return None
        if meta.get("zarr_format") != 2 or meta.get("order") != "C" or meta.get("filters"):
            return None
        return cls(directory, meta)

    def _chunk(self, index: tuple[int, ...]) -> np.ndarray:
        path = self.dir / self.sep.join(str(i) for i in index)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return np.full(self.chunks, self.fill, self.dtype)
        data = self.codec.decode(raw) if self.codec is not None else raw
        return np.frombuffer(data, self.dtype).reshape(self.chunks)

    def window(self, t: int, rows: slice, cols: slice) -> np.ndarray:
        """``array[t, rows, cols]`` of a ``(time, lat, lon)`` array (plain slices)."""
        r0, r1, _ = rows.indices(self.shape[1])
        c0, c1, _ = cols.indices(self.shape[2])
        ct, ch, cw = self.chunks
        out = np.empty((r1 - r0, c1 - c0), self.dtype)
        for i in range(r0 // ch, (r1 - 1) // ch + 1):
            for j in range(c0 // cw, (c1 - 1) // cw + 1):
                block = self._chunk((t // ct, i, j))[t % ct]
                a0, a1 = max(r0, i * ch), min(r1, (i + 1) * ch)
                b0, b1 = max(c0, j * cw), min(c1, (j + 1) * cw)
                out[a0 - r0 : a1 - r0, b0 - c0 : b1 - c0] = block[
                    a0 - i * ch : a1 - i * ch, b0 - j * cw : b1 - j * cw
                ]
        return out


def _moments(x: np.ndarray) -> np.ndarray:
    """Per-sample (count, sum, sum of squares) over finite values, float64."""
    flat = np.asarray(x, np.float64).reshape(x.shape[0], -1)
    ok = np.isfinite(flat)
    v = np.where(ok, flat, 0.0)
    return np.stack([ok.sum(1).astype(np.float64), v.sum(1), (v * v).sum(1)], axis=1)


class TrainingStore:
    """Read access to a prepared training store.

    Parameters
    ----------
    path
        The store directory.
    require_complete
        Refuse a store whose ``prepare`` has not finished.

    Notes
    -----
    Objects pickle by path (each worker process reopens the store), so a store
    can be handed to loader workers.
    """

    def __init__(self, path: str | Path, require_complete: bool = True) -> None:
        self.path = Path(path)
        self._require_complete = require_complete
        self._open()

    def _open(self) -> None:
        zarr = _zarr()
        if not self.path.is_dir():
            raise ConfigError(
                f"training store {self.path} does not exist: run `precipdiff prepare CONFIG` first"
            )
        try:
            root = zarr.open_group(str(self.path), mode="r")
        except Exception as exc:  # zarr raises several kinds for "not a group"
            raise InputError(f"{self.path} is not a Zarr training store: {exc}") from exc
        meta = root.attrs.get(ATTR)
        if not isinstance(meta, dict):
            raise InputError(
                f"{self.path} is a Zarr store but not a precipdiff training store "
                f"(no '{ATTR}' attribute); write one with `precipdiff prepare`"
            )
        if meta.get("format") != STORE_FORMAT:
            raise InputError(
                f"{self.path}: training store format {meta.get('format')} is not supported "
                f"(this precipdiff reads format {STORE_FORMAT}); prepare it again"
            )
        if self._require_complete and not meta.get("complete"):
            raise InputError(
                f"training store {self.path} is incomplete: `precipdiff prepare` has not "
                "finished (rerun it: it resumes)"
            )
        self._root = root
        self.meta: dict[str, Any] = meta
        self.days = np.asarray(root["time"][...], np.int64).astype("datetime64[D]")
        self.fine_grid = LatLonGrid.from_dict(meta["fine_grid"])
        self.coarse_grid = LatLonGrid.from_dict(meta["coarse_grid"])
        self.predictor_names: list[str] = [str(p["name"]) for p in meta["predictors"]]
        self.coarsen_factor = int(meta["coarsen_factor"])
        self.min_valid_fraction = float(meta["min_valid_fraction"])
        self.moment_variables: list[str] = list(root["moments"].attrs["moment_variables"])
        self._arrays: dict[str, Any] = {}
        self._chunks: dict[str, _LocalChunks | None] = {}

    def _array(self, name: str) -> Any:
        """Return the zarr array ``name``, opened once (opening costs as much as a read)."""
        arr = self._arrays.get(name)
        if arr is None:
            arr = self._arrays[name] = self._root[name]
        return arr

    def __getstate__(self) -> dict[str, Any]:
        return {"path": str(self.path), "require_complete": self._require_complete}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path = Path(state["path"])
        self._require_complete = bool(state["require_complete"])
        self._open()

    def __repr__(self) -> str:
        return (
            f"TrainingStore({str(self.path)!r}, {self.days.size} days "
            f"{self.meta.get('first_day')}..{self.meta.get('last_day')}, predictors "
            f"{self.predictor_names}, fine {self.fine_grid.shape}, coarse {self.coarse_grid.shape})"
        )

    @property
    def transform(self) -> dict[str, Any]:
        """``PrecipTransform.to_dict()`` of the stored target moments."""
        return dict(self.meta["transform"])

    # -- reading ------------------------------------------------------------------

    def _check_names(self, names: Sequence[str]) -> None:
        missing = [n for n in names if n not in self.predictor_names]
        if missing:
            raise ConfigError(
                f"training store {self.path} has no predictor(s) {missing}; it holds "
                f"{self.predictor_names}"
            )

    def _local(self, name: str) -> _LocalChunks | None:
        """Direct chunk reads of array ``name`` when the store is local (else ``None``)."""
        if name not in self._chunks:
            self._chunks[name] = _LocalChunks.open(self.path / name)
        return self._chunks[name]

    def _rows(
        self, name: str, days: np.ndarray, rows: slice | None = None, cols: slice | None = None
    ) -> np.ndarray:
        """``array[days, rows, cols]`` for arbitrary (unsorted, repeated) day positions."""
        days = np.asarray(days, np.int64)
        rows, cols = rows or slice(None), cols or slice(None)
        local = self._local(name)
        if local is not None and days.size:
            return np.stack([local.window(int(d), rows, cols) for d in days]).astype(
                np.float32, copy=False
            )
        arr = self._array(name)
        if days.size == 0:
            return np.zeros(arr[0:0, rows, cols].shape, np.float32)
        uniq, inverse = np.unique(days, return_inverse=True)
        data = np.asarray(arr.oindex[uniq, rows, cols], np.float32)
        return data[inverse]

    def read_predictors(self, days: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
        """Predictors on the coarse grid.

        Parameters
        ----------
        days
            Positions along ``time``.
        names
            Predictor names.

        Returns
        -------
        dict
            ``{name: (n, nlat, nlon) float32}``.
        """
        self._check_names(names)
        return {n: self._rows(n, days) for n in names}

    def read_fine(
        self, days: np.ndarray, rows: slice | None = None, cols: slice | None = None
    ) -> np.ndarray:
        """Fine-grid precipitation (mm/day, NaN = missing), optionally a window.

        Parameters
        ----------
        days
            Positions along ``time``.
        rows, cols
            Window of the fine grid (whole axes when ``None``).

        Returns
        -------
        numpy.ndarray
            ``(n, h, w)`` float32.
        """
        return self._rows("pr", days, rows, cols)

    def read_fine_window(self, day: int, rows: slice, cols: slice) -> np.ndarray:
        """One day's fine-grid window (the loader's per-sample read).

        Parameters
        ----------
        day
            Position along ``time``.
        rows, cols
            The window.

        Returns
        -------
        numpy.ndarray
            ``(h, w)`` float32.
        """
        local = self._local("pr")
        if local is not None:
            return local.window(int(day), rows, cols)
        return np.asarray(self._array("pr")[int(day), rows, cols], np.float32)

    def read_coarse_day(self, day: int) -> np.ndarray:
        """One day's block-mean precipitation on the coarse grid (the loader's per-sample read).

        Parameters
        ----------
        day
            Position along ``time``.

        Returns
        -------
        numpy.ndarray
            ``(nlat, nlon)`` float32.
        """
        local = self._local("pr_coarse")
        if local is not None:
            return local.window(int(day), slice(None), slice(None))
        return np.asarray(self._array("pr_coarse")[int(day)], np.float32)

    def read_coarse(self, days: np.ndarray) -> np.ndarray:
        """Block-mean precipitation on the coarse grid (mm/day, NaN = missing).

        Parameters
        ----------
        days
            Positions along ``time``.

        Returns
        -------
        numpy.ndarray
            ``(n, nlat, nlon)`` float32.
        """
        return self._rows("pr_coarse", days)

    # -- statistics -----------------------------------------------------------------

    def moment_sums(self, name: str, days: np.ndarray) -> np.ndarray:
        """Sum (count, sum, sum of squares) of one variable over the given days.

        Parameters
        ----------
        name
            A predictor or :data:`TARGET_MOMENTS`.
        days
            Positions along ``time``.

        Returns
        -------
        numpy.ndarray
            ``(3,)`` float64.
        """
        if name not in self.moment_variables:
            raise ConfigError(f"training store {self.path} holds no moments of {name!r}")
        k = self.moment_variables.index(name)
        m = np.asarray(self._root["moments"][:, k, :], np.float64)[np.asarray(days, np.int64)]
        if np.isnan(m).any():
            raise InputError(f"training store {self.path}: moments of {name!r} are missing")
        return m.sum(axis=0)

    def stats(self, train: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
        """Normalisation statistics of the given training days, from the per-day moments.

        Exactly the quantities the stages compute from their data (mean and
        standard deviation over all finite values of each predictor on the
        coarse grid and of the transformed coarse precipitation), without reading
        any field.

        Parameters
        ----------
        train
            Positions of the training days.
        names
            Predictors.

        Returns
        -------
        dict
            ``precipdiff.offline.train.data.Stats.to_dict()`` form, for the store's transform.
        """

        def mean_std(name: str) -> tuple[float, float]:
            n, s, ss = self.moment_sums(name, train)
            if n == 0:
                raise InputError(f"{name}: no finite values in the training split")
            mean = s / n
            std = float(np.sqrt(max(ss / n - mean * mean, 0.0)))
            if not std > 0:
                raise InputError(f"{name}: zero variance in the training split")
            return float(mean), std

        self._check_names(names)
        pm: dict[str, float] = {}
        ps: dict[str, float] = {}
        for n in names:
            pm[n], ps[n] = mean_std(n)
        tm, ts = mean_std(TARGET_MOMENTS)
        return {
            "predictor_mean": pm,
            "predictor_std": ps,
            "target_mean": tm,
            "target_std": ts,
            "n_train": int(np.asarray(train).size),
        }

    def samples_per_day(self) -> np.ndarray:
        """Source time steps averaged into each day, ``(time, moment_variable)``.

        Returns
        -------
        numpy.ndarray
            int32 counts (the target's column counts the steps of ``pr``).
        """
        return np.asarray(self._root["samples_per_day"][...])

    def config(self) -> dict[str, Any]:
        """Return the prepare configuration the store was written with.

        Returns
        -------
        dict
            JSON data.
        """
        return json.loads(json.dumps(self.meta.get("config", {})))


class StoreWriter:
    """Write access used by ``prepare`` (one process per unit of work).

    Parameters
    ----------
    path
        An existing store (from :func:`create_store`).
    """

    def __init__(self, path: str | Path) -> None:
        zarr = _zarr()
        self.path = Path(path)
        self._root = zarr.open_group(str(self.path), mode="r+")
        self.meta: dict[str, Any] = dict(self._root.attrs[ATTR])
        self.n_days = int(self._root["time"].shape[0])
        self.days_per_task = int(self.meta["days_per_task"])
        self.moment_variables: list[str] = list(self._root["moments"].attrs["moment_variables"])

    def done(self) -> np.ndarray:
        """Which units of work are finished.

        Returns
        -------
        numpy.ndarray
            bool per task.
        """
        return np.asarray(self._root["done"][...]).astype(bool)

    def write_task(
        self,
        task: int,
        predictors: Mapping[str, np.ndarray],
        fine: np.ndarray,
        coarse: np.ndarray,
        target_transformed: np.ndarray,
        samples: Mapping[str, np.ndarray],
    ) -> None:
        """Write one unit of work and mark it done (last, so a crash leaves it undone).

        Parameters
        ----------
        task
            The unit of work.
        predictors
            ``{name: (n, nlat, nlon)}`` on the coarse grid.
        fine
            ``(n, nlat_f, nlon_f)`` precipitation, mm/day.
        coarse
            ``(n, nlat, nlon)`` its block mean.
        target_transformed
            ``transform.forward(coarse)`` (NaN where ``coarse`` is missing).
        samples
            ``{name: (n,)}`` source time steps per day (predictors and ``pr``).
        """
        sl = task_days(self.n_days, self.days_per_task, task)
        n = sl.stop - sl.start
        moments = np.zeros((n, len(self.moment_variables), len(MOMENT_STATS)))
        counts = np.zeros((n, len(self.moment_variables)), np.int32)
        for k, name in enumerate(self.moment_variables):
            if name == TARGET_MOMENTS:
                moments[:, k] = _moments(target_transformed)
                counts[:, k] = samples["pr"]
            else:
                x = np.asarray(predictors[name], np.float32)
                self._root[name][sl] = x
                moments[:, k] = _moments(x)
                counts[:, k] = samples[name]
        self._root["pr"][sl] = np.asarray(fine, np.float32)
        self._root["pr_coarse"][sl] = np.asarray(coarse, np.float32)
        self._root["moments"][sl] = moments
        self._root["samples_per_day"][sl] = counts
        self._root["done"][task] = 1

    def finish(self, stats: dict[str, Any]) -> None:
        """Record the statistics of the configured split and mark the store complete.

        Parameters
        ----------
        stats
            ``Stats.to_dict()`` plus the split it was computed on.
        """
        meta = dict(self._root.attrs[ATTR])
        meta["stats"] = stats
        meta["complete"] = True
        self._root.attrs[ATTR] = meta
