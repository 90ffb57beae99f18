"""Training configs: every shipped config validates; unknown keys and bad values fail."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from precipdiff.errors import ConfigError
from precipdiff.offline.train.config import (
    DataConfig,
    OptimConfig,
    TrainConfig,
    from_dict,
    load_config,
    to_dict,
)

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted((REPO / "configs").glob("*.yaml"))


def test_configs_are_shipped() -> None:
    names = {p.name for p in SHIPPED}
    assert {"iberia_demo.yaml", "era5_global_shape.yaml"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_config_validates(path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, TrainConfig)
    assert cfg.regression is not None and cfg.diffusion is not None and cfg.bundle is not None
    # UNet sections must be accepted by the network's own config.
    from precipdiff.nn.unet import UNetConfig

    UNetConfig.from_dict({**cfg.regression.model, "in_channels": 3})
    UNetConfig.from_dict({**cfg.diffusion.model, "in_channels": 2})
    # Round trip through plain data gives the same config.
    again = from_dict(TrainConfig, to_dict(cfg))
    assert to_dict(again) == to_dict(cfg)


def _demo_raw() -> dict:
    return yaml.safe_load((REPO / "configs" / "iberia_demo.yaml").read_text())


def test_unknown_top_level_key_rejected(tmp_path: Path) -> None:
    raw = _demo_raw()
    raw["learning_rate"] = 1.0
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="learning_rate"):
        load_config(p)


def test_unknown_nested_key_rejected_with_location(tmp_path: Path) -> None:
    raw = _demo_raw()
    raw["regression"]["optim"]["lr_max"] = 1.0
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"regression\.optim.*lr_max"):
        load_config(p)


def test_unknown_key_in_variable_rejected() -> None:
    raw = _demo_raw()["regression"]["data"]
    raw["predictors"][0]["units"] = "kg/kg"
    with pytest.raises(ConfigError, match="units"):
        from_dict(DataConfig, raw)


def test_wrong_type_rejected() -> None:
    with pytest.raises(ConfigError, match="steps"):
        from_dict(OptimConfig, {"steps": "many"})


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("steps", 0, "steps"),
        ("lr", -1.0, "lr"),
        ("ema_decay", 1.0, "ema_decay"),
        ("grad_clip", -1.0, "grad_clip"),
    ],
)
def test_bad_optim_values_rejected(key: str, value: float, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        OptimConfig(**{key: value})


def test_bad_split_dates_rejected() -> None:
    raw = _demo_raw()["regression"]["data"]
    raw["split"] = {"validation_start": "1997-02-28", "validation_end": "1994-12-01"}
    with pytest.raises(ConfigError, match="validation_start"):
        from_dict(DataConfig, raw)
    raw["split"] = {"validation_start": "winter", "validation_end": "1994-12-01"}
    with pytest.raises(ConfigError, match="ISO date"):
        from_dict(DataConfig, raw)


def test_patch_must_be_multiple_of_factor() -> None:
    raw = _demo_raw()
    raw["diffusion"]["patch_size"] = [10, 16]
    with pytest.raises(ConfigError, match="patch_size"):
        from_dict(TrainConfig, raw)


def test_diffusion_rejects_predictors() -> None:
    raw = _demo_raw()
    raw["diffusion"]["data"]["predictors"] = raw["regression"]["data"]["predictors"]
    with pytest.raises(ConfigError, match="predictors"):
        from_dict(TrainConfig, raw)


def test_missing_required_key() -> None:
    raw = _demo_raw()
    del raw["run_dir"]
    with pytest.raises(ConfigError, match="run_dir"):
        from_dict(TrainConfig, raw)


def test_bad_transform_rejected() -> None:
    raw = _demo_raw()
    raw["transform"] = {"kind": "sqrt", "eps": 0.1}
    with pytest.raises(ConfigError, match="sqrt"):
        from_dict(TrainConfig, raw)


def test_missing_file_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml"):
        load_config(tmp_path / "nope.yaml")
