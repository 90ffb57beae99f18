"""Members split across inference ranks (the MPI layer's per-node mode), in one process.

``Plugin(member_comm=...)`` generates a contiguous member block per inference rank and
exchanges the blocks in member order. Here two plugins run in two threads with a
thread-backed stand-in for the mpi4py communicator, so the exchange, the handed-back
fields, the output stream, restarts and the failure protocol are checked against the
single-rank plugin without MPI. The real MPI path is ctest ``mpi_real_per_node``
(tests/mpi/run_mpi_real.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_server_plugin import COARSE, FINE, MODEL, NumpyEngine, fields_at

from precipdiff.errors import ConfigError, DeviceError
from precipdiff.server import Plugin, PluginConfig, window_seed_sequence
from precipdiff.server.plugin import GeneratorEngine, member_block

DT = 21600.0


class OffsetEngine(NumpyEngine):
    """NumpyEngine with ``member_offset`` (member k draws from SeedSequence([seed, n, k]))."""

    def __init__(self, fail_window: int = -1) -> None:
        super().__init__()
        self.fail_window = fail_window
        self.blocks: list[tuple[int, int]] = []

    def generate(
        self,
        predictors: Mapping[str, np.ndarray],
        members: int,
        seed: int,
        window: int,
        steps: int | None,
        conserve_mass: bool,
        member_offset: int = 0,
    ) -> np.ndarray:
        if window == self.fail_window:
            raise DeviceError(f"GPU out of memory generating window {window} (simulated)")
        self.blocks.append((member_offset, members))
        base = 1000.0 * predictors["hus850"][0] + (predictors["psl"][0] - 101000.0) / 1000.0
        fine = np.kron(base, np.ones((4, 4)))
        out = np.empty((members, *fine.shape))
        for k in range(members):
            rng = np.random.default_rng(window_seed_sequence(seed, window, member_offset + k))
            out[k] = np.maximum(fine + rng.gamma(1.0, 1.0, size=fine.shape), 0.0)
        return out


class ThreadComm:
    """The slice of an mpi4py communicator the plugin uses, for ranks that are threads."""

    def __init__(self, rank: int, shared: dict[str, Any]) -> None:
        self.rank = rank
        self.shared = shared

    def Get_rank(self) -> int:
        return self.rank

    def Get_size(self) -> int:
        return int(self.shared["size"])

    def allgather(self, obj: Any) -> list[Any]:
        barrier: threading.Barrier = self.shared["barrier"]
        self.shared["slots"][self.rank] = obj
        barrier.wait(timeout=30)
        out = list(self.shared["slots"])
        barrier.wait(timeout=30)
        return out


def thread_comms(size: int) -> list[ThreadComm]:
    shared: dict[str, Any] = {
        "size": size,
        "barrier": threading.Barrier(size),
        "slots": [None] * size,
    }
    return [ThreadComm(r, shared) for r in range(size)]


def drive(plugin: Plugin, first: int, nsteps: int) -> list[tuple[int, bytes, bytes]]:
    """Steps first..first+nsteps-1; (window, output_fine bytes, members bytes) when ready."""
    ready = []
    for s in range(first, first + nsteps):
        for name, val in fields_at(s).items():
            plugin.set_field(name, val)
        if plugin.step((s + 1) * DT, DT):
            ready.append(
                (
                    plugin.ready_window,
                    plugin.output_fine().tobytes(),
                    plugin.output_members().tobytes(),
                )
            )
    return ready


def run_split(
    size: int,
    make: Callable[[int, ThreadComm], Plugin],
    body: Callable[[Plugin], Any],
) -> list[Any]:
    """Run ``body(plugin)`` on ``size`` thread-ranks; results (or exceptions) by rank."""
    comms = thread_comms(size)
    results: list[Any] = [None] * size

    def worker(r: int) -> None:
        try:
            results[r] = body(make(r, comms[r]))
        except Exception as exc:
            results[r] = exc

    threads = [threading.Thread(target=worker, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a rank hangs in the member exchange"
    return results


def config(tmp_path: Path, **kw: Any) -> PluginConfig:
    return PluginConfig(bundle_path=str(tmp_path / "unused"), **kw)


@pytest.mark.parametrize("members", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("parts", [1, 2, 3, 5])
def test_member_block_is_a_contiguous_ordered_partition(members: int, parts: int) -> None:
    blocks = [member_block(members, parts, j) for j in range(parts)]
    covered = [k for lo, hi in blocks for k in range(lo, hi)]
    assert covered == list(range(members))
    sizes = [hi - lo for lo, hi in blocks]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("inference", ["sync", "lagged"])
@pytest.mark.parametrize(
    "mode", [{"return_mode": "member", "return_member": 3}, {"return_mode": "mean"}, {}]
)
def test_split_equals_single_rank_bitwise(
    tmp_path: Path, inference: str, mode: dict[str, Any]
) -> None:
    kw = {"members": 4, "inference": inference, **mode}
    if not mode:
        kw["return_mode"] = "cycle"
    single = Plugin(config(tmp_path, **kw), MODEL.lon, MODEL.lat, OffsetEngine(), rank=0)
    ref = drive(single, 0, 16)
    engines = [OffsetEngine(), OffsetEngine()]

    def make(r: int, comm: ThreadComm) -> Plugin:
        return Plugin(
            config(tmp_path, **kw), MODEL.lon, MODEL.lat, engines[r], rank=r, member_comm=comm
        )

    got = run_split(2, make, lambda p: drive(p, 0, 16))
    assert len(ref) == (4 if inference == "sync" else 3)
    assert got[0] == ref and got[1] == ref
    # Each rank generated only its own block of every window.
    assert {b for b in engines[0].blocks} == {(0, 2)}
    assert {b for b in engines[1].blocks} == {(2, 2)}


def test_more_ranks_than_members(tmp_path: Path) -> None:
    kw = {"members": 2, "return_mode": "mean"}
    single = Plugin(config(tmp_path, **kw), MODEL.lon, MODEL.lat, OffsetEngine(), rank=0)
    ref = drive(single, 0, 8)

    def make(r: int, comm: ThreadComm) -> Plugin:
        return Plugin(
            config(tmp_path, **kw), MODEL.lon, MODEL.lat, OffsetEngine(), member_comm=comm
        )

    assert run_split(3, make, lambda p: drive(p, 0, 8)) == [ref, ref, ref]


def test_only_first_inference_rank_writes_stream_and_restart(tmp_path: Path) -> None:
    def make(r: int, comm: ThreadComm) -> Plugin:
        cfg = config(
            tmp_path,
            members=4,
            output_dir=str(tmp_path / f"stream{r}"),
            reference_time="2000-01-01 00:00:00",
            inference="lagged",
        )
        return Plugin(cfg, MODEL.lon, MODEL.lat, OffsetEngine(), rank=r, member_comm=comm)

    def body(p: Plugin) -> bool:
        drive(p, 0, 6)
        p.write_restart(str(tmp_path / f"restart{p.rank}.nc"))
        p.close()
        return True

    assert run_split(2, make, body) == [True, True]
    assert list((tmp_path / "stream0").glob("*.nc"))
    assert not (tmp_path / "stream1").exists() or not list((tmp_path / "stream1").glob("*.nc"))
    assert (tmp_path / "restart0.nc").is_file()
    assert not (tmp_path / "restart1.nc").exists()


def test_restart_continues_bitwise_with_split_members(tmp_path: Path) -> None:
    kw = {"members": 4, "return_mode": "cycle", "inference": "lagged"}
    single = Plugin(config(tmp_path, **kw), MODEL.lon, MODEL.lat, OffsetEngine(), rank=0)
    ref = drive(single, 0, 16)
    rst = tmp_path / "restart0.nc"

    def make(r: int, comm: ThreadComm) -> Plugin:
        return Plugin(
            config(tmp_path, **kw), MODEL.lon, MODEL.lat, OffsetEngine(), rank=r, member_comm=comm
        )

    # netCDF/HDF5 is not thread-safe: the thread-ranks take turns on files (MPI ranks
    # are processes and need no lock).
    nc_lock = threading.Lock()

    def first_half(p: Plugin) -> list[tuple[int, bytes, bytes]]:
        out = drive(p, 0, 10)  # a pending (lagged) window crosses the restart
        p.write_restart(str(tmp_path / f"restart{p.rank}.nc"))  # exchange first: no lock
        return out

    def second_half(p: Plugin) -> list[tuple[int, bytes, bytes]]:
        with nc_lock:
            p.read_restart(str(rst))  # every inference rank reads the first rank's file
        return drive(p, 10, 6)

    part1 = run_split(2, make, first_half)
    part2 = run_split(2, make, second_half)
    assert part1[0] + part2[0] == ref
    assert part1[1] + part2[1] == ref


@pytest.mark.parametrize("inference", ["sync", "lagged"])
def test_failure_on_one_inference_rank_reaches_all(tmp_path: Path, inference: str) -> None:
    def make(r: int, comm: ThreadComm) -> Plugin:
        engine = OffsetEngine(fail_window=1 if r == 1 else -1)
        cfg = config(tmp_path, members=4, inference=inference)
        return Plugin(cfg, MODEL.lon, MODEL.lat, engine, rank=r, member_comm=comm)

    results = run_split(2, make, lambda p: drive(p, 0, 12))
    for r, res in enumerate(results):
        assert isinstance(res, DeviceError), f"rank {r}: {res!r}"
    assert "inference rank 1" in str(results[0])
    assert "out of memory" in str(results[0])


def test_output_rank_other_than_first_inference_rank_is_rejected(tmp_path: Path) -> None:
    comm = thread_comms(2)[1]
    cfg = config(tmp_path, members=2, output_dir=str(tmp_path / "s"), output_rank=2)
    with pytest.raises(ConfigError, match="output_rank = 2"):
        Plugin(cfg, MODEL.lon, MODEL.lat, OffsetEngine(), rank=1, member_comm=comm)


def test_generator_member_blocks_equal_full_ensemble(tmp_path: Path) -> None:
    """The real generator: member k does not depend on who computes it (member_offset)."""
    from precipdiff.testing.models import DEFAULT_VARIABLES, make_tiny_bundle, random_predictors

    bundle = make_tiny_bundle(tmp_path / "b", coarse_grid=COARSE, fine_grid=FINE, seed=1)
    engine = GeneratorEngine.from_bundle(str(bundle), device="cpu")
    preds = random_predictors(DEFAULT_VARIABLES, COARSE, times=1, seed=2)
    full = engine.generate(preds, 4, 5, 7, 2, False)
    blocks = [
        engine.generate(preds, hi - lo, 5, 7, 2, False, member_offset=lo)
        for lo, hi in (member_block(4, 3, j) for j in range(3))
    ]
    assert np.concatenate(blocks).tobytes() == full.tobytes()
