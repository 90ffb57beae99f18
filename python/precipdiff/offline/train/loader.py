"""Which samples each process trains on at each step, and reading them ahead of time.

:class:`StepPlan` is the whole data order of a run as a pure function of
``(seed, step, rank, world size)``: epoch ``e`` visits the training samples
(days) in the order ``numpy.random.default_rng([seed, e]).permutation``; global
batch ``k`` of the epoch is positions ``[k B, (k+1) B)`` of that order and rank
``r`` of ``N`` takes the contiguous block ``[r B/N, (r+1) B/N)`` of it. So in
every epoch each rank reads its own shard of the days (disjoint across ranks,
together the epoch), and -- because every per-sample random choice is seeded by
the sample's position in the *global* batch (:func:`sample_seeds`) -- N
processes train the same model as one process with the same global batch, and a
run resumed with a different number of processes continues the same data order.

:class:`BatchStream` reads the batches of consecutive steps, in the training
process (``workers = 0``) or in worker processes that stay ``prefetch`` batches
per worker ahead of the step being trained (a :class:`torch.utils.data.DataLoader`
over step indices), pinned for asynchronous copies to a GPU. The batches are
identical either way; only when they are read differs.

Datasets with a ``seeded_batch(items, seeds)`` method receive the per-sample
seeds of the step, so that they can cut each sample's random patch from storage
instead of reading whole fields
(:class:`precipdiff.offline.train.store_data.PatchDiffusionDataset`);
:func:`patch_corner` is the one definition of where a sample's patch lies,
shared with the diffusion stage.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from precipdiff.errors import ConfigError


def sample_seeds(seed: int, step: int, positions: np.ndarray) -> np.ndarray:
    """Seeds of the per-sample random choices of one step.

    Parameters
    ----------
    seed
        Run seed.
    step
        Optimiser step (``-1`` for validation, which is the same every time).
    positions
        Positions of the samples in the epoch's order (:class:`StepPlan`).

    Returns
    -------
    numpy.ndarray
        ``int64`` seeds, one per position.
    """
    return np.array(
        [
            np.random.SeedSequence([seed, step + 1, int(p)]).generate_state(1, np.uint64)[0]
            >> np.uint64(1)
            for p in positions
        ],
        dtype=np.int64,
    )


def patch_corner(
    gen: torch.Generator, height: int, width: int, patch_h: int, patch_w: int, factor: int
) -> tuple[int, int]:
    """Draw a sample's patch corner on whole coarse cells (the first two draws of ``gen``).

    The corner sits on a multiple of the coarsening factor so that the patch's
    condition equals the crop of the full-grid condition the runtime builds.
    One ``randint`` per axis is drawn whatever the range, so a generator that
    has drawn the corner of a patch-sized field (always ``(0, 0)``) is in the
    same state as one that drew a corner on the whole field: a batch already
    cut to the patch gives the stage exactly the same noise.

    Parameters
    ----------
    gen
        The sample's generator (seeded from :func:`sample_seeds`).
    height, width
        Size of the field the patch is cut from.
    patch_h, patch_w
        Patch size (``<=`` the field; multiples of ``factor``).
    factor
        Coarsening factor.

    Returns
    -------
    tuple of int
        ``(row, column)`` of the patch's first fine cell.
    """
    r0 = int(torch.randint(0, (height - patch_h) // factor + 1, (1,), generator=gen)) * factor
    c0 = int(torch.randint(0, (width - patch_w) // factor + 1, (1,), generator=gen)) * factor
    return r0, c0


@dataclass(frozen=True)
class StepBatch:
    """One process's part of one global batch.

    Parameters
    ----------
    step
        Optimiser step.
    epoch
        Epoch the step belongs to.
    positions
        Positions of this process's samples in the epoch's order (the global
        batch of a step is one contiguous block of it, so a position identifies
        the sample's place in the global batch).
    items
        Dataset indices (training samples) of those positions.
    seeds
        Per-sample seeds (:func:`sample_seeds` of the positions).
    """

    step: int
    epoch: int
    positions: np.ndarray
    items: np.ndarray
    seeds: np.ndarray


@dataclass(frozen=True)
class StepPlan:
    """The data order of a run (see the module docstring).

    Parameters
    ----------
    seed
        Run seed.
    n_train
        Training samples.
    global_batch
        Samples per optimiser step over all processes.
    rank, world_size
        This process and the number of processes.
    """

    seed: int
    n_train: int
    global_batch: int
    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if self.global_batch % self.world_size:
            raise ConfigError(
                f"optim.batch_size {self.global_batch} is not divisible by the "
                f"{self.world_size} processes"
            )
        if self.n_train < self.global_batch:
            raise ConfigError(
                f"optim.batch_size {self.global_batch} exceeds the {self.n_train} training samples"
            )

    @property
    def local_batch(self) -> int:
        """Samples per step on this process."""
        return self.global_batch // self.world_size

    @property
    def steps_per_epoch(self) -> int:
        """Whole global batches per epoch (the remainder of the order is not used)."""
        return self.n_train // self.global_batch

    def order(self, epoch: int) -> np.ndarray:
        """Sample order of one epoch.

        Parameters
        ----------
        epoch
            The epoch.

        Returns
        -------
        numpy.ndarray
            A permutation of the training samples.
        """
        return np.random.default_rng([self.seed, epoch]).permutation(self.n_train)

    def at(self, step: int) -> StepBatch:
        """Return this process's samples of one step.

        Parameters
        ----------
        step
            Optimiser step.

        Returns
        -------
        StepBatch
            Positions, dataset indices and seeds.
        """
        epoch, within = divmod(step, self.steps_per_epoch)
        start = within * self.global_batch + self.rank * self.local_batch
        positions = np.arange(start, start + self.local_batch)
        items = self.order(epoch)[positions]
        return StepBatch(step, epoch, positions, items, sample_seeds(self.seed, step, positions))

    def shard(self, epoch: int) -> np.ndarray:
        """Every sample this process reads in one epoch.

        Parameters
        ----------
        epoch
            The epoch.

        Returns
        -------
        numpy.ndarray
            Dataset indices, in reading order.
        """
        first = epoch * self.steps_per_epoch
        return np.concatenate(
            [self.at(s).items for s in range(first, first + self.steps_per_epoch)]
        )


class BatchSource(Protocol):
    """A dataset that reads whole batches (one read per file)."""

    def __len__(self) -> int: ...

    def batch(self, items: np.ndarray) -> dict[str, torch.Tensor]:
        """Read the samples ``items`` as one batch of tensors."""
        ...


def read_step(source: BatchSource, sb: StepBatch) -> dict[str, torch.Tensor]:
    """Read one step's batch (with its seeds when the dataset takes them).

    Parameters
    ----------
    source
        The training dataset.
    sb
        The step's samples.

    Returns
    -------
    dict
        The batch tensors (on the CPU).
    """
    seeded = getattr(source, "seeded_batch", None)
    if seeded is not None:
        return dict(seeded(sb.items, sb.seeds))
    return source.batch(sb.items)


class _Steps(torch.utils.data.Dataset[tuple[int, dict[str, torch.Tensor]]]):
    """Step index -> (step, batch): what the DataLoader workers evaluate."""

    def __init__(self, source: BatchSource, plan: StepPlan) -> None:
        self.source = source
        self.plan = plan

    def __getitem__(self, step: int) -> tuple[int, dict[str, torch.Tensor]]:
        return step, read_step(self.source, self.plan.at(int(step)))


def _worker_init(_: int) -> None:
    # One intra-op thread per worker: the workers are the parallelism.
    torch.set_num_threads(1)


class BatchStream:
    """The batches of steps ``start .. end - 1``, in order, read ahead by workers.

    Parameters
    ----------
    source
        The training dataset.
    plan
        The run's data order.
    start, end
        Steps to read.
    workers
        Worker processes (``0``: read in this process when asked).
    prefetch
        Batches each worker keeps ready.
    pin_memory
        Pin batches in page-locked memory (CUDA training).
    """

    def __init__(
        self,
        source: BatchSource,
        plan: StepPlan,
        start: int,
        end: int,
        *,
        workers: int = 0,
        prefetch: int = 2,
        pin_memory: bool = False,
    ) -> None:
        self.source = source
        self.plan = plan
        self.start, self.end = int(start), int(end)
        self._iter: Iterator[Any] | None = None
        if workers > 0 and self.end > self.start:
            loader = torch.utils.data.DataLoader(
                _Steps(source, plan),
                batch_size=None,
                sampler=range(self.start, self.end),
                num_workers=workers,
                prefetch_factor=prefetch,
                pin_memory=pin_memory,
                worker_init_fn=_worker_init,
                persistent_workers=False,
            )
            self._iter = iter(loader)

    def get(self, step: int) -> dict[str, torch.Tensor]:
        """Return the batch of ``step`` (steps must be asked for in order).

        Parameters
        ----------
        step
            The next step.

        Returns
        -------
        dict
            The batch tensors (on the CPU).
        """
        if self._iter is None:
            return read_step(self.source, self.plan.at(step))
        got, batch = next(self._iter)
        if int(got) != step:  # pragma: no cover - the sampler yields steps in order
            raise RuntimeError(f"batch stream out of order: expected step {step}, got {got}")
        return dict(batch)

    def close(self) -> None:
        """Stop the workers (batches read ahead are dropped)."""
        it, self._iter = self._iter, None
        if it is not None:
            shutdown = getattr(it, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()

    def __enter__(self) -> BatchStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
