"""Namelist (&precipdiff_nml) parsing and validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from precipdiff.errors import ConfigError
from precipdiff.server.config import PluginConfig

REPO = Path(__file__).resolve().parents[2]


def write_nml(tmp_path: Path, body: str, extra: str = "") -> Path:
    p = tmp_path / "input.nml"
    p.write_text(f"{extra}\n&precipdiff_nml\n{body}\n/\n")
    return p


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    p = write_nml(tmp_path, "bundle_path = 'models/tiny'")
    cfg = PluginConfig.from_namelist(p)
    assert cfg.bundle_path == str(tmp_path / "models/tiny")
    assert cfg.device == "auto"
    assert cfg.window_s == 86400.0
    assert cfg.members == 1
    assert cfg.return_mode == "member"
    assert cfg.inference == "sync"
    assert "precipdiff_nml" in cfg.source


def test_full_namelist_with_other_esm_groups(tmp_path: Path) -> None:
    body = """
  bundle_path = '/abs/bundle', device = 'cuda:1', strict_device = .true.,
  members = 4, sampler_steps = 12, seed = 7, window_s = 21600.,
  bias_correction = .true., return_mode = 'cycle', return_member = 2,
  inference = 'lagged', remap_method = 'bilinear', below_ground = 'extrapolate',
  output_units = 'mm/day', output_dir = 'out', output_frequency = 'year',
  reference_time = '1979-01-01 00:00:00', calendar = 'noleap', torch_threads = 2
"""
    extra = "&atmos_nml\n  layout = 2, 4\n  foo = 'bar'\n/\n"
    cfg = PluginConfig.from_namelist(write_nml(tmp_path, body, extra))
    assert cfg.bundle_path == "/abs/bundle"
    assert cfg.device == "cuda:1" and cfg.strict_device
    assert cfg.members == 4 and cfg.sampler_steps == 12 and cfg.seed == 7
    assert cfg.window_s == 21600.0
    assert cfg.return_mode == "cycle" and cfg.return_member == 2
    assert cfg.inference == "lagged"
    assert cfg.output_dir == str(tmp_path / "out")
    assert cfg.calendar == "noleap"


def test_unknown_key_is_named(tmp_path: Path) -> None:
    p = write_nml(tmp_path, "bundle_path = 'b', memberz = 3")
    with pytest.raises(ConfigError, match="memberz"):
        PluginConfig.from_namelist(p)


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ("members = 0", "members"),
        ("device = 'gpu'", "device"),
        ("window_s = 7000.", "window_s"),
        ("return_mode = 'median'", "return_mode"),
        ("members = 2, return_member = 3", "return_member"),
        ("inference = 'async'", "inference"),
        ("remap_method = 'nearest'", "remap_method"),
        ("below_ground = 'zero'", "below_ground"),
        ("output_frequency = 'day'", "output_frequency"),
        ("members = 'four'", "members"),
        ("reference_time = 'yesterday'", "reference_time"),
        ("calendar = 'lunar'", "calendar"),
        ("seed = -1", "seed"),
        ("members = 2, 3", "members"),
    ],
)
def test_invalid_values_are_named(tmp_path: Path, body: str, needle: str) -> None:
    p = write_nml(tmp_path, f"bundle_path = 'b', {body}")
    with pytest.raises(ConfigError, match=needle):
        PluginConfig.from_namelist(p)


def test_window_multiple_days_allowed() -> None:
    assert PluginConfig(bundle_path="b", window_s=2 * 86400.0).window_s == 172800.0


def test_missing_group_file_and_bundle(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        PluginConfig.from_namelist(tmp_path / "nope.nml")
    other = tmp_path / "other.nml"
    other.write_text("&atmos_nml\n x = 1\n/\n")
    with pytest.raises(ConfigError, match="no &precipdiff_nml"):
        PluginConfig.from_namelist(other)
    with pytest.raises(ConfigError, match="bundle_path"):
        PluginConfig.from_namelist(write_nml(tmp_path, "members = 2"))


def test_namelist_text_round_trip(tmp_path: Path) -> None:
    cfg = PluginConfig(bundle_path="/b", members=3, return_mode="mean", window_s=3600.0)
    p = tmp_path / "rt.nml"
    p.write_text(cfg.to_namelist_text())
    again = PluginConfig.from_namelist(p)
    assert again.members == 3 and again.return_mode == "mean" and again.window_s == 3600.0


def test_shipped_sample_namelists_validate() -> None:
    files = sorted((REPO / "examples" / "namelists").glob("*.nml"))
    assert files, "examples/namelists/*.nml missing"
    for f in files:
        cfg = PluginConfig.from_namelist(f)
        assert cfg.bundle_path


def test_every_key_is_documented_in_namelist_md() -> None:
    import dataclasses
    import re

    text = (REPO / "docs" / "namelist.md").read_text()
    documented = set(re.findall(r"^\| `([a-z_0-9]+)` \|", text, flags=re.MULTILINE))
    keys = {f.name for f in dataclasses.fields(PluginConfig)} - {"source"}
    assert keys == documented, f"undocumented: {keys - documented}, stale: {documented - keys}"
