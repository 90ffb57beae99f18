"""Package structure: no import cycles, and the runtime path never imports offline tools.

The runtime path is what an ESM process imports (``precipdiff.server`` and what it
uses); the offline tools live under ``precipdiff.offline`` (training, evaluation,
QDM fitting, export, metrics, the CLI). ``precipdiff.testing`` holds test helpers.
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from precipdiff.grids import LatLonGrid

PACKAGE = Path(__file__).resolve().parents[2] / "python" / "precipdiff"
OFFLINE = ("precipdiff.offline", "precipdiff.testing")


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_graph() -> dict[str, set[str]]:
    """Module -> precipdiff modules it imports anywhere (top level or in functions).

    ``from a.b import c`` is an edge to ``a.b.c`` when that is a module, else to
    ``a.b``; imports under ``if TYPE_CHECKING:`` are skipped (never executed).
    """
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text())
        skip = {
            id(n)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and _is_type_checking(node)
            for n in ast.walk(node)
        }
        deps: set[str] = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    deps.add(sub if sub in mods else base)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_graph_sees_known_edges() -> None:
    # The checker itself must see top-level, function-level and package imports.
    g = import_graph()
    assert "precipdiff.bundle.compiled" in g["precipdiff.generator"]
    assert "precipdiff.server.engine" in g["precipdiff.server.plugin"]
    assert "precipdiff.generator" in g["precipdiff.server.engine"]  # imported in a method
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    cycles = find_cycles(import_graph())
    assert cycles == [], f"import cycles: {cycles}"


def test_runtime_modules_never_import_offline_tools() -> None:
    g = import_graph()
    bad = {
        m: sorted(d for d in deps if d.startswith(OFFLINE))
        for m, deps in g.items()
        if not m.startswith(OFFLINE) and m not in ("precipdiff.__main__",)
    }
    bad = {m: d for m, d in bad.items() if d}
    assert bad == {}, f"runtime modules importing offline tools: {bad}"


COARSE = LatLonGrid.regular(4.0, lat_min=32.0, lat_max=48.0, lon_min=2.0, lon_max=18.0)
FINE = LatLonGrid.regular(1.0, lat_min=30.5, lat_max=49.5, lon_min=0.5, lon_max=19.5)
MODEL = LatLonGrid.regular(2.0, lat_min=31.0, lat_max=49.0, lon_min=1.0, lon_max=19.0)

RUNTIME_SCRIPT = r"""
import json, sys
import numpy as np
import precipdiff.server.capi  # what the C ABI's init code imports
from precipdiff.server.plugin import Plugin

nml, lon, lat, restart = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
plugin = Plugin.from_namelist(nml, np.array(lon), np.array(lat), rank=0)
shape = plugin.model_shape
for step in range(4):
    for name in plugin.required_fields:
        base = {"hus850": 0.007, "ua850": 5.0, "va850": -2.0, "psl": 101300.0}[name]
        plugin.set_field(name, np.full(shape, base + 0.001 * step))
    ready = plugin.step((step + 1) * 21600.0, 21600.0)
assert ready
plugin.write_restart(restart)
plugin.read_restart(restart)
plugin.close()
print(json.dumps(sorted(m for m in sys.modules if m.startswith("precipdiff"))))
"""


@pytest.mark.slow
def test_runtime_path_imports_no_offline_module(tmp_path: Path) -> None:
    """An ESM-like process (bundle + QDM + output stream + restart) loads no offline module."""
    from precipdiff.offline.qdm_fit import fit_qdm
    from precipdiff.qdm import QDMConfig
    from precipdiff.testing.models import make_tiny_bundle

    bundle = make_tiny_bundle(tmp_path / "b", coarse_grid=COARSE, fine_grid=FINE, seed=1)
    times = np.datetime64("2000-01-01") + np.arange(40).astype("timedelta64[D]")
    rng = np.random.default_rng(0)
    ref = {"psl": 101300.0 + 500.0 * rng.standard_normal((40, *COARSE.shape))}
    fit_qdm(
        ref, {"psl": ref["psl"] + 300.0}, times, times, QDMConfig(n_quantiles=5, group="none")
    ).attach_to_bundle(bundle)
    nml = tmp_path / "in.nml"
    nml.write_text(
        f"&precipdiff_nml\n bundle_path = '{bundle}', device = 'cpu', members = 2,\n"
        f" bias_correction = .true., output_dir = '{tmp_path / 'out'}'\n/\n"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            RUNTIME_SCRIPT,
            str(nml),
            json.dumps(MODEL.lon.tolist()),
            json.dumps(MODEL.lat.tolist()),
            str(tmp_path / "r.nc"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "precipdiff.generator" in loaded and "precipdiff.qdm.online" in loaded
    offline = [m for m in loaded if m.startswith(OFFLINE)]
    assert offline == [], f"the runtime path imported offline modules: {offline}"
    shutil.rmtree(tmp_path / "out", ignore_errors=True)
