"""Log-pressure interpolation of model-level fields, including below ground."""

from __future__ import annotations

import numpy as np
import pytest

from precipdiff.errors import InputError
from precipdiff.server.vertical import interp_log_pressure


def columns(psurf: np.ndarray, nlev: int = 12) -> np.ndarray:
    """Hybrid-like layer pressures (top -> surface), shape (nlev, *psurf.shape)."""
    sig = np.linspace(0.05, 0.98, nlev)
    return sig[:, None, None] * psurf[None]


def test_exact_for_fields_linear_in_log_pressure() -> None:
    rng = np.random.default_rng(0)
    psurf = rng.uniform(95000.0, 103000.0, size=(3, 4))
    p = columns(psurf)
    a, b = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    v = a + b * np.log(p)
    targets = np.array([85000.0, 50000.0, 20000.0])
    out = interp_log_pressure("t", v, p, targets)
    expect = a[None] + b[None] * np.log(targets)[:, None, None]
    np.testing.assert_allclose(out, expect, rtol=0, atol=1e-12)
    # Bottom-up storage gives the same answer; float32 input is accepted.
    out2 = interp_log_pressure("t", v[::-1].astype(np.float32), p[::-1], targets)
    np.testing.assert_allclose(out2, expect, atol=1e-5)


def test_interpolates_between_levels_in_log_p_not_p() -> None:
    p = np.array([50000.0, 100000.0])[:, None, None] * np.ones((2, 1, 1))
    v = np.array([0.0, 1.0])[:, None, None] * np.ones((2, 1, 1))
    out = interp_log_pressure("x", v, p, np.array([70710.678]))
    # ln(70710.678) is halfway between ln(5e4) and ln(1e5).
    assert out[0, 0, 0] == pytest.approx(0.5, abs=1e-6)


def test_below_ground_policies() -> None:
    # Two columns: sea level (1013 hPa) and a plateau (600 hPa surface).
    psurf = np.array([[101300.0, 60000.0]])
    p = columns(psurf)
    v = 2.0 + 0.5 * np.log(p)
    target = np.array([85000.0])
    const = interp_log_pressure("q", v, p, target, "constant")
    assert const[0, 0, 0] == pytest.approx(2.0 + 0.5 * np.log(85000.0))
    assert const[0, 0, 1] == pytest.approx(v[-1, 0, 1])  # lowest model level value
    extrap = interp_log_pressure("q", v, p, target, "extrapolate")
    assert extrap[0, 0, 1] == pytest.approx(2.0 + 0.5 * np.log(85000.0))
    with pytest.raises(InputError, match=r"'q'.*850 hPa.*1 columns"):
        interp_log_pressure("q", v, p, target, "error")


def test_above_model_top_uses_top_level() -> None:
    p = columns(np.full((1, 1), 100000.0))
    v = np.log(p)
    out = interp_log_pressure("u", v, p, np.array([100.0]))
    assert out[0, 0, 0] == pytest.approx(v[0, 0, 0])


def test_bad_inputs_are_named() -> None:
    p = columns(np.full((2, 2), 1e5))
    v = np.zeros_like(p)
    with pytest.raises(InputError, match="pressure shape"):
        interp_log_pressure("hus", v, p[:, :1], np.array([85000.0]))
    # Levels 9 and 10 bracket 850 hPa (sigma 0.81 and 0.90).
    bad = p.copy()
    bad[9, 1, 1], bad[10, 1, 1] = 86000.0, 84000.0  # out of order around the target
    with pytest.raises(InputError, match=r"monotonic.*around 850 hPa in 1 columns"):
        interp_log_pressure("hus", v, bad, np.array([85000.0]))
    neg = p.copy()
    neg[9, 0, 0] = -1.0
    with pytest.raises(InputError, match="positive"):
        interp_log_pressure("hus", v, neg, np.array([85000.0]))
    nan = p.copy()
    nan[10, 0, 1] = np.nan
    with pytest.raises(InputError, match="in 1 columns"):
        interp_log_pressure("hus", v, nan, np.array([85000.0]))
    with pytest.raises(InputError, match="below_ground policy"):
        interp_log_pressure("hus", v, p, np.array([85000.0]), "zero")  # type: ignore[arg-type]
