"""Long-run soak of the toy ESM coupled to the plugin (bench/bench_coupled_scale.py).

CI: 30 simulated days on a reduced 10-degree grid with a tiny bundle (seconds).
``-m soak``: 365 days on the toy's 4-degree grid. Both check: no NaN, precipitation
within physical bounds, daily water budget closed, non-negative column water,
resident memory growth after the first day that the plugin adds (coupled minus the
toy ESM run uncoupled) below 2 %, and the water-budget plot.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import ModuleType

import pytest
from script_helpers import load_script

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.needs_build


def _bench() -> ModuleType:
    return load_script("bench/bench_coupled_scale.py")


def _toy(build_dir: Path) -> Path:
    exe = build_dir / "bin" / "toy_esm"
    if not exe.is_file():
        pytest.skip(f"{exe} not built")
    return exe


def _check(res: object, days: int) -> None:
    assert res.failures == [], "\n".join(res.failures)  # type: ignore[attr-defined]
    assert res.days == days  # type: ignore[attr-defined]
    assert 0 < res.pr_max <= _bench().PR_MAX  # type: ignore[attr-defined]
    assert res.plugin_rss_growth < 0.02  # type: ignore[attr-defined]
    # Consistency, not a speed target: a day was timed, and no day took the whole run.
    wall_day, wall = res.wall_per_day_s, res.wall_s  # type: ignore[attr-defined]
    assert math.isfinite(wall_day) and 0 < wall_day < wall
    png = Path(res.plot)  # type: ignore[attr-defined]
    assert png.is_file() and png.stat().st_size > 10_000
    print(
        f"soak {days} d: {res.wall_per_day_s:.3f} s/day, RSS growth "  # type: ignore[attr-defined]
        f"{100 * res.rss_growth:+.2f} %, plugin's share "  # type: ignore[attr-defined]
        f"{100 * res.plugin_rss_growth:+.2f} %"  # type: ignore[attr-defined]
    )


def test_soak_reduced_grid_30_days(build_dir: Path, tmp_path: Path) -> None:
    res = _bench().run_soak(_toy(build_dir), tmp_path, days=30, nlon=36, nlat=18)
    _check(res, 30)


@pytest.mark.soak
def test_soak_full_grid_365_days(
    build_dir: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if "soak" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("opt-in soak (minutes): run with -m soak")
    res = _bench().run_soak(_toy(build_dir), tmp_path, days=365, nlon=90, nlat=45)
    _check(res, 365)
