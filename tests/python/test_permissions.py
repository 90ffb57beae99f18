"""Files precipdiff publishes respect the umask (issue: everything was 0600 via tempfile)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from test_server_plugin import fields_at, make_plugin

from precipdiff.bundle import read_manifest, write_manifest
from precipdiff.grids import LatLonGrid, coarsen_grid
from precipdiff.io.atomic import atomic_write_text, current_umask, publish_permissions
from precipdiff.io.writers import PrecipStreamWriter, write_precip_netcdf
from precipdiff.offline.cli.main import main
from precipdiff.testing.files import write_predictor_files
from precipdiff.testing.models import make_tiny_bundle

FINE = LatLonGrid.regular(0.5, lat_min=40.25, lat_max=43.75, lon_min=0.25, lon_max=3.75)
COARSE = coarsen_grid(FINE, 4)
VARS = ("hus850", "psl", "ta850")


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture(params=[0o022, 0o002, 0o077])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def test_current_umask_reads_without_changing(umask: int) -> None:
    assert current_umask() == umask
    assert current_umask() == umask


def test_atomic_and_netcdf_writers(tmp_path: Path, umask: int) -> None:
    f = tmp_path / "a.txt"
    atomic_write_text(f, "x")
    assert mode(f) == 0o666 & ~umask
    nc = write_precip_netcdf(tmp_path / "pr.nc", np.ones((1, 2, *FINE.shape)), FINE, [0.0])
    assert mode(nc) == 0o666 & ~umask
    w = PrecipStreamWriter(tmp_path / "stream.nc", FINE, members=1, time_bounds=True)
    w.append(np.ones((1, *FINE.shape)), 12.0, bounds=(0.0, 24.0))
    assert mode(w.finalize()) == 0o666 & ~umask
    d = tmp_path / "dir"
    d.mkdir(mode=0o700)
    publish_permissions(d, directory=True)
    assert mode(d) == 0o777 & ~umask


def test_plugin_stream_and_restart(tmp_path: Path, umask: int) -> None:
    plugin, _ = make_plugin(tmp_path, output_dir=str(tmp_path / "out"))
    for s in range(8):  # two windows of 4 steps
        for name, val in fields_at(s).items():
            plugin.set_field(name, val)
        plugin.step((s + 1) * 21600.0, 21600.0)
    plugin.write_restart(str(tmp_path / "r.nc"))
    plugin.close()
    files = sorted((tmp_path / "out").glob("*.nc"))
    assert files
    for f in [*files, tmp_path / "r.nc"]:
        assert mode(f) == 0o666 & ~umask, f


def test_bundle_and_generate_output(tmp_path: Path, umask: int) -> None:
    bundle = make_tiny_bundle(tmp_path / "b", coarse_grid=COARSE, fine_grid=FINE, variables=VARS)
    assert mode(bundle) == 0o777 & ~umask
    for f in bundle.iterdir():
        assert mode(f) == 0o666 & ~umask, f
    write_manifest(bundle, read_manifest(bundle))
    assert mode(bundle / "manifest.json") == 0o666 & ~umask
    inputs = write_predictor_files(tmp_path / "in", VARS, COARSE, days=2)
    out = tmp_path / "gen.nc"
    args = ["generate", str(bundle), "--input", *map(str, inputs), "--out", str(out)]
    assert main([*args, "--no-progress", "--steps", "1"]) == 0
    assert mode(out) == 0o666 & ~umask


def test_qdm_tables(tmp_path: Path, umask: int) -> None:
    from precipdiff.offline.qdm_fit import fit_qdm
    from precipdiff.qdm import QDMConfig

    rng = np.random.default_rng(0)
    times = np.arange("2000-01-01", "2000-02-20", dtype="datetime64[D]")
    ref = {"psl": 101000 + 500 * rng.standard_normal((times.size, 2, 3))}
    hist = {"psl": 100800 + 500 * rng.standard_normal((times.size, 2, 3))}
    tables = fit_qdm(ref, hist, times, times, QDMConfig(n_quantiles=5, group="none"))
    tables.save(tmp_path / "q.safetensors")
    assert mode(tmp_path / "q.safetensors") == 0o666 & ~umask
