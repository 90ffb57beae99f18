"""Golden tier: generator, samplers, regridding and QDM against stored reference tensors.

References: tests/python/golden/<case>.npz. After an intended change of the numbers,
regenerate them with ``python -m precipdiff.testing.golden --regenerate [case]`` and
commit them with the change (docs/CONTRIBUTING.md, "Test tiers").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from precipdiff.testing import golden


@pytest.mark.parametrize("case", list(golden.CASES))
def test_matches_stored_reference(case: str) -> None:
    problems = golden.compare(case, golden.compute(case))
    assert problems == [], "\n".join(problems)


def test_comparison_catches_a_small_change_and_a_missing_file(tmp_path: Path) -> None:
    got = golden.compute("sampler")
    changed = dict(got)
    changed["heun"] = got["heun"] * (1.0 + 1e-3)
    problems = golden.compare("sampler", changed)
    assert len(problems) == 1 and problems[0].startswith("sampler/heun:")
    assert golden.compare("sampler", got, directory=tmp_path)[0].endswith("--regenerate sampler")


def test_regenerate_and_check_commands(tmp_path: Path) -> None:
    assert golden.main(["--regenerate", "regrid", "--dir", str(tmp_path)]) == 0
    assert golden.main(["--check", "regrid", "--dir", str(tmp_path)]) == 0
    with np.load(tmp_path / "regrid.npz") as f:
        data = {k: f[k] for k in f.files}
    data["bilinear"] = data["bilinear"] + 1.0
    np.savez(tmp_path / "regrid.npz", **data)
    assert golden.main(["--check", "regrid", "--dir", str(tmp_path)]) == 1
