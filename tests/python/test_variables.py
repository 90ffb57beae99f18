"""Tests for precipdiff.variables: specs, name resolution, unit conversion, checks."""

from __future__ import annotations

import numpy as np
import pytest

from precipdiff.errors import ConfigError, InputError
from precipdiff.variables import (
    VariableSpec,
    check_finite,
    check_range,
    convert_units,
    get_variable,
    normalise_units,
    resolve_variable,
    to_canonical,
)


@pytest.mark.parametrize(
    ("name", "canonical", "level"),
    [
        ("q", "hus", None),
        ("hus850", "hus850", 850.0),
        ("q850", "hus850", 850.0),
        ("u", "ua", None),
        ("ua500", "ua500", 500.0),
        ("v", "va", None),
        ("u10", "uas", None),
        ("vas", "vas", None),
        ("msl", "psl", None),
        ("t", "ta", None),
        ("ta850", "ta850", 850.0),
        ("t2m", "tas", None),
        ("tp", "pr", None),
        ("rr", "pr", None),
    ],
)
def test_known_names(name: str, canonical: str, level: float | None) -> None:
    spec = get_variable(name)
    assert spec.name == canonical
    assert spec.level_hpa == level


def test_unknown_variable_lists_known() -> None:
    with pytest.raises(ConfigError, match=r"unknown variable 'snow'.*psl"):
        get_variable("snow")


def test_resolve_era5_cmip6_demo() -> None:
    hus = get_variable("hus850")
    assert resolve_variable(["q", "u", "v"], hus) == "q"
    assert resolve_variable(["hus"], hus) == "hus"
    assert resolve_variable(["hus850", "psl"], hus) == "hus850"  # level-specific first
    assert (
        resolve_variable(
            {"precip_x": {"standard_name": "lwe_precipitation_rate"}}, get_variable("pr")
        )
        == "precip_x"
    )
    with pytest.raises(InputError, match=r"psl .*not found.*the data contain \['t2m', 'tp'\]"):
        resolve_variable(["tp", "t2m"], get_variable("psl"))


def test_spec_validation_and_dict() -> None:
    spec = get_variable("ta850")
    assert VariableSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ConfigError, match="unknown variable keys"):
        VariableSpec.from_dict({**spec.to_dict(), "scale": 2})
    with pytest.raises(ConfigError, match="canonical units 'hPa'"):
        VariableSpec("p", "air_pressure", "hPa")
    with pytest.raises(ConfigError, match="level_hpa"):
        VariableSpec("x", "y", "K", level_hpa=5000)


def test_unit_spellings() -> None:
    assert normalise_units("kg kg**-1") == "kg kg-1"
    assert normalise_units("m s**-1") == "m s-1"
    assert normalise_units("millibars") == "hPa"
    assert normalise_units("mm/day") == normalise_units("mm day-1") == normalise_units("mm d-1")


def test_conversions() -> None:
    np.testing.assert_allclose(convert_units([1013.25], "hPa", "Pa"), [101325.0])
    np.testing.assert_allclose(convert_units([5.0], "g/kg", "kg kg-1"), [0.005])
    np.testing.assert_allclose(convert_units([0.0], "degC", "K"), [273.15])
    np.testing.assert_allclose(convert_units([1 / 86400], "kg m-2 s-1", "mm/day"), [1.0])
    # ERA5 hourly tp: 1 mm in an hour = 24 mm/day
    np.testing.assert_allclose(convert_units([0.001], "m", "mm/day", accumulation_hours=1), [24.0])
    x32 = np.ones(3, np.float32)
    assert convert_units(x32, "hPa", "Pa").dtype == np.float32
    with pytest.raises(InputError, match="accumulation period"):
        convert_units([0.001], "m", "mm/day", name="tp")
    with pytest.raises(InputError, match="cannot convert units 'furlong'"):
        to_canonical(get_variable("psl"), [1.0], "furlong")


def test_check_finite_names_count_and_locations() -> None:
    x = np.ones((3, 4, 5), np.float32)
    x[1, 2, 3] = np.nan
    x[2, 0, 0] = np.inf
    check_finite("ok", np.ones(3))
    with pytest.raises(
        InputError, match=r"hus850: 2 non-finite.*1 NaN, 1 Inf.*\(time\[1\], lat\[2\], lon\[3\]\)"
    ):
        check_finite("hus850", x)
    coords = {
        "time": ["2000-01-01", "d2", "d3"],
        "lat": np.arange(4) * 10.0,
        "lon": np.arange(5) + 0.5,
    }
    with pytest.raises(InputError, match=r"time=d2, lat=20, lon=3.5"):
        check_finite("psl", x, coords=coords)


def test_check_range_detects_unit_mixups() -> None:
    psl = get_variable("psl")
    check_range(psl, np.full(10, 101000.0))
    with pytest.raises(InputError, match=r"psl: 10 of 10 .*look like hPa"):
        check_range(psl, np.full(10, 1010.0))
    with pytest.raises(InputError, match="look like g kg-1"):
        check_range(get_variable("hus850"), np.linspace(1, 12, 20))
    with pytest.raises(InputError, match="look like degC"):
        check_range(get_variable("tas"), np.linspace(-10, 30, 20))
    with pytest.raises(InputError, match="look like kg m-2 s-1"):
        check_range(get_variable("pr"), np.linspace(0, 3e-4, 2000))
    check_range(get_variable("pr"), np.r_[np.zeros(1999), 12.0])
    check_range(get_variable("pr"), np.array([np.nan, -1e-6, 3.0]))  # NaN ignored, tiny negative ok
    with pytest.raises(InputError, match="outside the plausible range"):
        check_range(get_variable("pr"), np.array([5000.0]))


def test_ambiguous_standard_name_not_used() -> None:
    # 2 m temperature must never be taken for 850 hPa temperature (both air_temperature).
    with pytest.raises(InputError, match="not found"):
        resolve_variable({"t_2m": {"standard_name": "air_temperature"}}, get_variable("ta850"))
    with pytest.raises(InputError, match="not found"):
        resolve_variable({"wind": {"standard_name": "eastward_wind"}}, get_variable("uas"))
    spec = get_variable("psl")
    assert (
        resolve_variable({"pmsl": {"standard_name": "air_pressure_at_mean_sea_level"}}, spec)
        == "pmsl"
    )
