"""Fake plugins for the MPI layer's ctest programs (tests/mpi/).

``FailingPlugin`` is ``pd_fake_plugin.FakePlugin`` (tests/fortran) plus failures on
request, to check that an error on the inference rank reaches every rank. Namelist
group ``&mpi_fake_nml``: ``fail_at_time`` (model time in s at which ``step`` raises)
and ``fail_kind``: ``'python'`` (a plain ``RuntimeError``: PD_ERR_PYTHON) or ``'oom'``
(what the real Plugin raises for a CUDA out-of-memory: ``DeviceError``).
"""

from __future__ import annotations

from typing import Any

import f90nml
from pd_fake_plugin import FakePlugin

from precipdiff import errors


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
