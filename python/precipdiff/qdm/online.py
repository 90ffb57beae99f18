"""Online QDM: correcting window means inside a running ESM with a trailing projection CDF.

See :mod:`precipdiff.qdm` for the method and ``docs/qdm.md`` for the reasoning.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from precipdiff.calendars import time_fields
from precipdiff.errors import ConfigError, InputError
from precipdiff.qdm.tables import (
    QDMTables,
    check_calendar,
    check_not_negative,
    group_index,
    interp_nodes,
    tau_from_quantiles,
)

__all__ = ["OnlineQDM"]


class OnlineQDM:
    """QDM applied window by window inside a running ESM, with a trailing projection CDF.

    Parameters
    ----------
    tables
        Fitted tables (on the bundle's coarse grid).
    trailing_years
        Memory of the projection CDF in years (``mode="trailing"``).
    samples_per_day
        Averaging windows per day (1 for daily windows); sets the expected number
        of samples per group and year.
    mode
        ``"trailing"`` (trend-preserving, stateful) or ``"static"`` (quantile
        mapping against the ESM-historical CDF; no state).
    buffer_days
        Capacity of the sample buffer in days; a group period longer than this
        is summarised in several parts.
    calendar
        The ESM's calendar, for times that carry none.

    Notes
    -----
    Per window: ``tau`` is read off the current projection quantile function of
    the window's group, the correction factor interpolated at ``tau`` is
    applied, and the raw (uncorrected) value is appended to a buffer. When the
    group changes (or the buffer is full) the buffer's quantile function
    relaxes the group's projection quantiles with weight
    ``n / (trailing_years * n_year)``.
    """

    def __init__(
        self,
        tables: QDMTables,
        trailing_years: float = 20.0,
        samples_per_day: float = 1.0,
        mode: Literal["trailing", "static"] = "trailing",
        buffer_days: int = 32,
        calendar: str | None = None,
    ) -> None:
        if mode not in ("trailing", "static"):
            raise ConfigError(f"online QDM mode must be 'trailing' or 'static', got {mode!r}")
        if not trailing_years > 0:
            raise ConfigError(f"online QDM trailing_years must be > 0, got {trailing_years}")
        if not samples_per_day > 0:
            raise ConfigError(f"online QDM samples_per_day must be > 0, got {samples_per_day}")
        if calendar is not None:
            check_calendar(tables, calendar, ConfigError)
        self.tables = tables
        self.mode = mode
        self.trailing_years = float(trailing_years)
        self.samples_per_day = float(samples_per_day)
        self.calendar = calendar
        cfg = tables.config
        self.nodes = cfg.nodes
        ny, nx = tables.grid_shape
        self._ncell = ny * nx
        q = self.nodes.size
        # Precomputed at load: factor tables flattened to (group, Q, cells).
        self._factors = {
            n: t.factors().astype(np.float32).reshape(cfg.n_groups, q, -1)
            for n, t in tables.variables.items()
        }
        days = {"month": 365.25 / 12, "window": 365.25 / cfg.n_groups, "none": 365.25}[cfg.group]
        self._n_year = days * self.samples_per_day
        self._capacity = max(1, int(np.ceil(buffer_days * self.samples_per_day)))
        self._hist_q = {
            n: t.hist_q.reshape(cfg.n_groups, q, -1) for n, t in tables.variables.items()
        }
        self.proj_q = {n: h.astype(np.float32, copy=True) for n, h in self._hist_q.items()}
        self.buffer = {
            n: np.zeros((self._capacity, self._ncell), dtype=np.float32) for n in tables.variables
        }
        self.buffer_count = 0
        self.buffer_group = -1

    def _group(self, when: Any) -> int:
        tf = time_fields([when] if not isinstance(when, np.ndarray) else when, self.calendar)
        return int(group_index(tf, self.tables.config)[0])

    def apply(
        self, fields: Mapping[str, NDArray[np.floating]], when: Any
    ) -> dict[str, NDArray[np.float32]]:
        """Correct one window's fields and update the trailing projection CDF.

        Parameters
        ----------
        fields
            ``{variable: (lat, lon)}`` window means on the tables' grid;
            variables without a table pass through unchanged.
        when
            Date of the window (datetime, cftime or ``datetime64``), e.g. from
            :func:`precipdiff.calendars.model_time_to_date`.

        Returns
        -------
        dict
            Corrected fields (float32).

        Raises
        ------
        InputError
            On a wrong grid or non-finite values (named).
        """
        g = self._group(when)
        out: dict[str, NDArray[np.float32]] = {}
        shape = self.tables.grid_shape
        flat_in: dict[str, NDArray[np.float64]] = {}
        for name, arr in fields.items():
            a = np.asarray(arr)
            if name not in self._factors:
                out[name] = a.astype(np.float32, copy=False)
                continue
            if a.shape != shape:
                raise InputError(f"QDM input {name!r} has shape {a.shape}, expected {shape}")
            if not np.isfinite(a).all():
                raise InputError(
                    f"QDM input {name!r} has {int((~np.isfinite(a)).sum())} non-finite values"
                )
            t = self.tables.variables[name]
            if t.kind == "multiplicative":
                check_not_negative(name, "QDM input", a)
            x = a.reshape(1, -1).astype(np.float64)
            fg = self._factors[name][g]
            xp = self.proj_q[name][g] if self.mode == "trailing" else self._hist_q[name][g]
            tau = tau_from_quantiles(x, xp, self.nodes)
            af = interp_nodes(tau, self.nodes, fg)
            y = x * af if t.kind == "multiplicative" else x + af
            if t.kind == "multiplicative" and t.trace > 0:
                y = np.where(y < t.trace, 0.0, y)
            out[name] = y.reshape(shape).astype(np.float32)
            flat_in[name] = x[0]
        if self.mode == "trailing" and flat_in:
            if self.buffer_group not in (-1, g) or self.buffer_count >= self._capacity:
                self.flush()
            self.buffer_group = g
            for name, v in flat_in.items():
                self.buffer[name][self.buffer_count] = v
            self.buffer_count += 1
        return out

    def flush(self) -> None:
        """Fold the buffered samples into their group's projection quantiles."""
        n = self.buffer_count
        if n == 0 or self.buffer_group < 0:
            self.buffer_count = 0
            return
        g = self.buffer_group
        w = min(1.0, n / (self.trailing_years * self._n_year))
        for name, buf in self.buffer.items():
            qs = np.quantile(buf[:n].astype(np.float64), self.nodes, axis=0)
            mixed = (1.0 - w) * self.proj_q[name][g].astype(np.float64) + w * qs
            self.proj_q[name][g] = mixed.astype(np.float32)
        self.buffer_count = 0
        self.buffer_group = -1

    def state_dict(self) -> dict[str, NDArray[Any]]:
        """Return the running state as arrays (for the server's restart files).

        Returns
        -------
        dict
            ``"<var>/proj_q"`` (group, Q, cells) float32, ``"<var>/buffer"``
            (capacity, cells) float32, ``"buffer_count"`` and ``"buffer_group"``
            (int64 scalars as 1-element arrays).
        """
        st: dict[str, NDArray[Any]] = {}
        for name in self.proj_q:
            st[f"{name}/proj_q"] = self.proj_q[name].copy()
            st[f"{name}/buffer"] = self.buffer[name].copy()
        st["buffer_count"] = np.array([self.buffer_count], dtype=np.int64)
        st["buffer_group"] = np.array([self.buffer_group], dtype=np.int64)
        return st

    def load_state_dict(self, state: Mapping[str, ArrayLike]) -> None:
        """Restore a state from :meth:`state_dict`.

        Parameters
        ----------
        state
            The arrays.

        Raises
        ------
        InputError
            When a key is missing or an array has the wrong shape (named).
        """
        expected = set(self.state_dict())
        missing = sorted(expected - set(state))
        extra = sorted(set(state) - expected)
        if missing or extra:
            raise InputError(f"online QDM state: missing keys {missing}, unexpected keys {extra}")
        for name in self.proj_q:
            for key, ref in (
                (f"{name}/proj_q", self.proj_q[name]),
                (f"{name}/buffer", self.buffer[name]),
            ):
                arr = np.asarray(state[key])
                if arr.shape != ref.shape:
                    raise InputError(
                        f"online QDM state {key!r} has shape {arr.shape}, expected {ref.shape}"
                    )
        for name in self.proj_q:
            self.proj_q[name] = np.array(state[f"{name}/proj_q"], dtype=np.float32)
            self.buffer[name] = np.array(state[f"{name}/buffer"], dtype=np.float32)
        self.buffer_count = int(np.asarray(state["buffer_count"]).ravel()[0])
        self.buffer_group = int(np.asarray(state["buffer_group"]).ravel()[0])
        if not 0 <= self.buffer_count <= self._capacity:
            raise InputError(f"online QDM state buffer_count {self.buffer_count} is out of range")
