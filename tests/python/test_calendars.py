"""Tests of precipdiff.calendars (ESM calendars)."""

from __future__ import annotations

import numpy as np
import pytest

from precipdiff.calendars import model_time_to_date, normalise_calendar, time_fields, year_length
from precipdiff.errors import ConfigError, InputError

cftime = pytest.importorskip("cftime")


def test_year_lengths() -> None:
    assert year_length(2000, "gregorian") == 366
    assert year_length(1900, "proleptic_gregorian") == 365
    assert year_length(1900, "julian") == 366
    assert year_length(2000, "365_day") == 365
    assert year_length(2001, "all_leap") == 366
    assert year_length(2000, "360_day") == 360
    with pytest.raises(ConfigError, match="unknown calendar 'lunar'"):
        normalise_calendar("lunar")


def test_datetime64_fields() -> None:
    tf = time_fields(np.array(["2000-03-01T12", "2001-12-31"], dtype="datetime64[ns]"))
    np.testing.assert_array_equal(tf.month, [3, 12])
    np.testing.assert_array_equal(tf.dayofyear, [61, 365])
    assert tf.year_fraction[0] == pytest.approx(60.5 / 366)
    with pytest.raises(InputError, match="cftime"):
        time_fields(np.array(["2000-01-01"], dtype="datetime64[D]"), "noleap")


def test_cftime_fields_360_day_and_noleap() -> None:
    t = cftime.num2date(np.arange(360), "days since 2000-01-01", calendar="360_day")
    tf = time_fields(t)
    assert tf.calendar == "360_day"
    assert np.bincount(tf.month)[1:].tolist() == [30] * 12
    assert tf.year_fraction.max() < 1.0
    t2 = cftime.num2date(np.arange(365), "days since 2001-01-01", calendar="noleap")
    tf2 = time_fields(t2)
    assert tf2.dayofyear[-1] == 365 and tf2.month[59] == 3  # no Feb 29
    with pytest.raises(InputError, match="calendar"):
        time_fields(list(t[:2]) + list(t2[:2]))
    with pytest.raises(InputError, match="empty"):
        time_fields(np.array([], dtype="datetime64[D]"))


def test_model_time_to_date() -> None:
    d = model_time_to_date(86400 * 365, "2000-01-01", "noleap")
    assert (d.year, d.month, d.day) == (2001, 1, 1)
    d2 = model_time_to_date(86400 * 30, "2000-02-01", "360_day")
    assert (d2.month, d2.day) == (3, 1)
    with pytest.raises(ConfigError, match="reference date"):
        model_time_to_date(0.0, "yesterday", "noleap")
