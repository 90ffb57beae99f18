"""A deterministic stand-in for precipdiff.server.plugin.Plugin, for bridge tests.

Selected with PRECIPDIFF_PLUGIN_CLASS=pd_fake_plugin:FakePlugin (this directory on
PYTHONPATH). It follows the Plugin contract with arithmetic the Fortran tests can
reproduce exactly: over a window, output_model = sum over required fields of the
window mean; output_fine = output_model repeated refine x refine.

Namelist group &fake_plugin_nml: fields (list of names), window_s, refine,
fail_at_init (raise that error class name from from_namelist, e.g. 'BundleError').
"""

from __future__ import annotations

import json

import f90nml
import numpy as np

from precipdiff import errors


class FakePlugin:
    def __init__(self, fields: list[str], window_s: float, refine: int, lon, lat) -> None:
        self.required_fields = list(fields)
        self.window_s = float(window_s)
        self.refine = int(refine)
        self.model_shape = (lat.size, lon.size)
        self.fine_shape = (lat.size * self.refine, lon.size * self.refine)
        self.fine_lon = np.linspace(float(lon[0]), float(lon[-1]), self.fine_shape[1])
        self.fine_lat = np.linspace(float(lat[0]), float(lat[-1]), self.fine_shape[0])
        self._sum = {n: np.zeros(self.model_shape) for n in fields}
        self._count = 0
        self._set: set[str] = set()
        self._out: np.ndarray | None = None
        self.closed = False

    @classmethod
    def from_namelist(cls, nml_path: str, lon, lat, rank: int | None = None) -> FakePlugin:
        nml = f90nml.read(nml_path)
        if "fake_plugin_nml" not in nml:
            raise errors.ConfigError(f"{nml_path}: no &fake_plugin_nml group")
        g = nml["fake_plugin_nml"]
        if g.get("fail_at_init"):
            cls_ = getattr(errors, g["fail_at_init"])
            raise cls_(f"fake failure requested by {nml_path}")
        fields = g.get("fields", ["hus850", "psl"])
        if isinstance(fields, str):
            fields = [fields]
        return cls(fields, g.get("window_s", 86400.0), g.get("refine", 4), lon, lat)

    def set_field(self, name, values, pressure=None) -> None:
        if name not in self._sum:
            raise errors.InputError(f"unknown field {name!r}; expected {self.required_fields}")
        if pressure is not None:
            # 3-D: take the level nearest 850 hPa in each column (exact selection).
            idx = np.abs(pressure - 85000.0).argmin(axis=0)
            values = np.take_along_axis(values, idx[None], axis=0)[0]
        self._sum[name] += values
        self._set.add(name)

    def step(self, model_time_s: float, dt_s: float) -> bool:
        missing = [n for n in self.required_fields if n not in self._set]
        if missing:
            raise errors.InputError(f"fields {missing} not set before step at t={model_time_s}")
        self._set.clear()
        self._count += 1
        if model_time_s % self.window_s != 0:
            return False
        out = np.zeros(self.model_shape)
        for n in self.required_fields:
            out += self._sum[n] / self._count
            self._sum[n][...] = 0.0
        self._count = 0
        self._out = out
        return True

    @property
    def ready_window(self) -> int:
        """-1 until a window has closed (the bridge's get_output refuses before)."""
        return -1 if self._out is None else 0

    def output_model(self) -> np.ndarray:
        assert self._out is not None
        return self._out

    def output_fine(self) -> np.ndarray:
        assert self._out is not None
        return np.kron(self._out, np.ones((self.refine, self.refine)))

    def write_restart(self, path: str) -> None:
        state = {"sum": {k: v.tolist() for k, v in self._sum.items()}, "count": self._count}
        state["set"] = sorted(self._set)
        state["out"] = None if self._out is None else self._out.tolist()
        with open(path, "w") as f:
            json.dump(state, f)

    def read_restart(self, path: str) -> None:
        try:
            with open(path) as f:
                state = json.load(f)
        except OSError as exc:
            raise errors.ConfigError(f"restart file {path!r}: {exc.strerror}") from None
        self._sum = {k: np.array(v) for k, v in state["sum"].items()}
        self._count = state["count"]
        self._set = set(state["set"])
        self._out = None if state["out"] is None else np.array(state["out"])

    def close(self) -> None:
        self.closed = True


class ExitingPlugin(FakePlugin):
    """Calls sys.exit in step: the bridge must report it, never exit the host."""

    def step(self, model_time_s: float, dt_s: float) -> bool:
        raise SystemExit(3)


class SlowPlugin(FakePlugin):
    """Sleeps inside set_field and step (the GIL is released) and detects overlap.

    Two threads calling one handle at once must be serialised by the bridge; if a
    second call ever enters while another is inside, the call raises.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._inside = 0

    def _enter(self) -> None:
        import time

        self._inside += 1
        try:
            if self._inside > 1:
                raise RuntimeError("two calls inside one plugin at once (handle not serialised)")
            time.sleep(0.002)
        finally:
            self._inside -= 1

    def set_field(self, name, values, pressure=None) -> None:
        self._enter()
        super().set_field(name, values, pressure)

    def step(self, model_time_s: float, dt_s: float) -> bool:
        self._enter()
        return super().step(model_time_s, dt_s)
