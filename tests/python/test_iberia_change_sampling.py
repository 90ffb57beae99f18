"""scripts/iberia_change_sampling.py (unit tier)."""

from __future__ import annotations

import numpy as np
import pytest
from script_helpers import load_script


def test_relative_change() -> None:
    script = load_script("scripts/iberia_change_sampling.py")
    assert script.relative_change(np.full(4, 2.0), np.full(3, 1.8)) == pytest.approx(-0.1)
