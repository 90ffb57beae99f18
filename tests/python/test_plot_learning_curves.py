"""scripts/plot_learning_curves.py on a tiny synthetic run directory (unit tier)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from script_helpers import load_script

HEADER = "step,epoch,lr,train_loss,grad_norm,val_loss,elapsed_s\n"


def _write(run: Path, stage: str, rows: list[str]) -> None:
    (run / stage).mkdir(parents=True)
    (run / stage / "metrics.csv").write_text(HEADER + "".join(r + "\n" for r in rows))


def test_reads_training_and_validation_losses(tmp_path: Path) -> None:
    from precipdiff.offline.train.loop import read_learning_curves

    _write(tmp_path, "diffusion", ["50,1,1e-3,0.9,1,,1", "100,2,1e-3,0.5,1,0.4,2"])
    m = read_learning_curves(tmp_path / "diffusion" / "metrics.csv")
    assert m == {"train": [(50, 0.9), (100, 0.5)], "val": [(100, 0.4)]}


def test_marks_the_lowest_validation_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    script = load_script("scripts/plot_learning_curves.py")
    _write(tmp_path, "regression", ["10,1,1e-3,5,1,4,1", "20,2,1e-3,3,1,3,2", "30,3,1e-3,1,1,6,3"])
    out = tmp_path / "curves.png"
    monkeypatch.setattr(sys, "argv", ["plot", str(tmp_path), "--out", str(out)])
    assert script.main() == 0
    assert out.stat().st_size > 0
    assert (
        "lowest validation loss 3 at step 20; final 6 at step 30 (2.00x" in capsys.readouterr().out
    )


def test_names_a_directory_without_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    script = load_script("scripts/plot_learning_curves.py")
    monkeypatch.setattr(sys, "argv", ["plot", str(tmp_path), "--out", str(tmp_path / "x.png")])
    assert script.main() == 2
    assert "metrics.csv" in capsys.readouterr().out
