"""Shared pytest fixtures and settings for the precipdiff test suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True, warn_only=True)

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data directory (../shared/data); skips the test when absent."""
    from precipdiff.testing import shared_data_dir

    path = shared_data_dir()
    if path is None:
        pytest.skip("../shared/data not found (set PRECIPDIFF_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def build_dir() -> Path:
    """The CMake build directory; skips the test when the native build is absent."""
    path = Path(os.environ.get("PRECIPDIFF_BUILD_DIR", REPO_ROOT / "build"))
    if not (path / "CMakeCache.txt").exists():
        pytest.skip(f"native build not found in {path}: run scripts/setup.sh")
    return path
