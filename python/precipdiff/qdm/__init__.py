"""Quantile delta mapping (Cannon et al. 2015) of ESM inputs onto the reanalysis.

The generator is trained on reanalysis predictors only. To drive it with an ESM,
each predictor is mapped, per grid cell and season group, so that its
historical distribution matches the reanalysis while the ESM's own change of
every quantile is kept (trend preservation). For a value ``x`` of a projection
period whose non-exceedance probability in the projection period is ``tau``::

    additive:        x' = x + (F_ref^-1(tau) - F_hist^-1(tau))
    multiplicative:  x' = x * (F_ref^-1(tau) / F_hist^-1(tau))

``F_ref`` is the reference (reanalysis) CDF and ``F_hist`` the ESM's CDF over the
same historical period, both on the bundle's coarse grid (regrid the ESM and the
reanalysis onto it first: :class:`precipdiff.grids.Regridder`). The correction
``F_ref^-1 / F_hist^-1`` (or the difference) is tabulated at ``n_quantiles``
equally spaced probabilities ``(i + 0.5) / n`` and interpolated linearly in
``tau`` (constant beyond the outer nodes), as xsdba's ``QuantileDeltaMapping``
does with ``interp="linear"``.

Multiplicative variables (humidity, precipitation) may have a trace threshold:
values below it are replaced by uniform random values in ``(0, trace)`` before
fitting and ranking (a seeded generator), and corrected values below it are set
to 0 (Cannon et al. 2015, Sect. 3).

Where ``tau`` comes from
------------------------
* **Offline** (:func:`precipdiff.offline.qdm_fit.apply_qdm`, ``projection="self"``):
  the empirical CDF of the series being corrected, per cell and group -- exactly Cannon's QDM (the
  series is the projection period).
* **Offline static** (``projection="static"``): ``tau = F_hist(x)``, i.e. plain
  quantile mapping; it does not preserve trends.
* **Online** (:class:`OnlineQDM`): the ESM's future is not known when a window
  is corrected. The projection CDF is a trailing estimate from the run's own
  window means: it starts as the ESM-historical CDF stored at fit time (so the
  first years equal static quantile mapping, which is exact when the run's
  climate equals its historical one) and every group's quantile function is
  relaxed towards the quantile function of each newly completed group period
  (a month for ``group="month"``) with weight ``n / (trailing_years * n_year)``
  (``n`` samples in that period, ``n_year`` expected per group and year): an
  exponential moving average of quantile functions whose memory is
  ``trailing_years``. See ``docs/qdm.md`` for the reasoning. The state is a
  few arrays (``state_dict()``) that the server's restart files store.

Modules
-------
Runtime (imported by the ESM process): :mod:`precipdiff.qdm.tables` (settings,
tables, file format, lookup) and :mod:`precipdiff.qdm.online` (:class:`OnlineQDM`).
Offline: :mod:`precipdiff.offline.qdm_fit` (:func:`~precipdiff.offline.qdm_fit.fit_qdm`,
:func:`~precipdiff.offline.qdm_fit.apply_qdm`).
"""

from __future__ import annotations

from precipdiff.qdm.online import OnlineQDM
from precipdiff.qdm.tables import (
    QDM_FILE,
    QDMConfig,
    QDMTables,
    VariableTable,
    default_kind,
    group_index,
)

__all__ = [
    "QDM_FILE",
    "OnlineQDM",
    "QDMConfig",
    "QDMTables",
    "VariableTable",
    "default_kind",
    "group_index",
]
