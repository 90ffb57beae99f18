"""Evaluation: metric sets, figures and reports (``precipdiff evaluate``).

* :mod:`precipdiff.evaluate.report` -- scores of ensembles against observations,
  netCDF output and the Markdown report;
* :mod:`precipdiff.evaluate.plots` -- the figures;
* :mod:`precipdiff.evaluate.iberia` -- the paper's experiment on the Iberia data;
* :mod:`precipdiff.evaluate.qdm_check` -- QDM validation on the ISIMIP3BASD
  example (a real biased GCM against observations).
"""

from __future__ import annotations
