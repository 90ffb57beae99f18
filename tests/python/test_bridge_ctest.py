"""Run the native bridge's ctest suite (Fortran boundary tests, FP traps, missing
Python package, find_package consumer) from pytest, so one `pytest` covers it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.needs_build]


@pytest.mark.parametrize("pattern", ["^bridge_", "^package_"])
def test_ctest_bridge(build_dir: Path, pattern: str) -> None:
    listing = subprocess.run(
        ["ctest", "--test-dir", str(build_dir), "-N", "-R", pattern],
        capture_output=True,
        text=True,
    )
    if "Total Tests: 0" in listing.stdout:
        pytest.skip(f"no ctest tests matching {pattern} in {build_dir} (tests not configured)")
    proc = subprocess.run(
        ["ctest", "--test-dir", str(build_dir), "-R", pattern, "--output-on-failure"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
