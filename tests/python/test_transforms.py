import numpy as np
import pytest
import torch

from precipdiff.errors import ConfigError
from precipdiff.transforms import PrecipTransform


def test_roundtrip_numpy_and_torch():
    t = PrecipTransform("log1p", eps=0.1)
    p = np.array([0.0, 0.01, 0.5, 3.0, 80.0, 400.0], np.float32)
    z = t.forward(p)
    assert z.dtype == np.float32
    np.testing.assert_allclose(z, np.log1p(p / 0.1), rtol=1e-6)
    np.testing.assert_allclose(t.inverse(z), p, rtol=1e-5, atol=1e-7)
    zt = t.forward(torch.from_numpy(p))
    np.testing.assert_allclose(t.inverse(zt).numpy(), p, rtol=1e-5, atol=1e-7)


def test_inverse_never_negative_and_bounded():
    t = PrecipTransform()
    z = np.array([-50.0, -1.0, 0.0, 1e3, np.inf], np.float32)
    p = t.inverse(z)
    assert np.all(p >= 0)
    assert np.all(np.isfinite(p))
    assert p.max() == pytest.approx(t.max_rate)
    pt = t.inverse(torch.tensor([-3.0, 200.0]))
    assert float(pt.min()) >= 0 and float(pt.max()) <= t.max_rate


def test_negative_input_clamped():
    t = PrecipTransform()
    assert float(t.forward(np.float32(-1e-6))) == 0.0


def test_identity_kind():
    t = PrecipTransform("identity")
    np.testing.assert_array_equal(t.inverse(np.array([-1.0, 2.0])), [0.0, 2.0])


def test_dict_roundtrip_and_validation():
    t = PrecipTransform("log1p", eps=0.5)
    assert PrecipTransform.from_dict(t.to_dict()) == t
    with pytest.raises(ConfigError, match="unknown key"):
        PrecipTransform.from_dict({"kind": "log1p", "eps": 1.0, "bogus": 1})
    with pytest.raises(ConfigError, match="eps"):
        PrecipTransform(eps=0.0)
    with pytest.raises(ConfigError, match="kind"):
        PrecipTransform(kind="sqrt")
