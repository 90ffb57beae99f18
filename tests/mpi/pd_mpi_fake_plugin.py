"""Fake plugins for the MPI layer's ctest programs (tests/mpi/).

``FailingPlugin`` is ``pd_fake_plugin.FakePlugin`` (tests/fortran) plus failures on
request, to check that an error on the inference rank reaches every rank. Namelist
group ``&mpi_fake_nml``: ``fail_at_time`` (model time in s at which ``step`` raises)
and ``fail_kind``: ``'python'`` (a plain ``RuntimeError``: PD_ERR_PYTHON) or ``'oom'``
(what the real Plugin raises for a CUDA out-of-memory: ``DeviceError``).

``MemberRankFailingPlugin`` is the real ``Plugin`` (per-node inference, members split
across inference ranks) whose engine fails on one inference rank only: ``&mpi_fake_nml``
``fail_window``, ``fail_inference_rank`` (rank in the inference communicator), ``fail_kind``.
"""

from __future__ import annotations

from typing import Any

import f90nml
from pd_fake_plugin import FakePlugin

from precipdiff import errors
from precipdiff.server.plugin import Plugin


class FailingPlugin(FakePlugin):
    """FakePlugin whose ``step`` fails at a chosen model time."""

    fail_at_time: float = -1.0
    fail_kind: str = "python"

    @classmethod
    def from_namelist(
        cls, nml_path: str, lon: Any, lat: Any, rank: int | None = None
    ) -> FailingPlugin:
        plugin = super().from_namelist(nml_path, lon, lat, rank=rank)
        assert isinstance(plugin, FailingPlugin)
        group = f90nml.read(nml_path).get("mpi_fake_nml", {})
        plugin.fail_at_time = float(group.get("fail_at_time", -1.0))
        plugin.fail_kind = str(group.get("fail_kind", "python"))
        return plugin

    def step(self, model_time_s: float, dt_s: float) -> bool:
        if model_time_s == self.fail_at_time:
            if self.fail_kind == "oom":
                raise errors.DeviceError(
                    f"GPU out of memory generating the window ending at {model_time_s} s "
                    "(simulated by the MPI test plugin)"
                )
            raise RuntimeError(f"simulated Python failure at model time {model_time_s} s")
        return super().step(model_time_s, dt_s)


class _FailingEngine:
    """Wraps an engine; ``generate`` raises for one window (on the failing rank only)."""

    def __init__(self, inner: Any, fail_window: int, fail_kind: str) -> None:
        self._inner = inner
        self._fail_window = fail_window
        self._fail_kind = fail_kind

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def generate(
        self, predictors: Any, members: int, seed: int, window: int, *args: Any, **kwargs: Any
    ) -> Any:
        if window == self._fail_window:
            if self._fail_kind == "oom":
                raise errors.DeviceError(
                    f"GPU out of memory generating window {window} (simulated on one "
                    "inference rank by the MPI test plugin)"
                )
            raise RuntimeError(f"simulated failure of window {window} on one inference rank")
        return self._inner.generate(predictors, members, seed, window, *args, **kwargs)


class MemberRankFailingPlugin(Plugin):
    """The real Plugin whose engine fails on ONE inference rank of the per-node mode.

    Namelist group ``&mpi_fake_nml``: ``fail_window`` (window index), ``fail_inference_rank``
    (rank in the inference communicator) and ``fail_kind`` (``'python'`` or ``'oom'``).
    """

    @classmethod
    def from_namelist(
        cls,
        nml_path: str,
        lon: Any,
        lat: Any,
        *,
        rank: int | None = None,
        engine: Any = None,
        member_comm: Any = None,
    ) -> Plugin:
        plugin = super().from_namelist(
            nml_path, lon, lat, rank=rank, engine=engine, member_comm=member_comm
        )
        group = f90nml.read(nml_path).get("mpi_fake_nml", {})
        me = 0 if member_comm is None else member_comm.Get_rank()
        if me == int(group.get("fail_inference_rank", -1)):
            plugin.engine = _FailingEngine(
                plugin.engine,
                int(group.get("fail_window", -1)),
                str(group.get("fail_kind", "python")),
            )
        return plugin
