"""Network input features: parsing, relative humidity, validation against variables."""

from __future__ import annotations

import numpy as np
import pytest

from precipdiff.errors import BundleError, ConfigError, InputError
from precipdiff.features import (
    FeatureSpec,
    check_features_against,
    compute_features,
    identity_features,
    parse_features,
    redefined_features,
    relative_humidity,
    required_variables,
)


def test_parse_shorthand_and_mappings():
    feats = parse_features(["rh850", "psl", {"name": "t", "inputs": ["ta850"]}])
    assert [f.name for f in feats] == ["rh850", "psl", "t"]
    rh = feats[0]
    assert rh.op == "relative_humidity" and rh.inputs == ("hus850", "ta850")
    assert rh.pressure_pa == pytest.approx(85000.0)
    assert required_variables(feats) == ["hus850", "ta850", "psl"]
    assert FeatureSpec.from_dict(rh.to_dict()) == rh
    assert identity_features(["a", "b"]) == parse_features(["a", "b"])


def test_parse_rejects_bad_entries():
    with pytest.raises(ConfigError, match="duplicate"):
        parse_features(["psl", "psl"])
    with pytest.raises(ConfigError, match="op"):
        parse_features([{"name": "x", "op": "vorticity", "inputs": ["u"]}])
    with pytest.raises(ConfigError, match="takes 2 input"):
        parse_features([{"name": "x", "op": "relative_humidity", "inputs": ["q"]}])
    with pytest.raises(ConfigError, match="pressure_pa"):
        parse_features([{"name": "x", "op": "relative_humidity", "inputs": ["q", "t"]}])
    with pytest.raises(ConfigError, match="unknown key"):
        parse_features([{"name": "x", "inputs": ["q"], "level": 3}])
    with pytest.raises(ConfigError, match="mapping"):
        parse_features([3])


def test_relative_humidity_known_values():
    # Saturated air: q_s from e_s(T) at p must give RH = 1 exactly (the inverse formula).
    t = np.array([263.15, 273.15, 283.15, 293.15])
    p = 85000.0
    es = 611.2 * np.exp(17.67 * (t - 273.15) / (t - 29.65))
    qs = 0.622 * es / (p - 0.378 * es)
    np.testing.assert_allclose(relative_humidity(qs, t, p), 1.0, rtol=1e-6)
    # half the saturation humidity is slightly more than half RH (the 0.378 q term)
    np.testing.assert_allclose(relative_humidity(0.5 * qs, t, p), 0.5, rtol=6e-3)
    # 10 degC, 850 hPa: e_s = 1227.2 Pa (Bolton), e = 681.2 Pa for 5 g/kg: RH 0.5551
    assert float(relative_humidity(np.array(0.005), np.array(283.15), p)) == pytest.approx(
        0.5551, abs=1e-4
    )


def test_compute_features_stacks_channels_in_order():
    q = np.full((3, 2, 4), 0.004, np.float32)
    t = np.full((3, 2, 4), 280.0, np.float32)
    psl = np.full((3, 2, 4), 101000.0, np.float32)
    x = compute_features(parse_features(["psl", "rh850"]), {"hus850": q, "ta850": t, "psl": psl})
    assert x.shape == (3, 2, 2, 4) and x.dtype == np.float32
    np.testing.assert_array_equal(x[:, 0], psl)
    np.testing.assert_allclose(x[:, 1], relative_humidity(q, t, 85000.0))
    with pytest.raises(InputError, match="needs variable"):
        compute_features(parse_features(["rh850"]), {"hus850": q})


def test_features_checked_against_bundle_variables():
    check_features_against(parse_features(["rh850", "psl"]), ["hus850", "ta850", "psl"])
    with pytest.raises(BundleError, match="ta850"):
        check_features_against(parse_features(["rh850"]), ["hus850", "psl"])


def test_redefined_features_names_clashes_only() -> None:
    reg = parse_features(["rh850", "psl"])
    assert redefined_features(reg, parse_features(["rh850", "psl", "hus850"])) == []
    other = parse_features([{"name": "rh850", "op": "identity", "inputs": ["hus850"]}, "psl"])
    assert redefined_features(reg, other) == ["rh850"]
