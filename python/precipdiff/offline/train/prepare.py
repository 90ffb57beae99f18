"""``precipdiff prepare``: raw ERA5 (hourly, Zarr or netCDF) -> the daily training store.

Done once, before any training: every variable is read through
:func:`precipdiff.io.readers.open_predictors` (the project's variable mapping and
unit conversion: ERA5 short names from CDS netCDF files or long names from an
ARCO-ERA5 Zarr store), averaged to daily means (hourly accumulations such as
``tp`` in m become daily totals in mm/day, each hour counted for the day its
accumulation period lies in), predictors regridded onto the coarse grid,
precipitation cropped to the fine grid and block-averaged onto the coarse grid,
and written into a chunked :mod:`precipdiff.offline.train.store` with per-day moments
and the statistics of the configured training split.

The work is split into units of ``days_per_task`` consecutive days. Units run
in worker processes (``workers``) and each one is marked done only after all of
its arrays are written, so an interrupted ``prepare`` resumes where it stopped
(rerun the same command). A progress bar is shown on a terminal only; otherwise
a plain line is printed about every 10 %.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import hashlib
import json
import multiprocessing
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from precipdiff.errors import ConfigError, InputError
from precipdiff.grids import LatLonGrid, Regridder, coarsen_block_mean, coarsen_grid
from precipdiff.offline.train.config import (
    PrepareConfig,
    SplitConfig,
    TrainConfig,
    VariableSource,
    to_dict,
)
from precipdiff.offline.train.store import (
    StoreLayout,
    StoreWriter,
    TrainingStore,
    create_store,
    task_days,
)
from precipdiff.variables import get_variable


@dataclass(frozen=True)
class _Source:
    """One variable as a worker process opens it (picklable)."""

    name: str
    pattern: str
    spec: dict[str, Any]
    scale: float


@dataclass(frozen=True)
class _Job:
    """Everything a worker needs for any unit of work (picklable)."""

    store: str
    sources: tuple[_Source, ...]
    day_index: dict[str, list[int]]  # per variable: source time index of each store day
    n_days: int
    days_per_task: int
    accumulation_hours: float | None
    end_at_stamp: bool
    storage_options: dict[str, Any] | None
    crop: tuple[int, int, int, int]
    coarsen_factor: int
    min_valid_fraction: float
    predictor_regrid: str
    coarse_grid: dict[str, Any]
    transform: dict[str, Any]


@dataclass
class PrepareResult:
    """Outcome of :func:`run_prepare`.

    Parameters
    ----------
    store
        The store directory.
    n_days
        Days in the store.
    tasks_run
        Units of work done by this call.
    tasks_skipped
        Units already done by an earlier (interrupted) call.
    seconds
        Wall time of this call.
    complete
        Whether every unit is done and the statistics are written.
    """

    store: Path
    n_days: int
    tasks_run: int
    tasks_skipped: int
    seconds: float
    complete: bool


def _source_pattern(src: VariableSource, root: Path | None) -> str:
    path = src.path
    if "://" in path or Path(path).is_absolute() or root is None:
        return path
    return str(root / path)


def _spec_dict(src: VariableSource) -> dict[str, Any]:
    spec = get_variable(src.name)
    if src.variable is not None and src.variable not in spec.aliases:
        spec = dataclasses.replace(spec, aliases=(src.variable, *spec.aliases))
    return spec.to_dict()


def _open(source: _Source, job: _Job) -> Any:
    from precipdiff.io.readers import open_predictors
    from precipdiff.variables import VariableSpec

    return open_predictors(
        source.pattern,
        [VariableSpec.from_dict(source.spec)],
        daily="auto",
        accumulation_hours=job.accumulation_hours,
        accumulations_end_at_stamp=job.end_at_stamp,
        storage_options=job.storage_options,
    )


def fingerprint(cfg: PrepareConfig, transform: dict[str, Any]) -> dict[str, Any]:
    """Return the part of a prepare configuration that determines the store's contents.

    Parameters
    ----------
    cfg
        The prepare section.
    transform
        The experiment's precipitation transform (of the stored moments).

    Returns
    -------
    dict
        JSON data; compared when a store is resumed.
    """
    d = to_dict(cfg)
    d.pop("workers")  # how many processes write it does not change what is written
    d["transform"] = dict(transform)
    return d


def _differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    keys = sorted(set(a) | set(b))
    return [
        k
        for k in keys
        if json.dumps(a.get(k), sort_keys=True) != json.dumps(b.get(k), sort_keys=True)
    ]


# ---------------------------------------------------------------------------------
# worker side


_OPEN: dict[str, tuple[str, dict[str, Any], Any]] = {}


def _job_key(job: _Job) -> str:
    return hashlib.sha1(repr(job).encode()).hexdigest()


def _opened(job: _Job) -> dict[str, Any]:
    """Open the sources and regridders of ``job`` once per process."""
    key = _job_key(job)
    hit = _OPEN.get("job")
    if hit is not None and hit[0] == key:
        return hit[1]
    for _, _, closer in _OPEN.values():
        closer()
    _OPEN.clear()
    coarse = LatLonGrid.from_dict(job.coarse_grid)
    opened: dict[str, Any] = {}
    for src in job.sources:
        ds = _open(src, job)
        regridder = None
        if src.name != "pr":
            native = LatLonGrid(np.asarray(ds["lat"].values), np.asarray(ds["lon"].values))
            if not native.allclose(coarse):
                regridder = Regridder(native, coarse, job.predictor_regrid, skipna=True)  # type: ignore[arg-type]
        opened[src.name] = (ds, regridder)

    def close() -> None:
        for ds, _ in opened.values():
            ds.close()

    _OPEN["job"] = (key, opened, close)
    return opened


def _run_task(job: _Job, task: int) -> tuple[int, float]:
    """Read, convert, regrid and write one unit of work; return (task, seconds)."""
    from precipdiff.transforms import PrecipTransform

    t0 = time.perf_counter()
    opened = _opened(job)
    sl = task_days(job.n_days, job.days_per_task, task)
    lat0, lat1, lon0, lon1 = job.crop
    predictors: dict[str, list[np.ndarray]] = {}
    samples: dict[str, list[int]] = {}
    fine: list[np.ndarray] = []
    for day in range(sl.start, sl.stop):
        for src in job.sources:
            ds, regridder = opened[src.name]
            i = job.day_index[src.name][day]
            da = ds[src.name]
            x = np.asarray(da.isel(time=[i]).values, np.float32)
            if src.scale != 1.0:
                x *= np.float32(src.scale)
            samples.setdefault(src.name, []).append(int(da.encoding["samples_per_step"][i]))
            if src.name == "pr":
                fine.append(x[0, lat0:lat1, lon0:lon1])
            else:
                if regridder is not None:
                    x = np.asarray(regridder(x), np.float32)
                if not np.all(np.isfinite(x)):
                    raise InputError(
                        f"{src.name}: non-finite values on day {day} of the store after "
                        "regridding onto the coarse grid (missing data in the source?)"
                    )
                predictors.setdefault(src.name, []).append(x[0])
    fine_arr = np.stack(fine)
    coarse = coarsen_block_mean(
        fine_arr, job.coarsen_factor, min_valid_fraction=job.min_valid_fraction
    )
    # Same definition as StageData's statistics: the transform of the block mean, NaN
    # (missing coarse cells) left out of the moments.
    transformed = PrecipTransform.from_dict(job.transform).forward(coarse)
    writer = StoreWriter(job.store)
    writer.write_task(
        task,
        {k: np.stack(v) for k, v in predictors.items()},
        fine_arr,
        coarse,
        transformed,
        {k: np.asarray(v) for k, v in samples.items()},
    )
    return task, time.perf_counter() - t0


# ---------------------------------------------------------------------------------
# parent side


def _period(cfg: PrepareConfig) -> np.ndarray:
    return np.arange(
        np.datetime64(cfg.start, "D"), np.datetime64(cfg.end, "D") + np.timedelta64(1, "D")
    )


def _plan(
    cfg: PrepareConfig, sources: list[_Source], job_base: dict[str, Any]
) -> tuple[dict[str, list[int]], LatLonGrid, dict[str, LatLonGrid]]:
    """Check every variable covers every day completely; return indices and grids."""
    days = _period(cfg)
    index: dict[str, list[int]] = {}
    grids: dict[str, LatLonGrid] = {}
    probe = _Job(store="", sources=(), day_index={}, n_days=0, **job_base)
    for src in sources:
        ds = _open(src, probe)
        try:
            times = np.asarray(ds["time"].values)
            if not np.issubdtype(times.dtype, np.datetime64):
                raise InputError(
                    f"{src.name} ({src.pattern}): prepare needs a standard calendar "
                    f"(got {type(times.flat[0]).__name__} times)"
                )
            src_days = times.astype("datetime64[D]")
            if np.unique(src_days).size != src_days.size:
                raise InputError(
                    f"{src.name} ({src.pattern}): several time steps fall on one day after "
                    "daily averaging (irregular time axis?)"
                )
            pos = np.searchsorted(src_days, days)
            ok = (pos < src_days.size) & (src_days[np.minimum(pos, src_days.size - 1)] == days)
            if not ok.all():
                missing = days[~ok]
                raise InputError(
                    f"{src.name} ({src.pattern}): {missing.size} day(s) of the period "
                    f"{cfg.start}..{cfg.end} are missing, e.g. {[str(d) for d in missing[:5]]}; "
                    f"the data cover {src_days[0]}..{src_days[-1]}"
                )
            counts = np.asarray(ds[src.name].encoding["samples_per_step"])[pos]
            full = int(counts.max())
            short = days[counts < full]
            if short.size:
                raise InputError(
                    f"{src.name} ({src.pattern}): {short.size} day(s) have fewer than "
                    f"{full} time steps, e.g. {[str(d) for d in short[:5]]} (an incomplete "
                    "first/last day of the files, or missing hours); adjust prepare.start/end"
                )
            index[src.name] = [int(p) for p in pos]
            grids[src.name] = LatLonGrid(np.asarray(ds["lat"].values), np.asarray(ds["lon"].values))
        finally:
            ds.close()
    target = grids["pr"]
    lat = target.lat
    lon = target.lon
    crop_lat = cfg.crop_lat or [0, lat.size]
    crop_lon = cfg.crop_lon or [0, lon.size]
    if crop_lat[1] > lat.size or crop_lon[1] > lon.size:
        raise ConfigError(
            f"prepare.crop_lat/crop_lon {crop_lat}/{crop_lon} exceed the target grid "
            f"{lat.size}x{lon.size}"
        )
    fine = LatLonGrid(lat[crop_lat[0] : crop_lat[1]], lon[crop_lon[0] : crop_lon[1]])
    f = cfg.coarsen_factor
    if fine.shape[0] % f or fine.shape[1] % f:
        raise ConfigError(
            f"the cropped fine grid {fine.shape[0]}x{fine.shape[1]} is not divisible by "
            f"prepare.coarsen_factor {f}: adjust prepare.crop_lat / crop_lon (ERA5 0.25 deg: "
            "crop_lat: [0, 720])"
        )
    return index, fine, grids


class _Progress:
    """tqdm on a terminal; elsewhere a plain line about every 10 %."""

    def __init__(self, total: int, done: int, enabled: bool | None) -> None:
        from tqdm.auto import tqdm

        self.total, self.done = total, done
        tty = sys.stderr.isatty()
        self.bar = tqdm(
            total=total,
            initial=done,
            desc="prepare",
            unit="task",
            dynamic_ncols=True,
            disable=not (tty and enabled is not False),
        )
        self.lines = enabled is not False and not tty
        self.next_line = 0.1
        self.t0 = time.perf_counter()

    def update(self) -> None:
        self.done += 1
        self.bar.update(1)
        frac = self.done / max(self.total, 1)
        if self.lines and (frac >= self.next_line or self.done == self.total):
            rate = (time.perf_counter() - self.t0) / max(self.done, 1)
            print(
                f"prepare: {self.done}/{self.total} units done ({100 * frac:.0f} %), "
                f"{rate:.2f} s per unit",
                flush=True,
            )
            while self.next_line <= frac:
                self.next_line += 0.1

    def close(self) -> None:
        self.bar.close()


def run_prepare(
    cfg: TrainConfig,
    *,
    out: str | None = None,
    workers: int | None = None,
    progress: bool | None = None,
    max_tasks: int | None = None,
    on_task: Callable[[int], None] | None = None,
) -> PrepareResult:
    """Write (or resume) the training store of ``cfg.prepare``.

    Parameters
    ----------
    cfg
        The experiment (its ``prepare`` section and ``transform``).
    out
        Store directory overriding ``prepare.out``.
    workers
        Worker processes overriding ``prepare.workers`` (``0``: this process).
    progress
        ``None``: a bar on a terminal, plain lines otherwise; ``False``: silent.
    max_tasks
        Stop after this many units of work (the store stays resumable), e.g. to
        split a long preparation over several batch jobs.
    on_task
        Called in this process with each finished unit's index.

    Returns
    -------
    PrepareResult
        What was done.
    """
    if cfg.prepare is None:
        raise ConfigError("the config has no 'prepare' section")
    pc = cfg.prepare
    t0 = time.perf_counter()
    dest = Path(out if out is not None else pc.out)
    any_local = any(
        "://" not in s.path and not Path(s.path).is_absolute() for s in (pc.target, *pc.predictors)
    )
    root = pc.root(cfg.source_dir) if any_local else None
    sources = [
        _Source(s.name, _source_pattern(s, root), _spec_dict(s), float(s.scale))
        for s in (*pc.predictors, pc.target)
    ]
    from precipdiff.transforms import PrecipTransform

    transform = PrecipTransform.from_dict(cfg.transform).to_dict()
    job_base: dict[str, Any] = {
        "days_per_task": pc.days_per_task,
        "accumulation_hours": pc.accumulation_hours,
        "end_at_stamp": pc.accumulations_end_at_stamp,
        "storage_options": pc.storage_options,
        "crop": (0, 0, 0, 0),
        "coarsen_factor": pc.coarsen_factor,
        "min_valid_fraction": pc.min_valid_fraction,
        "predictor_regrid": pc.predictor_regrid,
        "coarse_grid": {},
        "transform": transform,
    }
    index, fine, grids = _plan(pc, sources, job_base)
    coarse = coarsen_grid(fine, pc.coarsen_factor)
    days = _period(pc)
    lat_n, lon_n = grids["pr"].shape
    crop_lat = pc.crop_lat or [0, lat_n]
    crop_lon = pc.crop_lon or [0, lon_n]
    job = _Job(
        store=str(dest),
        sources=tuple(sources),
        day_index=index,
        n_days=int(days.size),
        **{
            **job_base,
            "crop": (crop_lat[0], crop_lat[1], crop_lon[0], crop_lon[1]),
            "coarse_grid": coarse.to_dict(),
        },
    )
    print_ = progress is not False
    fp = fingerprint(pc, transform)
    if dest.exists():
        try:
            existing = TrainingStore(dest, require_complete=False)
        except InputError as exc:
            raise ConfigError(
                f"prepare.out {dest} exists and is not a training store: {exc}"
            ) from exc
        diff = _differences(existing.config(), json.loads(json.dumps(fp)))
        if diff:
            raise ConfigError(
                f"the training store {dest} was prepared with a different configuration "
                f"(differs in {diff}); delete it or set another prepare.out"
            )
    else:
        layout = StoreLayout(
            days=days,
            fine_grid=fine,
            coarse_grid=coarse,
            predictors=[s.spec for s in sources if s.name != "pr"],
            target=next(s.spec for s in sources if s.name == "pr"),
            coarsen_factor=pc.coarsen_factor,
            min_valid_fraction=pc.min_valid_fraction,
            transform=transform,
            fine_chunk=(int(pc.fine_chunk[0]), int(pc.fine_chunk[1])),
            days_per_task=pc.days_per_task,
            config=json.loads(json.dumps(fp)),
        )
        dest.parent.mkdir(parents=True, exist_ok=True)
        create_store(dest, layout)
    writer = StoreWriter(dest)
    done = writer.done()
    pending = [int(t) for t in np.flatnonzero(~done)]
    skipped = int(done.sum())
    if max_tasks is not None:
        pending = pending[: max(max_tasks, 0)]
    n_workers = pc.workers if workers is None else workers
    if print_:
        print(
            f"prepare: {days.size} days {pc.start}..{pc.end} -> {dest} "
            f"({len(sources) - 1} predictors on {coarse.shape}, pr on {fine.shape}); "
            f"{len(pending)} of {done.size} units to do, {n_workers or 'no'} worker processes",
            flush=True,
        )
    bar = _Progress(done.size, skipped, progress)
    try:
        if n_workers == 0:
            for task in pending:
                _run_task(job, task)
                bar.update()
                if on_task is not None:
                    on_task(task)
        else:
            ctx = multiprocessing.get_context("spawn")
            with cf.ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx) as pool:
                futures = [pool.submit(_run_task, job, t) for t in pending]
                try:
                    for fut in cf.as_completed(futures):
                        task, _ = fut.result()
                        bar.update()
                        if on_task is not None:
                            on_task(task)
                except BaseException:
                    for f in futures:
                        f.cancel()
                    raise
    finally:
        bar.close()
    complete = bool(writer.done().all())
    if complete:
        writer.finish(split_stats(dest, pc.split))
    seconds = time.perf_counter() - t0
    if print_:
        state = "complete" if complete else "incomplete (rerun to resume)"
        print(f"prepare: {len(pending)} units in {seconds:.1f} s; store {state}", flush=True)
    return PrepareResult(dest, int(days.size), len(pending), skipped, seconds, complete)


def split_stats(path: str | Path, split: SplitConfig) -> dict[str, Any]:
    """Normalisation statistics of a split's training days, from the per-day moments.

    Parameters
    ----------
    path
        The store (every unit written).
    split
        The split.

    Returns
    -------
    dict
        ``Stats.to_dict()`` plus ``split`` (the split, as configured).
    """
    from precipdiff.offline.train.data import split_positions

    store = TrainingStore(path, require_complete=False)
    train, _ = split_positions(store.days, split)
    return {**store.stats(train, store.predictor_names), "split": to_dict(split)}
