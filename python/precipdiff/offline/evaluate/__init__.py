"""Evaluation: metric sets, figures and reports (``precipdiff evaluate``).

* :mod:`precipdiff.offline.evaluate.report` -- scores of ensembles against observations,
  netCDF output and the Markdown report;
* :mod:`precipdiff.offline.evaluate.plots` -- the figures;
* :mod:`precipdiff.offline.evaluate.iberia` -- the paper's experiment on the Iberia data;
* :mod:`precipdiff.offline.evaluate.qdm_check` -- QDM validation on the ISIMIP3BASD
  example (a real biased GCM against observations).
"""

from __future__ import annotations
