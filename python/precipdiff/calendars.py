"""ESM calendars: month, day of year and fraction of the year for any CF calendar.

Reanalyses use the (proleptic) Gregorian calendar; ESMs often use ``noleap``
(365 days), ``all_leap`` (366) or ``360_day`` (twelve 30-day months). Seasonal
grouping in :mod:`precipdiff.qdm` works in every calendar through two numbers per
time step:

* the calendar **month** (1--12), which exists in every CF calendar, and
* the **fraction of the year** ``(dayofyear - 1 + fraction of day) / year length``
  in [0, 1), so that a moving window of "31 days" means the same part of the
  season whether the year has 360, 365 or 366 days.

Times may be numpy ``datetime64`` values (Gregorian), Python ``datetime`` or
``cftime`` datetimes (which carry their calendar). :func:`model_time_to_date`
turns the embedded server's "seconds since the run's reference" into a date in
the ESM's calendar.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from precipdiff.errors import ConfigError, InputError

__all__ = [
    "CALENDARS",
    "TimeFields",
    "model_time_to_date",
    "normalise_calendar",
    "time_fields",
    "year_length",
]

#: CF calendar names accepted (aliases map to the canonical name).
CALENDARS: dict[str, str] = {
    "standard": "standard",
    "gregorian": "standard",
    "proleptic_gregorian": "proleptic_gregorian",
    "julian": "julian",
    "noleap": "noleap",
    "365_day": "noleap",
    "all_leap": "all_leap",
    "366_day": "all_leap",
    "360_day": "360_day",
}


def normalise_calendar(calendar: str) -> str:
    """Return the canonical CF name of ``calendar``.

    Parameters
    ----------
    calendar
        A CF calendar name (case-insensitive), e.g. ``"365_day"``.

    Returns
    -------
    str
        ``standard``, ``proleptic_gregorian``, ``julian``, ``noleap``,
        ``all_leap`` or ``360_day``.

    Raises
    ------
    ConfigError
        For an unknown calendar (named in the message).
    """
    key = str(calendar).strip().lower()
    if key not in CALENDARS:
        raise ConfigError(f"unknown calendar {calendar!r}; expected one of {sorted(CALENDARS)}")
    return CALENDARS[key]


def _is_leap(year: int, calendar: str) -> bool:
    if calendar == "julian":
        return year % 4 == 0
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def year_length(year: int, calendar: str) -> int:
    """Return the number of days of ``year`` in ``calendar``.

    Parameters
    ----------
    year
        The year.
    calendar
        A CF calendar name.

    Returns
    -------
    int
        360, 365 or 366.
    """
    cal = normalise_calendar(calendar)
    if cal == "360_day":
        return 360
    if cal == "noleap":
        return 365
    if cal == "all_leap":
        return 366
    return 366 if _is_leap(year, cal) else 365


@dataclass(frozen=True)
class TimeFields:
    """Calendar fields of a series of times.

    Parameters
    ----------
    year, month, dayofyear
        Integer arrays (``dayofyear`` starts at 1).
    year_fraction
        ``(dayofyear - 1 + fraction of the day) / year length``, in [0, 1).
    calendar
        The canonical calendar name.
    """

    year: NDArray[np.int64]
    month: NDArray[np.int64]
    dayofyear: NDArray[np.int64]
    year_fraction: NDArray[np.float64]
    calendar: str


def time_fields(times: Any, calendar: str | None = None) -> TimeFields:
    """Month, day of year and year fraction of ``times`` in their calendar.

    Parameters
    ----------
    times
        A ``datetime64`` array, an xarray/pandas time index, or an iterable of
        ``datetime``/``cftime`` objects (one calendar for all).
    calendar
        Calendar of the times; taken from cftime objects when ``None``, else
        ``proleptic_gregorian``. Giving a calendar that contradicts the cftime
        objects' own raises.

    Returns
    -------
    TimeFields
        The calendar fields.

    Raises
    ------
    InputError
        For empty or unparseable times, or mixed calendars.
    """
    values = getattr(times, "values", times)
    arr = np.asarray(values)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.size == 0:
        raise InputError("time axis is empty")
    if np.issubdtype(arr.dtype, np.datetime64):
        cal = normalise_calendar(calendar or "proleptic_gregorian")
        if cal in ("noleap", "all_leap", "360_day"):
            raise InputError(
                f"numpy datetime64 times are Gregorian but calendar {calendar!r} was given; "
                "decode the file with cftime (xarray: use_cftime=True)"
            )
        d = arr.astype("datetime64[s]")
        years = d.astype("datetime64[Y]").astype(np.int64) + 1970
        months = d.astype("datetime64[M]").astype(np.int64) % 12 + 1
        start = d.astype("datetime64[Y]")
        secs = (d - start).astype(np.int64)
        doy = secs // 86400 + 1
        ylen = np.array([year_length(int(y), cal) for y in years], dtype=np.float64)
        frac = secs / 86400.0 / ylen
        return TimeFields(years, months, doy.astype(np.int64), frac, cal)
    return _fields_from_objects(arr.ravel().tolist(), calendar)


def _fields_from_objects(objs: Iterable[Any], calendar: str | None) -> TimeFields:
    years, months, doys, fracs = [], [], [], []
    cal: str | None = normalise_calendar(calendar) if calendar else None
    for t in objs:
        own = getattr(t, "calendar", None)
        if own:
            own_c = normalise_calendar(own)
            if cal is None:
                cal = own_c
            elif own_c != cal and {own_c, cal} != {"standard", "proleptic_gregorian"}:
                raise InputError(f"time {t} is in calendar {own!r}, expected {cal!r}")
        if not hasattr(t, "month") or not hasattr(t, "year"):
            raise InputError(f"cannot read a date from time value {t!r} ({type(t).__name__})")
        c = cal or "proleptic_gregorian"
        doy = int(t.dayofyr) if hasattr(t, "dayofyr") else int(t.timetuple().tm_yday)
        day_frac = (getattr(t, "hour", 0) * 3600 + getattr(t, "minute", 0) * 60) / 86400.0
        years.append(int(t.year))
        months.append(int(t.month))
        doys.append(doy)
        fracs.append((doy - 1 + day_frac) / year_length(int(t.year), c))
    return TimeFields(
        np.asarray(years, dtype=np.int64),
        np.asarray(months, dtype=np.int64),
        np.asarray(doys, dtype=np.int64),
        np.asarray(fracs, dtype=np.float64),
        cal or "proleptic_gregorian",
    )


def model_time_to_date(seconds: float, reference: str, calendar: str) -> Any:
    """Convert "seconds since the run's reference date" to a date in ``calendar``.

    Parameters
    ----------
    seconds
        Model time in seconds since ``reference``.
    reference
        Reference date ``"YYYY-MM-DD"`` or ``"YYYY-MM-DD hh:mm:ss"``.
    calendar
        The ESM's CF calendar.

    Returns
    -------
    cftime.datetime
        The date, carrying its calendar.

    Raises
    ------
    ConfigError
        For an unknown calendar or an unparseable reference date.
    """
    import cftime

    cal = normalise_calendar(calendar)
    try:
        return cftime.num2date(float(seconds), f"seconds since {reference}", calendar=cal)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"cannot interpret reference date {reference!r}: {exc}") from exc
