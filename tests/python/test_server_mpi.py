"""Several MPI ranks, one plugin each: only ``output_rank`` writes the output stream."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.mpi

SCRIPT = textwrap.dedent(
    """
    import os
    import sys
    sys.path.insert(0, {tests!r})
    import numpy as np
    from test_server_plugin import MODEL, NumpyEngine, fields_at
    from precipdiff.server import Plugin, PluginConfig

    # A directory per launcher rank, to see which rank wrote.
    rank_dir = {out!r} + "/r" + os.environ["OMPI_COMM_WORLD_RANK"]
    cfg = PluginConfig(bundle_path="unused", output_dir=rank_dir, output_rank=1, members=2)
    plugin = Plugin(cfg, MODEL.lon, MODEL.lat, NumpyEngine())  # rank from the launcher
    for s in range(8):
        for name, val in fields_at(s).items():
            plugin.set_field(name, val)
        plugin.step((s + 1) * 21600.0, 21600.0)
    plugin.close()
    # One report file per rank (3 ranks' stdout interleave arbitrarily under load).
    with open({reports!r} + "/rank" + os.environ["OMPI_COMM_WORLD_RANK"], "w") as f:
        f.write(f"{{plugin.rank}} {{plugin.ready_window}}")
    """
)


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="mpirun not installed")
@pytest.mark.skipif(
    shutil.which("ompi_info") is None, reason="needs Open MPI (reads OMPI_COMM_WORLD_RANK)"
)
def test_only_output_rank_writes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    script = tmp_path / "ranks.py"
    reports = tmp_path / "reports"
    reports.mkdir()
    script.write_text(
        SCRIPT.format(tests=str(Path(__file__).parent), out=str(out), reports=str(reports))
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = ["mpirun", "--oversubscribe", "--allow-run-as-root", "-np", "3", sys.executable]
    res = subprocess.run(
        [*cmd, str(script)], capture_output=True, text=True, timeout=120, env=env, check=False
    )
    assert res.returncode == 0, res.stdout + res.stderr
    got = {p.name: p.read_text().split() for p in reports.iterdir()}
    # Each plugin took its rank from the launcher and closed window 1 (8 steps of 6 h).
    assert got == {f"rank{r}": [str(r), "1"] for r in range(3)}
    assert sorted(p.name for p in out.iterdir()) == ["r1"]
    assert [p.name for p in (out / "r1").iterdir()] == ["precipdiff_2000-01.nc"]
