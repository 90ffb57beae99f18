"""Default samplers: at most 8 network evaluations per member (issue 3), set without retraining."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from precipdiff.bundle import load_bundle, read_manifest
from precipdiff.diffusion.samplers import SamplerConfig
from precipdiff.errors import ConfigError
from precipdiff.grids import LatLonGrid
from precipdiff.offline.train.bundle import MAX_DEFAULT_NFE, bundle_sampler, set_default_sampler
from precipdiff.offline.train.config import load_config
from precipdiff.testing.models import make_tiny_bundle

REPO = Path(__file__).resolve().parents[2]


def _tiny(path: Path) -> Path:
    coarse = LatLonGrid.regular(2.0, lat_min=36.0, lat_max=42.0, lon_min=-9.0, lon_max=3.0)
    fine = LatLonGrid.regular(0.5, lat_min=35.25, lat_max=42.75, lon_min=-9.75, lon_max=3.75)
    return make_tiny_bundle(
        path, coarse_grid=coarse, fine_grid=fine, sampler=SamplerConfig(name="heun", steps=8)
    )


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_set_default_sampler_keeps_weights_and_records_why(tmp_path: Path) -> None:
    bundle = _tiny(tmp_path / "b")
    weights = {p.name: _sha(p) for p in bundle.glob("*.safetensors")}
    old = read_manifest(bundle).sampler
    assert SamplerConfig.from_dict(old).nfe == 15
    block = set_default_sampler(bundle, {"name": "euler", "steps": 8}, reason="issue 3")
    man = read_manifest(bundle)
    assert man.sampler == block and man.sampler_config().nfe == 8
    assert man.provenance["sampler_changes"][-1] == {
        "previous": old,
        "new": block,
        "reason": "issue 3",
    }
    assert {p.name: _sha(p) for p in bundle.glob("*.safetensors")} == weights
    load_bundle(bundle, "cpu")  # sha256 entries still valid


def test_set_default_sampler_refuses_too_many_evaluations(tmp_path: Path) -> None:
    bundle = _tiny(tmp_path / "b")
    before = (bundle / "manifest.json").read_text()
    with pytest.raises(ConfigError, match="15 network evaluations"):
        set_default_sampler(bundle, {"name": "heun", "steps": 8}, reason="x")
    assert (bundle / "manifest.json").read_text() == before


@pytest.mark.parametrize("name", ["iberia_demo", "era5_global_shape", "era5_global_paper"])
def test_shipped_configs_default_sampler_within_budget(name: str) -> None:
    cfg = load_config(REPO / "configs" / f"{name}.yaml")
    assert cfg.bundle is not None
    assert bundle_sampler(cfg).nfe <= MAX_DEFAULT_NFE


@pytest.mark.parametrize("name", ["iberia-demo", "era5-global-shape"])
def test_shipped_bundles_default_sampler_within_budget(name: str) -> None:
    path = REPO / "models" / name
    if not (path / "manifest.json").is_file():
        pytest.skip(f"{path} is not in this checkout")
    man = read_manifest(path)
    assert man.sampler_config().nfe <= MAX_DEFAULT_NFE
    cfg_name = name.replace("-", "_")
    cfg = load_config(REPO / "configs" / f"{cfg_name}.yaml")
    assert cfg.bundle is not None
    assert man.sampler_config() == bundle_sampler(cfg)
    assert json.loads((path / "evaluation.json").read_text())["sampler"] == man.sampler
