"""The sigma_c selection rule of scripts/iberia_selection.py (unit tier).

The rule was fixed before the sweep ran (docs/results/iberia/selection.md); this
checks that the code does what the text says: exclusion by the change signal, a
1 % CRPS tie window, and the tie-break by distance to the E-OBS targets.
"""

from __future__ import annotations

from types import ModuleType

import pytest
from script_helpers import load_script


@pytest.fixture(scope="module")
def selection() -> ModuleType:
    return load_script("scripts/iberia_selection.py")


def _row(crps: float, change: float, ratio: float = 1.0) -> dict[str, float]:
    return {
        "crps": crps,
        "change_mean_calibrated": change,
        "spread_skill": ratio,
        "p99_ratio": ratio,
        "wet_ratio": 1.0,
        "band_ratio": 1.0,
    }


def test_lowest_crps_wins_outside_the_tie_window(selection: ModuleType) -> None:
    rows = [("a", _row(0.90, -0.10)), ("b", _row(0.85, -0.10, ratio=0.5))]
    assert selection.sigma_c_choice(rows, -0.10) == "b"


def test_ties_go_to_the_closest_to_the_targets(selection: ModuleType) -> None:
    rows = [("a", _row(0.850, -0.10, ratio=0.8)), ("b", _row(0.855, -0.10, ratio=0.95))]
    assert selection.sigma_c_choice(rows, -0.10) == "b"  # 0.6 % worse CRPS: a tie


def test_a_broken_change_signal_is_excluded(selection: ModuleType) -> None:
    rows = [("a", _row(0.80, -0.20)), ("b", _row(0.85, -0.11))]
    assert selection.sigma_c_choice(rows, -0.10) == "b"  # a dries 2x the ESM
    with pytest.raises(ValueError, match="30 %"):
        selection.sigma_c_choice(rows[:1], -0.10)


def test_the_sweep_names_known_variants(selection: ModuleType) -> None:
    assert set(selection.SIGMA_C_SWEEP) <= set(selection.VARIANTS)
    assert selection.CALIBRATION_BASE in selection.VARIANTS
