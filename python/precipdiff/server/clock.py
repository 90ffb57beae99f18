"""The window clock: which averaging window a model step belongs to, and when it closes.

``model_time_s`` is the model time at the END of the step just computed (seconds
since the run's reference) and ``dt_s`` the step length: a step covers
``(model_time_s - dt_s, model_time_s]``; window ``n`` covers
``(n * window_s, (n + 1) * window_s]`` and closes at the step whose
``model_time_s`` is ``(n + 1) * window_s``. Consecutive steps must continue in
time (``model_time_s`` equal to the previous one plus ``dt_s``).

Advancing is two steps so that a failure later in the step leaves the clock
where it was: :meth:`WindowClock.check` validates a step and returns what it
would do (a :data:`Tick`) without changing anything; :meth:`WindowClock.commit`
applies it.
"""

from __future__ import annotations

import math

from precipdiff.errors import InputError

__all__ = ["Tick", "WindowClock"]

_TIME_TOL = 1e-6


#: One validated step: ``(window, closes, model_time_s)`` -- the window the step belongs
#: to, whether it ends it, and the model time at its end. A plain tuple: it is built on
#: every ESM timestep, and a named tuple or dataclass would double the cost of a step.
Tick = tuple[int, bool, float]


class WindowClock:
    """Position of a run in model time and in its averaging windows.

    Parameters
    ----------
    window_s : float
        Length of an averaging window in seconds.
    """

    def __init__(self, window_s: float) -> None:
        self.window_s = float(window_s)
        #: Index of the open window (None before the first step).
        self.window: int | None = None
        #: Model time at the end of the previous step (None before the first step).
        self.last_time: float | None = None
        #: Steps taken in the open window.
        self.steps_in_window = 0

    def check(self, model_time_s: float, dt_s: float) -> Tick:
        """Validate one step and return what it does; the clock is not changed.

        Parameters
        ----------
        model_time_s : float
            Model time at the END of the step, seconds since the run's reference.
        dt_s : float
            Step length in seconds; must divide the window.

        Returns
        -------
        Tick
            ``(window, closes, model_time_s)``: the window of the step, whether it
            closes it, the model time at its end.

        Raises
        ------
        InputError
            Non-finite or non-positive times, a step that does not divide the
            window, time that skips or goes backwards, a step straddling a window
            boundary.
        """
        t_end = float(model_time_s)
        dt = float(dt_s)
        w = self.window_s
        if not (math.isfinite(dt) and dt > 0.0):
            raise InputError(f"dt_s = {dt_s} must be a positive number of seconds")
        tol = _TIME_TOL * max(1.0, dt)
        if not (math.isfinite(t_end) and t_end >= dt - tol):
            raise InputError(
                f"model_time_s = {model_time_s} is the time at the END of the step (seconds "
                f"since the run's reference) and must be >= dt_s = {dt:g}"
            )
        ratio = w / dt
        if abs(ratio - round(ratio)) > 1e-9 * max(1.0, ratio):
            raise InputError(
                f"timestep dt_s = {dt:g} s does not divide the averaging window window_s = {w:g} s"
            )
        t = t_end - dt  # start of the step
        if self.last_time is not None and abs(t - self.last_time) > tol:
            expected = self.last_time + dt
            verb = "went backwards" if t < self.last_time else "skipped ahead"
            raise InputError(
                f"model time {verb}: expected model_time_s = {expected:.6f} s (previous "
                f"model_time_s + dt_s), got {t_end:.6f} s"
            )
        n = math.floor(t / w + 1e-9)
        end = t_end / w
        closes = abs(end - round(end)) <= 1e-9 * max(1.0, end)
        if not closes and math.floor(end - 1e-9) != n:
            raise InputError(
                f"step from {t:g} s to {t_end:g} s straddles the window boundary at "
                f"{(n + 1) * w:g} s; model times must be multiples of dt_s = {dt:g} s"
            )
        return (n if self.window is None else self.window, closes, t_end)

    def commit(self, tick: Tick) -> None:
        """Apply a step returned by :meth:`check` (a closing step opens the next window).

        Parameters
        ----------
        tick : Tick
            The validated step ``(window, closes, model_time_s)``.
        """
        window, closes, self.last_time = tick
        if closes:
            self.window = window + 1
            self.steps_in_window = 0
        else:
            self.window = window
            self.steps_in_window += 1
