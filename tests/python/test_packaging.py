"""`pip install precipdiff` gives the shipped models (by name) and a bounded torch."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from precipdiff.bundle import find_bundle, read_manifest, shipped_bundles
from precipdiff.errors import BundleError

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run([*cmd, "--no-index", "-w", str(out), str(REPO)], check=True)
    return next(out.glob("precipdiff-*.whl"))


def test_wheel_ships_the_small_bundles(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    for bundle in ("iberia-demo", "era5-global-shape"):
        root = f"precipdiff/models/{bundle}/"
        for f in ("manifest.json", "regression.safetensors", "denoiser.safetensors"):
            assert root + f in names, (root + f, [n for n in names if "models" in n])
        assert root + "MODEL_CARD.md" in names  # attribution travels with the weights
    # the demo's output calibration travels with it (its runtime default is on)
    assert "precipdiff/models/iberia-demo/output_calibration.safetensors" in names
    assert not any("/figures/" in n or "/compiled/" in n for n in names)
    assert not any("/speedy-t30/" in n for n in names)  # checkout-only (setup.py NOT_SHIPPED)
    assert not any("/iberia-demo-distilled/" in n for n in names)
    assert wheel.stat().st_size < 5_000_000


def test_torch_requirement_is_bounded_at_the_tested_release(wheel: Path) -> None:
    from packaging.requirements import Requirement

    meta = next(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith("METADATA"))
    text = zipfile.ZipFile(wheel).read(meta).decode()
    (line,) = [ln for ln in text.splitlines() if re.match(r"Requires-Dist: torch\b", ln)]
    spec = Requirement(line.split(":", 1)[1].strip()).specifier
    pinned = re.search(r"TORCH_VERSION=(\S+)", (REPO / "scripts/setup.sh").read_text())
    assert pinned is not None
    major, minor = pinned.group(1).split(".")[:2]
    assert spec.contains(pinned.group(1))  # the version setup.sh installs
    assert not spec.contains(f"{major}.{int(minor) + 1}.0")  # never a newer, untested one
    build = (REPO / "docs/build.md").read_text()
    assert f"torch=={pinned.group(1)} --index-url https://download.pytorch.org/whl/cpu" in build


def test_installed_wheel_resolves_bundles_by_name(wheel: Path, tmp_path: Path) -> None:
    """Outside any checkout: `precipdiff inspect iberia-demo` reads the packaged bundle."""
    target = tmp_path / "site"
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index"]
    subprocess.run([*cmd, "--target", str(target), str(wheel)], check=True)
    env = {k: v for k, v in os.environ.items() if k != "PRECIPDIFF_MODEL_PATH"}
    env["PYTHONPATH"] = str(target)  # before the venv's (editable) precipdiff
    work = tmp_path / "elsewhere"
    work.mkdir()
    r = subprocess.run(
        [sys.executable, "-m", "precipdiff", "inspect", "iberia-demo", "--verify"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert "hus850" in r.stdout and "all file hashes verified" in r.stdout
    where = subprocess.run(
        [
            sys.executable,
            "-c",
            "import precipdiff.bundle as b; print(b.find_bundle('iberia-demo'))",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.strip().startswith(str(target))  # the wheel's copy, not the checkout


def test_bundle_names_in_the_checkout_and_on_the_model_path(tmp_path: Path, monkeypatch) -> None:
    assert {"iberia-demo", "era5-global-shape"} <= set(shipped_bundles())
    assert (
        read_manifest("iberia-demo").variable_names()
        == read_manifest(REPO / "models" / "iberia-demo").variable_names()
    )
    store = tmp_path / "store"
    (store / "mine").mkdir(parents=True)
    (store / "mine" / "manifest.json").write_text("{}")
    monkeypatch.setenv("PRECIPDIFF_MODEL_PATH", str(store))
    assert find_bundle("mine") == store / "mine"
    with pytest.raises(BundleError, match=r"'nope' is neither a directory nor a known bundle"):
        find_bundle("nope")
    assert find_bundle("./nope") == Path("./nope")  # a path stays a path


def test_namelist_takes_a_bundle_name(tmp_path: Path) -> None:
    """bundle_path = 'iberia-demo' in &precipdiff_nml: the shipped bundle, by name."""
    import numpy as np

    from precipdiff.server import Plugin

    nml = tmp_path / "p.nml"
    opts = "device = 'cpu', remap_method = 'bilinear'"
    nml.write_text(f"&precipdiff_nml\n bundle_path = 'iberia-demo', {opts}\n/\n")
    lon, lat = np.arange(-8.0, 2.1, 2.0), np.arange(37.0, 41.1, 2.0)  # inside the fine grid
    plugin = Plugin.from_namelist(str(nml), lon, lat)
    assert "hus850" in plugin.required_fields
    plugin.close()
    nml.write_text("&precipdiff_nml\n bundle_path = 'no-such-bundle', device = 'cpu'\n/\n")
    with pytest.raises(BundleError, match="neither a directory nor a known bundle name"):
        Plugin.from_namelist(str(nml), lon, lat)
