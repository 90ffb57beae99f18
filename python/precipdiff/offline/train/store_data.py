"""The stages' data when they read a prepared training store (``data.store``).

:class:`StoreStageData` gives the regression and diffusion stages, the bundle
evaluation and the loss comparison the same interface as
:class:`precipdiff.offline.train.data.StageData` (split, grids, statistics, ``read``,
normalisation), backed by a :class:`precipdiff.offline.train.store.TrainingStore`:
predictors and ``pr_coarse`` are read directly on the coarse grid, the fine
field only when a caller asks for it, and the normalisation statistics of the
stage's training split are summed from the store's per-day moments.

:class:`PatchDiffusionDataset` is the diffusion stage's training set on a
store: for each sample it reads only the fine-grid window of that sample's
random patch (:func:`precipdiff.offline.train.loader.patch_corner`, from the step's
per-sample seed) and builds the patch's condition from the rows of the
runtime's bilinear upsampling matrix that the patch needs, so a batch equals
the whole-field batch of :class:`precipdiff.offline.train.data.DiffusionDataset` cut
to the same patches, bit for bit -- at a fraction of the reading.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from precipdiff.errors import ConfigError
from precipdiff.grids import Regridder, _bilinear_lat, _bilinear_lon
from precipdiff.offline.train.config import DataConfig, DiffusionStageConfig, VariableSource
from precipdiff.offline.train.data import (
    ConditionInputs,
    DiffusionDataset,
    Split,
    StageData,
    Stats,
    _Moments,
    split_positions,
)
from precipdiff.offline.train.loader import patch_corner
from precipdiff.offline.train.store import TARGET_MOMENTS, TrainingStore


class _StoreVariable:
    """What callers read of a stage's predictor: its configured source."""

    def __init__(self, source: VariableSource) -> None:
        self.source = source


class _Batch(Mapping[str, np.ndarray]):
    """``StageData.read`` result whose fine field is read only when accessed."""

    def __init__(self, data: dict[str, np.ndarray], fine: Any) -> None:
        self._data = data
        self._fine = fine

    def __getitem__(self, key: str) -> np.ndarray:
        if key == "fine" and "fine" not in self._data:
            self._data["fine"] = self._fine()
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        yield "fine"
        yield from (k for k in self._data if k != "fine")

    def __len__(self) -> int:
        return len(self._data) + (0 if "fine" in self._data else 1)


class StoreStageData(StageData):
    """A stage's data read from a training store (same interface as :class:`StageData`).

    Parameters
    ----------
    cfg
        The stage's data section (``store`` set).
    transform
        The precipitation transform.
    stats
        Statistics to reuse (the regression's, for the diffusion stage); from the
        store's per-day moments over this stage's training split when ``None``.
    """

    def __init__(self, cfg: DataConfig, transform: Any, stats: Stats | None = None) -> None:
        # Not StageData.__init__: nothing is opened but the store.
        if cfg.store is None:
            raise ConfigError("StoreStageData needs data.store")
        self.cfg = cfg
        self.transform = transform
        self.store = TrainingStore(cfg.store)
        st = self.store
        if cfg.target.name != "pr":
            raise ConfigError(
                f"data.target {cfg.target.name!r}: a training store holds precipitation 'pr'"
            )
        if cfg.coarsen_factor != st.coarsen_factor:
            raise ConfigError(
                f"data.coarsen_factor {cfg.coarsen_factor} differs from the store's "
                f"{st.coarsen_factor} ({st.path})"
            )
        if cfg.min_valid_fraction != st.min_valid_fraction:
            raise ConfigError(
                f"data.min_valid_fraction {cfg.min_valid_fraction} differs from the store's "
                f"{st.min_valid_fraction} ({st.path})"
            )
        names = [p.name for p in cfg.predictors]
        st._check_names(names)
        self.predictors = [_StoreVariable(p) for p in cfg.predictors]  # type: ignore[misc]
        times = st.days.astype("datetime64[s]")
        train, val = split_positions(times, cfg.split)
        n = times.size
        positions = np.arange(n)
        self.split = Split(times, positions, np.tile(positions, (len(names), 1)), train, val)
        self.fine_grid = st.fine_grid
        self.coarse_grid = st.coarse_grid
        self.upsampler = Regridder(self.coarse_grid, self.fine_grid, "bilinear")
        self._cache = None
        self.stats = stats if stats is not None else self._store_stats()

    def _store_stats(self) -> Stats:
        names = [p.source.name for p in self.predictors]
        d = self.store.stats(self.split.train, names)
        derived = [f for f in self.features if f.op != "identity" or f.name != f.inputs[0]]
        if derived:
            # Derived features (e.g. relative humidity): one pass over the training
            # days' predictors on the coarse grid; identity features keep the store's
            # per-day moments.
            moments = {f.name: _Moments() for f in derived}
            train = self.split.train
            for start in range(0, train.size, 256):
                days = train[start : start + 256]
                x = self.feature_fields(self.store.read_predictors(days, names))
                for i, f in enumerate(self.features):
                    if f.name in moments:
                        moments[f.name].add(x[:, i])
            mean = {f.name: d["predictor_mean"][f.name] for f in self.features if f not in derived}
            std = {f.name: d["predictor_std"][f.name] for f in self.features if f not in derived}
            for n, m in moments.items():
                mean[n], std[n] = m.result(n)
            d["predictor_mean"], d["predictor_std"] = mean, std
        if self.transform.to_dict() != self.store.transform:
            # The stored target moments are of another transform: one pass over the
            # coarse target of the training days (the coarse grid only).
            m = _Moments()
            train = self.split.train
            for start in range(0, train.size, 256):
                m.add(self.transform.forward(self.store.read_coarse(train[start : start + 256])))
            d["target_mean"], d["target_std"] = m.result(TARGET_MOMENTS)
        return Stats.from_dict(d)

    def read(self, pos: np.ndarray) -> dict[str, np.ndarray]:
        """Read samples at aligned positions (days of the store).

        Parameters
        ----------
        pos
            Positions into ``split.times``.

        Returns
        -------
        dict
            ``fine`` (read on first access), ``coarse`` and one array per
            predictor, as :meth:`StageData.read`.
        """
        days = np.asarray(pos, np.int64)
        out = self.store.read_predictors(days, [p.source.name for p in self.predictors])
        out["coarse"] = self.store.read_coarse(days)
        return _Batch(out, lambda: self.store.read_fine(days))  # type: ignore[return-value]


def open_stage_data(
    cfg: DataConfig, transform: Any, base: Path | None = None, stats: Stats | None = None
) -> StageData:
    """Open a stage's data: a prepared training store, or the configured netCDF files.

    Parameters
    ----------
    cfg
        The data section.
    transform
        The precipitation transform.
    base
        Directory relative ``data_root`` values resolve against (netCDF only).
    stats
        Statistics to reuse.

    Returns
    -------
    StageData
        :class:`StoreStageData` when ``cfg.store`` is set, else :class:`StageData`.
    """
    if cfg.store is not None:
        return StoreStageData(cfg, transform, stats)
    return StageData(cfg, transform, base=base, stats=stats)


#: Regridder's default tolerance (the upsampler is built with it).
_TOLERANCE = 1e-3


def _factor_pairs(m: Any) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a sparse interpolation factor as two (column, float64 weight) pairs each.

    Columns in ascending order (the order of the Kronecker product's entries); a
    row with one entry gets a zero-weight partner (adding its zero product
    changes no sum).
    """
    m = m.tocsr()
    m.sort_indices()
    n = m.shape[0]
    idx = np.zeros((n, 2), np.int64)
    w = np.zeros((n, 2), np.float64)
    for i in range(n):
        lo, hi = m.indptr[i], m.indptr[i + 1]
        if not 1 <= hi - lo <= 2:
            raise ValueError(f"row {i} of a bilinear factor has {hi - lo} entries")
        idx[i, : hi - lo] = m.indices[lo:hi]
        w[i, : hi - lo] = m.data[lo:hi]
        if hi - lo == 1:
            idx[i, 1] = idx[i, 0]
    return idx, w


class PatchDiffusionDataset(DiffusionDataset):
    """Diffusion training samples cut to their random patch while reading the store.

    Parameters
    ----------
    data
        The stage's store-backed data.
    positions
        Aligned positions (days) of the training split.
    patch_size
        ``[h, w]`` of the patches (the diffusion stage's ``patch_size``).
    """

    def __init__(
        self,
        data: StoreStageData,
        positions: np.ndarray,
        patch_size: list[int],
        condition: ConditionInputs | None = None,
    ) -> None:
        super().__init__(data, positions, condition)
        self.store_data = data
        self.patch = (int(patch_size[0]), int(patch_size[1]))
        h, w = data.fine_grid.shape
        if self.patch[0] > h or self.patch[1] > w:
            raise ConfigError(
                f"diffusion.patch_size {list(self.patch)} exceeds the fine grid {h}x{w}"
            )
        # The two factors of the runtime's coarse -> fine bilinear matrix, as
        # (neighbour, weight) pairs per fine row / column in the matrix's column order.
        self._lat_idx, self._lat_w = _factor_pairs(
            _bilinear_lat(data.coarse_grid, data.fine_grid, _TOLERANCE)
        )
        self._lon_idx, self._lon_w = _factor_pairs(
            _bilinear_lon(data.coarse_grid, data.fine_grid, _TOLERANCE)
        )

    def _upsample_window(self, r0: int, c0: int, coarse: np.ndarray) -> np.ndarray:
        """Upsample a normalised coarse field on the patch at ``(r0, c0)``, as the runtime does.

        :class:`~precipdiff.grids.Regridder` upsamples with the float32 matrix
        ``kron(W_lat, W_lon)``, and scipy sums each row's (at most 4) products in
        column order. The same float32 weights (products of the float64 factors)
        and the same order are formed here from the two factors restricted to
        the patch, so no row of the million-row matrix is sliced.

        Parameters
        ----------
        r0, c0
            Patch corner.
        coarse
            ``(..., Hc, Wc)`` normalised coarse field(s).

        Returns
        -------
        numpy.ndarray
            ``(..., ph, pw)`` float32.
        """
        ph, pw = self.patch
        ia, wa = self._lat_idx[r0 : r0 + ph], self._lat_w[r0 : r0 + ph]  # (ph, 2)
        ib, wb = self._lon_idx[c0 : c0 + pw], self._lon_w[c0 : c0 + pw]  # (pw, 2), sorted
        rows = np.unique(ia)
        cols = np.unique(ib)
        sub = np.asarray(coarse[..., rows[:, None], cols[None, :]], np.float32)
        ra, cb = np.searchsorted(rows, ia), np.searchsorted(cols, ib)
        out = np.zeros((*coarse.shape[:-2], ph, pw), np.float32)
        for ka in range(2):
            for kb in range(2):
                w = (wa[:, ka, None] * wb[None, :, kb]).astype(np.float32)
                out += w * sub[..., ra[:, ka, None], cb[None, :, kb]]
        return out

    def _truth_window(self, r0: int, c0: int, coarse_mm: np.ndarray) -> np.ndarray:
        """Return the paper's condition on the patch: the normalised block mean, upsampled.

        Only the coarse cells the patch uses are normalised; missing coarse cells
        (sea) are 0 = the training mean, as in :class:`DiffusionDataset`.
        """
        ph, pw = self.patch
        rows = np.unique(self._lat_idx[r0 : r0 + ph])
        cols = np.unique(self._lon_idx[c0 : c0 + pw])
        c, cm = self.store_data.normalise_target(coarse_mm[np.ix_(rows, cols)])
        full = np.zeros(coarse_mm.shape, np.float32)
        full[np.ix_(rows, cols)] = np.where(cm > 0, c, 0.0)
        return self._upsample_window(r0, c0, full)

    def seeded_batch(self, items: np.ndarray, seeds: np.ndarray) -> dict[str, torch.Tensor]:
        """Read a batch, each sample cut to the patch its seed draws.

        Parameters
        ----------
        items
            Indices into this dataset.
        seeds
            The samples' seeds (:func:`precipdiff.offline.train.loader.sample_seeds`).

        Returns
        -------
        dict
            ``y``, ``mask``, ``cond`` ``(n, 1, ph, pw)``: the whole-field batch
            of :meth:`DiffusionDataset.batch` cut to the patches.
        """
        data = self.store_data
        store = data.store
        f = data.cfg.coarsen_factor
        hf, wf = data.fine_grid.shape
        ph, pw = self.patch
        days = self.positions[np.asarray(items, np.int64)]
        cond = self.condition
        names = [p.source.name for p in data.predictors]
        ys, ms, cs, es = [], [], [], []
        for day, seed in zip(days, seeds, strict=True):
            gen = torch.Generator().manual_seed(int(seed))
            r0, c0 = patch_corner(gen, hf, wf, ph, pw, f)
            fine = store.read_fine_window(int(day), slice(r0, r0 + ph), slice(c0, c0 + pw))
            y, m = data.normalise_target(fine)
            ys.append(y)
            ms.append(m)
            if cond.coarse is not None:
                cs.append(self._upsample_window(r0, c0, cond.coarse[int(day)]))
            else:
                cs.append(self._truth_window(r0, c0, store.read_coarse_day(int(day))))
            extra = []
            if cond.predictors:
                x = data.normalise_predictors(
                    store.read_predictors(np.array([day]), names), cond.features
                )[0]
                extra.append(self._upsample_window(r0, c0, x))
            if cond.statics is not None and cond.statics.shape[0]:
                extra.append(cond.statics[:, r0 : r0 + ph, c0 : c0 + pw])
            es.append(np.concatenate(extra, axis=0) if extra else np.zeros((0, ph, pw), np.float32))
        return {
            "y": torch.from_numpy(np.stack(ys)[:, None]),
            "mask": torch.from_numpy(np.stack(ms)[:, None]),
            "cond": torch.from_numpy(np.stack(cs)[:, None]),
            "extra": torch.from_numpy(np.stack(es).astype(np.float32)),
        }


def diffusion_train_set(
    data: StageData, cfg: DiffusionStageConfig, condition: ConditionInputs | None = None
) -> DiffusionDataset:
    """Build the diffusion training set: patches cut while reading a store, else whole fields.

    Parameters
    ----------
    data
        The stage's data.
    cfg
        The diffusion stage configuration.
    condition
        What the samples are conditioned on (default: the target's block mean).

    Returns
    -------
    DiffusionDataset
        :class:`PatchDiffusionDataset` for a store with ``patch_size`` set, else
        the whole-field :class:`DiffusionDataset` (the stage cuts the patches).
    """
    if isinstance(data, StoreStageData) and cfg.patch_size is not None:
        return PatchDiffusionDataset(data, data.split.train, cfg.patch_size, condition)
    return DiffusionDataset(data, data.split.train, condition)
