"""The window accumulator: running sums of the ESM's fields over an averaging window.

The ESM passes each predictor every timestep, as a 2-D field on the right level
(under the bundle's name or an alias) or as a 3-D field on model levels with its
layer pressures (under a base name such as ``hus``), which is interpolated to the
bundle's pressure levels (:func:`precipdiff.server.vertical.interp_log_pressure`).
Sums are float64 on the ESM grid, updated in place.

Closing a window is two steps so that a failure leaves nothing half done:
:meth:`FieldAccumulator.window_means` computes and checks the means without
changing any state; :meth:`FieldAccumulator.reset` empties the sums once the
window has been handed on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from precipdiff.errors import InputError
from precipdiff.server.engine import PredictorSpec
from precipdiff.server.vertical import interp_log_pressure

__all__ = ["FieldAccumulator"]


class FieldAccumulator:
    """Sums and sample counts of the bundle's predictors on the ESM grid.

    Parameters
    ----------
    specs : Sequence[PredictorSpec]
        The predictors the bundle needs.
    model_shape : tuple of int
        ``(nlat, nlon)`` of the ESM grid.
    below_ground : str
        What to do with pressure levels below the lowest model layer
        (``PluginConfig.below_ground``).
    """

    def __init__(
        self, specs: Sequence[PredictorSpec], model_shape: tuple[int, int], below_ground: str
    ) -> None:
        self.model_shape = model_shape
        self.below_ground = below_ground
        self.required_fields: list[str] = [s.name for s in specs]
        # Accepted names: canonical names and aliases (2-D), base names (3-D).
        self._alias: dict[str, str] = {}
        for s in specs:
            for a in (*s.aliases, s.name):
                self._alias[a] = s.name
        self._by3d: dict[str, list[PredictorSpec]] = {}
        for s in specs:
            if s.level_hpa is None:
                continue
            for b in s.base_names:
                if b not in self._alias:
                    self._by3d.setdefault(b, []).append(s)
        self._levels3d = {
            b: np.array([s.level_hpa for s in group], dtype=np.float64) * 100.0
            for b, group in self._by3d.items()
        }
        self.sums = {n: np.zeros(model_shape, dtype=np.float64) for n in self.required_fields}
        self.counts = dict.fromkeys(self.required_fields, 0)
        self._set_this_step: set[str] = set()

    @property
    def fields_3d(self) -> dict[str, list[float]]:
        """Base names of accepted 3-D fields and the hPa levels taken from each."""
        return {b: [float(s.level_hpa or 0.0) for s in group] for b, group in self._by3d.items()}

    def add(self, name: str, values: np.ndarray, pressure: np.ndarray | None = None) -> None:
        """Add one instantaneous field of the current timestep.

        Parameters
        ----------
        name : str
            A required field (or alias) for 2-D values, a base name for 3-D values.
        values : numpy.ndarray
            ``(nlat, nlon)``, or ``(nlev, nlat, nlon)`` with ``pressure``.
        pressure : numpy.ndarray, optional
            Layer pressures in Pa, same shape as a 3-D ``values``.

        Raises
        ------
        InputError
            Unknown name, wrong shape, a field set twice in one step, or a level
            below ground under ``below_ground = 'error'``. Nothing is added then.
        """
        if pressure is None:
            if name not in self._alias:
                raise InputError(self._unknown_field_message(name, three_d=False))
            name = self._alias[name]
            if values.shape != self.model_shape:
                raise InputError(
                    f"field {name!r}: shape {values.shape} does not match the ESM grid "
                    f"(nlat, nlon) = {self.model_shape}"
                    + ("; a 3-D field needs its layer pressures" if values.ndim == 3 else "")
                )
            self._check_once(name)
            self._set_this_step.add(name)
            acc = self.sums[name]
            np.add(acc, values, out=acc)
            self.counts[name] += 1
            return
        specs = self._by3d.get(name)
        if specs is None:
            raise InputError(self._unknown_field_message(name, three_d=True))
        if values.ndim != 3 or values.shape[1:] != self.model_shape:
            raise InputError(
                f"field {name!r}: a 3-D field must have shape (nlev, nlat, nlon) with "
                f"(nlat, nlon) = {self.model_shape}, got {values.shape}"
            )
        for s in specs:
            self._check_once(s.name)
        interp = interp_log_pressure(
            name,
            values,
            pressure,
            self._levels3d[name],
            self.below_ground,  # type: ignore[arg-type]
        )
        for i, s in enumerate(specs):
            self._set_this_step.add(s.name)
            acc = self.sums[s.name]
            np.add(acc, interp[i], out=acc)
            self.counts[s.name] += 1

    def end_step(self) -> None:
        """Mark the end of a timestep (each field may be set once per step)."""
        self._set_this_step.clear()

    def window_means(self, window: int, model_time_s: float) -> dict[str, np.ndarray]:
        """Return the window mean of every required field, checked; changes nothing.

        Parameters
        ----------
        window : int
            Index of the window (for messages).
        model_time_s : float
            Model time at which it closes (for messages).

        Returns
        -------
        dict
            ``{name: (nlat, nlon) float64}``.

        Raises
        ------
        InputError
            A field never set in the window, or non-finite means (first location named).
        """
        missing = [name for name in self.required_fields if self.counts[name] == 0]
        if missing:
            raise InputError(
                f"window {window} closed at model time {model_time_s:g} s without field(s) "
                f"{', '.join(missing)}: call set_field for every required field "
                f"({', '.join(self.required_fields)}) each timestep"
            )
        means: dict[str, np.ndarray] = {}
        for name in self.required_fields:
            mean = self.sums[name] / self.counts[name]
            bad = ~np.isfinite(mean)
            if bad.any():
                j, i = np.argwhere(bad)[0]
                raise InputError(
                    f"window {window}: field {name!r} has {int(bad.sum())} non-finite "
                    f"window-mean values (first at lat index {j}, lon index {i})"
                )
            means[name] = mean
        return means

    def reset(self) -> None:
        """Empty the sums and counts (a new window starts)."""
        for acc in self.sums.values():
            acc.fill(0.0)
        self.counts = dict.fromkeys(self.required_fields, 0)
        self._set_this_step.clear()

    def load(self, sums: Mapping[str, np.ndarray], counts: Mapping[str, int]) -> None:
        """Restore sums and counts (from a restart file).

        Parameters
        ----------
        sums : Mapping[str, numpy.ndarray]
            Sums per required field, ``(nlat, nlon)``.
        counts : Mapping[str, int]
            Sample counts per required field.
        """
        for name in self.required_fields:
            self.sums[name][...] = sums[name]
        self.counts = {name: int(counts[name]) for name in self.required_fields}
        self._set_this_step.clear()

    def _check_once(self, name: str) -> None:
        if name in self._set_this_step:
            raise InputError(
                f"field {name!r} was set twice in the same timestep (call step() between)"
            )

    def _unknown_field_message(self, name: str, three_d: bool) -> str:
        msg = f"unknown field {name!r}: the bundle needs {', '.join(self.required_fields)}"
        if self._by3d:
            msg += (
                f"; 3-D fields on model levels (with pressure) are accepted as "
                f"{', '.join(self._by3d)}"
            )
        if three_d and name in self._alias:
            msg += f" ({name!r} is a 2-D field: pass it without pressure)"
        return msg
