"""The documented sequence builds a complete, loadable, evaluated bundle (CLI end to end)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from train_helpers import tiny_config

from precipdiff.offline.cli.main import main
from precipdiff.offline.train.config import to_dict


@pytest.mark.needs_data
@pytest.mark.slow
def test_train_all_builds_loadable_bundle(tmp_path: Path, shared_data: Path) -> None:
    cfg = tiny_config(tmp_path / "run", shared_data, steps=6)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(to_dict(cfg)))
    rc = main(["train", "all", str(path), "--threads", "1", "--no-progress"])
    assert rc == 0
    bundle = tmp_path / "run" / "bundle"
    # `train all` fitted the config's output calibration on the training winters only
    from precipdiff.bundle import read_manifest

    entry = read_manifest(bundle).output_calibration
    assert entry is not None and entry["default"] is True
    assert entry["provenance"]["days"] == 1083 and entry["provenance"]["last_day"] < "1994-12-01"
    (bundle / "MODEL_CARD.md").write_text("card")
    # Re-assembling keeps the hand-written card.
    assert main(["train", "bundle", str(path), "--no-progress"]) == 0
    assert (bundle / "MODEL_CARD.md").read_text() == "card"
    # re-evaluating a shipped bundle needs no run directory (statistics from its manifest,
    # keyed by the network's derived features)
    (bundle / "evaluation.json").unlink()
    nowhere = str(tmp_path / "no-run-dir")
    assert main(["train", "evaluate", str(path), "--run-dir", nowhere, "--no-progress"]) == 0
    assert (bundle / "evaluation.json").is_file()

    from precipdiff.generator import PrecipGenerator

    gen = PrecipGenerator.from_bundle(bundle, device="cpu", use_compiled=False)
    man = gen.manifest
    assert man.variable_names() == ["hus850", "psl", "ta850"]
    assert man.sigma_c == pytest.approx(cfg.diffusion.sigma_c)  # the config's, carried through
    assert gen.coarse_grid.shape == (4, 7) and gen.fine_grid.shape == (16, 28)
    stats = json.loads((tmp_path / "run" / "regression" / "stats.json").read_text())["stats"]
    assert man.normalisation["precip"]["mean"] == pytest.approx(stats["target_mean"])
    assert man.provenance["data"]["regression"]["validation_period"][0].startswith("1994-12-01")
    rng = np.random.default_rng(0)
    pred = {
        "hus850": 0.004 + 0.001 * rng.standard_normal((2, 4, 7)),
        "psl": 101500 + 500 * rng.standard_normal((2, 4, 7)),
        "ta850": 278 + 3 * rng.standard_normal((2, 4, 7)),
    }
    res = gen.generate(pred, members=2, seed=0)
    assert res.fine.shape == (2, 2, 16, 28) and np.all(res.fine >= 0)
    # re-assembling the bundle (new weights possible) drops the output calibration
    assert not gen.calibrates() and man.output_calibration is None

    ev = json.loads((bundle / "evaluation.json").read_text())
    for key in ("regression", "diffusion_given_truth", "pipeline"):
        assert key in ev
    reg = ev["regression"]
    assert {"regression", "climatology", "linear"} <= set(reg)
    assert all(np.isfinite(reg[k]["mae"]) for k in ("regression", "climatology", "linear"))
    assert np.isfinite(ev["pipeline"]["crps_ensemble"])
    for fig in ev["figures"]:
        assert (bundle / "figures" / fig).stat().st_size > 1000


@pytest.mark.needs_data
def test_bundle_without_trained_stages_names_the_command(
    tmp_path: Path, shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tiny_config(tmp_path / "run", shared_data, steps=6)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(to_dict(cfg)))
    assert main(["train", "bundle", str(path)]) == 2
    assert "precipdiff train regression" in capsys.readouterr().err
    cfg.bundle.output_calibration = None  # type: ignore[union-attr]
    path.write_text(yaml.safe_dump(to_dict(cfg)))
    assert main(["train", "calibrate", str(path)]) == 2
    assert "no bundle.output_calibration section" in capsys.readouterr().err
