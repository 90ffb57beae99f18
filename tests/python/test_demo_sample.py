"""The real-data sample of the README's demo: small, attributed, reproducible, complete."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from precipdiff.bundle import read_manifest
from precipdiff.io import import_netcdf4
from precipdiff.qdm import QDMTables

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "examples" / "offline_replay" / "sample"
nc4 = import_netcdf4()


def test_sample_is_small_and_attributed() -> None:
    files = [f for f in SAMPLE.iterdir() if f.is_file()]
    assert sum(f.stat().st_size for f in files) <= 1_000_000  # shared/data/README.md's limit
    text = (SAMPLE / "ATTRIBUTION.md").read_text()
    for must in ("CNRM-CM5", "E-OBS", "non-commercial research and education", "Haylock",
                 "Kalnay", "climate4R.datasets", "LGPL-3", "make_demo_sample.py"):  # fmt: skip
        assert must in text, must


def test_sample_serves_the_demo_bundle() -> None:
    """Every input the demo bundle asks for (and the ESM's own pr, and E-OBS) is there,
    one whole winter of consecutive days; the QDM tables cover the bundle's inputs on its
    coarse grid (the replay attaches them)."""
    names = read_manifest("iberia-demo").variable_names()
    for v in {*names, "hus850", "psl", "ta850", "pr"}:
        with nc4.Dataset(SAMPLE / f"CMIP5_Iberia_{v}.nc") as ds:
            t = ds["time"][:]
            assert t.size == 91 and np.all(np.diff(t) == 1.0), v
    with nc4.Dataset(SAMPLE / "EOBS_Iberia_pr.nc") as ds:
        assert ds["rr"].shape[0] == 91
    tables = QDMTables.load(SAMPLE / "qdm_tables.safetensors")
    assert set(names) <= set(tables.variables)
    assert tables.grid_shape == read_manifest("iberia-demo").coarse_grid_obj().shape


@pytest.mark.needs_data
@pytest.mark.slow
def test_script_reproduces_the_sample(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "sample"
    cmd = [sys.executable, str(REPO / "scripts/make_demo_sample.py"), "--data", str(shared_data)]
    subprocess.run([*cmd, "--out", str(out)], check=True, capture_output=True)
    for f in sorted(SAMPLE.glob("*.nc")):
        with nc4.Dataset(f) as a, nc4.Dataset(out / f.name) as b:
            assert set(a.variables) == set(b.variables)
            for v in a.variables:
                np.testing.assert_array_equal(a[v][:], b[v][:], err_msg=f"{f.name}:{v}")
    old = QDMTables.load(SAMPLE / "qdm_tables.safetensors")
    new = QDMTables.load(out / "qdm_tables.safetensors")
    for v, t in old.variables.items():
        np.testing.assert_array_equal(t.ref_q, new.variables[v].ref_q)
        np.testing.assert_array_equal(t.hist_q, new.variables[v].hist_q)
