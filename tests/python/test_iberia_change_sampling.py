"""scripts/iberia_change_sampling.py picks days as the Iberia report does (unit tier)."""

from __future__ import annotations

import numpy as np
import pytest
from script_helpers import load_script

from precipdiff.offline.evaluate import iberia


@pytest.mark.parametrize(("n", "m"), [(1354, 600), (1804, 600), (271, 600), (10, 3), (7, 7)])
def test_the_subsample_is_the_reports(n: int, m: int) -> None:
    script = load_script("scripts/iberia_change_sampling.py")
    np.testing.assert_array_equal(script.evenly_spaced(n, m), iberia._subsample(n, m))


def test_relative_change() -> None:
    script = load_script("scripts/iberia_change_sampling.py")
    assert script.relative_change(np.full(4, 2.0), np.full(3, 1.8)) == pytest.approx(-0.1)
