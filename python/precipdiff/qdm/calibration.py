"""Output calibration: quantile mapping of *generated* precipitation onto observations.

Issue 13's "option of last resort": where the networks still miss the observed
distribution (the heavy tail, the drizzle threshold, small-scale variance), a
per-fine-cell monotone transfer function fitted once, offline, on the training
period maps the generated values onto the observed distribution::

    y = x * F_obs^-1(tau) / F_gen^-1(tau),    tau = F_gen(x)

``F_gen`` is the distribution of the bundle's own output when it is driven by
the reanalysis of the training period (the same product the runtime returns),
``F_obs`` that of the observations of the same days, both per fine cell and
season group (:class:`~precipdiff.qdm.QDMTables` with one multiplicative
variable ``"pr"`` on the *fine* grid). It is plain quantile mapping with a
fixed ``tau = F_gen(x)``: stateless, so restarts and any split of the members
over ranks stay bit for bit; beyond the outermost quantile nodes the factor is
held constant, so relative changes of the extremes pass through unchanged.
Values corrected below the trace threshold become 0. Cells where the
observations have no data (sea cells of a land-only product) keep factor 1.

The fit lives offline (:mod:`precipdiff.offline.output_calibration`); the
bundle records it in its manifest (``output_calibration``: the tables' file,
its sha256 and whether the runtime applies it by default).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from precipdiff.bundle.manifest import OUTPUT_CALIBRATION_VARIABLE, check_output_calibration
from precipdiff.calendars import time_fields
from precipdiff.errors import BundleError, ConfigError, InputError
from precipdiff.qdm.tables import QDMTables, group_index, interp_nodes, tau_from_quantiles

__all__ = ["OUTPUT_CALIBRATION_FILE", "OutputCalibration"]

#: File name of the tables inside a bundle directory.
OUTPUT_CALIBRATION_FILE = "output_calibration.safetensors"

#: The one variable an output calibration holds (see also precipdiff.bundle.manifest).
VARIABLE = OUTPUT_CALIBRATION_VARIABLE


class OutputCalibration:
    """Quantile mapping of generated fine-grid precipitation (mm/day) onto observations.

    Parameters
    ----------
    tables
        Tables with the single multiplicative variable ``"pr"`` on the fine grid
        (``ref_q``: observations, ``hist_q``: the bundle's reanalysis-driven output).
    default
        Whether the runtime applies it when the caller does not say.

    Raises
    ------
    BundleError
        When the tables are not a precipitation calibration (other variables,
        additive kind, non-finite factors).
    """

    def __init__(self, tables: QDMTables, default: bool = True) -> None:
        if set(tables.variables) != {VARIABLE}:
            raise BundleError(
                f"an output calibration holds exactly the variable {VARIABLE!r}, got "
                f"{sorted(tables.variables)}"
            )
        t = tables.variables[VARIABLE]
        if t.kind != "multiplicative":
            raise BundleError("an output calibration of precipitation must be multiplicative")
        self.tables = tables
        self.default = bool(default)
        self.trace = float(t.trace)
        cfg = tables.config
        self.nodes = cfg.nodes
        self.groups = tables.stored_groups()
        q = self.nodes.size
        factors = t.factors().reshape(cfg.n_groups, q, -1)
        hist = t.hist_q.reshape(cfg.n_groups, q, -1).astype(np.float64)
        for g in self.groups:
            # Cells without observations (or without output) keep the identity.
            bad = ~np.isfinite(factors[g]).all(axis=0) | ~np.isfinite(hist[g]).all(axis=0)
            factors[g][:, bad] = 1.0
            hist[g][:, bad] = np.arange(q, dtype=np.float64)[:, None]
            if not (factors[g] >= 0).all():
                raise BundleError("output calibration has negative factors")
        self._factors = factors
        self._hist = hist
        self.grid_shape = tables.grid_shape

    def factors(self, group: int = 0) -> NDArray[np.float64]:
        """Return the multiplicative factors of one group, as applied.

        Parameters
        ----------
        group
            Group index (0 for ``group: none``; month - 1 for ``group: month``).

        Returns
        -------
        numpy.ndarray
            ``(n_quantiles, ny, nx)`` factors at :attr:`nodes`; 1 on cells without
            observations or output (a copy).

        Raises
        ------
        BundleError
            When ``group`` is not one the tables store.
        """
        if group not in self.groups:
            raise BundleError(
                f"output calibration has no group {group}; it stores {list(self.groups)}"
            )
        return self._factors[group].reshape(self.nodes.size, *self.grid_shape).copy()

    @property
    def needs_dates(self) -> bool:
        """Whether :meth:`apply` needs dates (tables per month or moving window)."""
        return self.tables.config.group != "none"

    @classmethod
    def from_manifest(cls, entry: Mapping[str, Any], bundle_dir: str | Path) -> OutputCalibration:
        """Load the calibration a manifest's ``output_calibration`` entry refers to.

        Parameters
        ----------
        entry
            ``Manifest.output_calibration``.
        bundle_dir
            The bundle directory.

        Returns
        -------
        OutputCalibration
            The calibration (after checking the file's sha256).
        """
        check_output_calibration(entry)
        path = Path(bundle_dir) / str(entry["file"])
        if not path.is_file():
            raise BundleError(f"bundle {bundle_dir} is missing its output calibration {path.name}")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != entry["sha256"]:
            raise BundleError(f"{path} does not match the sha256 recorded in the manifest")
        return cls(QDMTables.load(path), default=bool(entry["default"]))

    def apply(
        self, fine: NDArray[np.floating], dates: Any = None, calendar: str | None = None
    ) -> NDArray[np.float32]:
        """Map generated precipitation onto the observed distribution.

        Parameters
        ----------
        fine
            ``(time, ..., nlat_f, nlon_f)`` precipitation in mm/day (e.g.
            ``(time, member, lat, lon)``); every field of one time shares its date.
        dates
            ``time`` dates (datetime, cftime or ``datetime64``); needed when
            :attr:`needs_dates`.
        calendar
            Calendar of dates that carry none.

        Returns
        -------
        numpy.ndarray
            The calibrated field, float32, same shape.

        Raises
        ------
        InputError
            On a wrong grid, non-finite or negative values, or missing dates (named).
        """
        a = np.asarray(fine)
        if a.ndim < 3 or a.shape[-2:] != self.grid_shape:
            raise InputError(
                f"output calibration: field of shape {a.shape}, expected (time, ..., "
                f"{self.grid_shape[0]}, {self.grid_shape[1]})"
            )
        if not np.isfinite(a).all():
            raise InputError(
                f"output calibration: generated field has {int((~np.isfinite(a)).sum())} "
                "non-finite value(s)"
            )
        if (a < 0).any():
            raise InputError("output calibration: generated precipitation is negative")
        nt = a.shape[0]
        if self.needs_dates:
            if dates is None:
                raise ConfigError(
                    f"this bundle's output calibration is per {self.tables.config.group}: "
                    "pass the dates of the fields (or switch the calibration off)"
                )
            tf = time_fields(np.atleast_1d(np.asarray(dates)), calendar)
            groups = group_index(tf, self.tables.config)
            if groups.size != nt:
                raise InputError(f"output calibration: {groups.size} dates for {nt} time steps")
        else:
            groups = np.zeros(nt, dtype=np.int64)
        missing = sorted({int(g) for g in groups} - set(self.groups))
        if missing:
            raise InputError(
                f"output calibration has no table for season group(s) {missing} "
                f"(fitted groups: {self.groups})"
            )
        x = a.reshape(nt, -1, self._factors.shape[-1]).astype(np.float64)
        out = np.empty_like(x)
        for t in range(nt):
            g = int(groups[t])
            tau = tau_from_quantiles(x[t], self._hist[g], self.nodes)
            y = x[t] * interp_nodes(tau, self.nodes, self._factors[g])
            if self.trace > 0:
                y = np.where(y < self.trace, 0.0, y)
            out[t] = y
        return out.reshape(a.shape).astype(np.float32)
