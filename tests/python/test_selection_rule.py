"""The sigma_c selection rule of scripts/iberia_selection.py (unit tier).

The rule was fixed before the sweep ran (docs/results/iberia/selection.md); this
checks that the code does what the text says: exclusion by the change signal, a
1 % CRPS tie window, and the tie-break by distance to the E-OBS targets.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
from script_helpers import load_script


@pytest.fixture(scope="module")
def selection() -> ModuleType:
    return load_script("scripts/iberia_selection.py")


def _row(crps: float, change: float, ratio: float = 1.0) -> dict[str, float]:
    return {
        "crps": crps,
        "change_mean_calibrated": change,
        "spread_skill": ratio,
        "p99_ratio": ratio,
        "wet_ratio": 1.0,
        "band_ratio": 1.0,
    }


def test_lowest_crps_wins_outside_the_tie_window(selection: ModuleType) -> None:
    rows = [("a", _row(0.90, -0.10)), ("b", _row(0.85, -0.10, ratio=0.5))]
    assert selection.sigma_c_choice(rows, -0.10) == "b"


def test_ties_go_to_the_closest_to_the_targets(selection: ModuleType) -> None:
    rows = [("a", _row(0.850, -0.10, ratio=0.8)), ("b", _row(0.855, -0.10, ratio=0.95))]
    assert selection.sigma_c_choice(rows, -0.10) == "b"  # 0.6 % worse CRPS: a tie


def test_a_broken_change_signal_is_excluded(selection: ModuleType) -> None:
    rows = [("a", _row(0.80, -0.20)), ("b", _row(0.85, -0.11))]
    assert selection.sigma_c_choice(rows, -0.10) == "b"  # a dries 2x the ESM
    with pytest.raises(ValueError, match="30 %"):
        selection.sigma_c_choice(rows[:1], -0.10)


def test_the_sweep_names_known_variants(selection: ModuleType) -> None:
    assert set(selection.SIGMA_C_SWEEP) <= set(selection.VARIANTS)
    assert selection.CALIBRATION_BASE in selection.VARIANTS


def _rmse(*values: float) -> list[dict[str, float]]:
    return [{"regression_rmse": v} for v in values]


def test_training_length_is_chosen_on_the_seed_mean(selection: ModuleType) -> None:
    # 500 has the single best seed, 250 the best mean
    rows = [(250, _rmse(2.50, 2.52, 2.51)), (500, _rmse(2.40, 2.70, 2.70))]
    assert selection.regression_steps_choice(rows) == 250


def test_training_length_ties_go_to_fewer_steps(selection: ModuleType) -> None:
    rows = [(1000, _rmse(2.500)), (125, _rmse(2.520)), (60, _rmse(2.600))]
    assert selection.regression_steps_choice(rows) == 125  # 0.8 % worse: a tie
    with pytest.raises(ValueError, match="no regression training lengths"):
        selection.regression_steps_choice([])


def test_training_length_configs_differ_only_in_length_and_seed(
    selection: ModuleType, tmp_path: Path
) -> None:
    from precipdiff.offline.train.config import to_dict

    a = to_dict(selection.regression_steps_config(125, tmp_path))
    b = to_dict(selection.regression_steps_config(1500, tmp_path, seed=2))
    assert a["regression"]["optim"]["steps"] == 125
    assert a["regression"]["optim"]["warmup_steps"] == 6
    assert a["regression"]["loop"]["validate_every"] == 125
    assert b["seed"] == 2 and a["seed"] == 0
    assert a["run_dir"] != b["run_dir"]
    for d in (a, b):
        d.pop("run_dir"), d.pop("seed"), d.pop("bundle")
        for key in ("steps", "warmup_steps"):
            d["regression"]["optim"].pop(key)
        for key in ("validate_every", "checkpoint_every"):
            d["regression"]["loop"].pop(key)
    assert a == b


def test_older_rows_keep_the_earlier_regression(selection: ModuleType, tmp_path: Path) -> None:
    from precipdiff.offline.train.config import to_dict

    for name in selection.VARIANTS:
        # the newer comparisons: every sweep scored output-calibrated
        newer = {n for sweep, _ in selection.CALIBRATED_COMPARISONS for n in sweep}
        if name in newer:
            continue  # the newer comparisons, made with the shipped regression
        cfg = to_dict(selection.variant_config(name, tmp_path))
        assert cfg["regression"]["optim"]["steps"] == 1500, name
        assert cfg["regression"]["optim"]["warmup_steps"] == 75, name
    cfg = to_dict(selection.predictor_set_config(next(iter(selection.PREDICTOR_SETS)), tmp_path))
    assert cfg["regression"]["optim"]["steps"] == 1500
    for name in selection.RESIDUAL_SWEEP:  # one change from the shipped config
        cfg = to_dict(selection.variant_config(name, tmp_path))
        assert cfg["regression"]["optim"]["steps"] == 125, name
        assert cfg["diffusion"]["condition"]["residual"] == (name != "shipped"), name
    for name in selection.PREDICTOR_CHANNELS_SWEEP:
        cfg = to_dict(selection.variant_config(name, tmp_path))
        assert cfg["regression"]["optim"]["steps"] == 125, name
        assert cfg["diffusion"]["condition"]["predictors"] == (name == "shipped"), name
        assert cfg["diffusion"]["sigma_c"] == 0.25, name
    for name in selection.MOISTURE_SWEEP:  # one change: the denoiser's own features
        cfg = to_dict(selection.variant_config(name, tmp_path))
        assert cfg["regression"]["optim"]["steps"] == 125, name
        assert cfg["regression"]["data"]["features"] == ["rh850", "psl"], name
        feats = cfg["diffusion"]["condition"].get("features")
        assert feats == (None if name == "shipped" else ["rh850", "psl", "hus850"]), name
    cfg = to_dict(selection.variant_config(selection.MOISTURE_ONLY_SWEEP[1], tmp_path))
    assert cfg["regression"]["data"]["features"] == ["rh850", "psl"]
    assert cfg["diffusion"]["condition"]["features"] == ["hus850", "psl"]
    assert cfg["diffusion"]["sigma_c"] == 0.25 and cfg["regression"]["optim"]["steps"] == 125


def _moist(crps: float, mean: float, q99: float) -> dict[str, float]:
    return {
        "crps": crps,
        "change_mean_calibrated": mean,
        "change_mean_esm_own": -0.10,
        "change_q0.99_calibrated": q99,
        "change_q0.99_esm_own": 0.04,
    }


def test_moisture_channel_rule(selection: ModuleType) -> None:
    # adopted only if the change is kept, the CRPS is non-inferior (1 %) and the q0.99
    # change moves towards the ESM's own
    choose = selection.moisture_channel_choice
    shipped = _moist(0.850, -0.09, -0.01)
    assert choose(shipped, _moist(0.855, -0.09, 0.02), "c") == "c"
    assert choose(shipped, _moist(0.860, -0.09, 0.02), "c") == "shipped"  # 1.2 % worse
    assert choose(shipped, _moist(0.850, -0.14, 0.02), "c") == "shipped"  # change +40 %
    assert choose(shipped, _moist(0.840, -0.09, -0.03), "c") == "shipped"  # q0.99 further
    assert choose(shipped, _moist(0.840, -0.09, 0.10), "c") == "shipped"  # overshoots: 0.06
    assert choose(shipped, _moist(0.840, -0.09, 0.08), "c") == "c"  # 0.04 off against 0.05


def test_generated_blocks_are_replaced_in_place(selection: ModuleType) -> None:
    text = "prose\n<!-- regression steps -->\nold\n<!-- /regression steps -->\nmore\n"
    out = selection.replace_block(text, "regression steps", "| new |", "cmd --x")
    assert out.startswith("prose\n<!-- regression steps -->\n| new |")
    assert "old" not in out and out.endswith("<!-- /regression steps -->\nmore\n")
    assert "Produced by `cmd --x`." in out
    with pytest.raises(ValueError, match="no <!-- other -->"):
        selection.replace_block(text, "other", "x", "cmd")


def _mab(*values: float) -> list[dict[str, float]]:
    return [{"regression_mab": v} for v in values]


def test_loss_rule_keeps_the_shipped_loss_in_a_tie(selection: ModuleType) -> None:
    shipped = next(iter(selection.REGRESSION_LOSSES))
    rows = [("mixed", _mab(0.300, 0.302)), (shipped, _mab(0.303, 0.302))]
    assert selection.regression_loss_choice(rows) == shipped  # 0.8 % worse: a tie


def test_loss_rule_takes_a_clearly_better_loss(selection: ModuleType) -> None:
    shipped = next(iter(selection.REGRESSION_LOSSES))
    rows = [(shipped, _mab(0.35, 0.33)), ("a", _mab(0.30, 0.31)), ("b", _mab(0.32, 0.30))]
    assert selection.regression_loss_choice(rows) == "a"  # seed mean 0.305 < 0.310
    with pytest.raises(ValueError, match="no regression losses"):
        selection.regression_loss_choice([])


def test_loss_configs_change_only_the_loss(selection: ModuleType, tmp_path: Path) -> None:
    from precipdiff.offline.train.config import to_dict

    for name, change in selection.REGRESSION_LOSSES.items():
        base = to_dict(selection.regression_steps_config(125, tmp_path))
        cfg = to_dict(selection.regression_loss_config(name, tmp_path, seed=1))
        assert cfg["seed"] == 1
        for key, value in change.items():
            assert cfg["regression"][key] == value
        for d in (cfg, base):
            d.pop("run_dir"), d.pop("seed"), d.pop("bundle")
            d["regression"].pop("loss"), d["regression"].pop("physical_weight")
            d["regression"]["loop"].pop("log_every")
        # the shipped config's loop settings, against the sweep's (no weights depend on them)
        for key in ("validate_every", "checkpoint_every"):
            cfg["regression"]["loop"].pop(key), base["regression"]["loop"].pop(key)
        assert cfg == base, name


def test_denoiser_lengths_change_only_the_denoiser_schedule(
    selection: ModuleType, tmp_path: Path
) -> None:
    from precipdiff.offline.train.config import to_dict

    assert "shipped" in selection.DIFFUSION_STEPS_SWEEP
    assert set(selection.DIFFUSION_STEPS_SWEEP) <= set(selection.VARIANTS)
    for steps in (1000, 2000):
        base = to_dict(selection.variant_config("shipped", tmp_path))
        cfg = to_dict(selection.variant_config(f"denoiser {steps} steps", tmp_path))
        assert cfg["diffusion"]["optim"]["steps"] == steps
        assert cfg["diffusion"]["optim"]["warmup_steps"] == round(0.03 * steps)
        for d in (cfg, base):
            d.pop("run_dir"), d.pop("bundle")
            d["diffusion"]["optim"].pop("steps"), d["diffusion"]["optim"].pop("warmup_steps")
        assert cfg == base


def test_denoiser_dropout_is_the_only_change(selection: ModuleType, tmp_path: Path) -> None:
    from precipdiff.offline.train.config import to_dict

    assert set(selection.DROPOUT_SWEEP) <= set(selection.VARIANTS)
    assert (selection.DROPOUT_SWEEP, "denoiser dropout") in selection.CALIBRATED_COMPARISONS
    base = to_dict(selection.variant_config("shipped", tmp_path))
    cfg = to_dict(selection.variant_config("denoiser dropout 0.1", tmp_path))
    assert "dropout" not in base["diffusion"]["model"]  # the UNet default: none
    assert cfg["diffusion"]["model"]["dropout"] == 0.1
    for d in (cfg, base):
        d.pop("run_dir"), d.pop("bundle")
        d["diffusion"]["model"].pop("dropout", None)
    assert cfg == base


def test_the_training_length_figure_reads_the_runs_learning_curves(
    selection: ModuleType, tmp_path: Path
) -> None:
    """plot_regression_steps finds each seed's longest run and draws its metrics.csv."""
    header = "step,epoch,lr,train_loss,grad_norm,val_loss,elapsed_s\n"
    for seed in (0, 3):
        run = Path(selection.regression_steps_config(250, tmp_path, seed).run_dir)
        (run / "regression").mkdir(parents=True)
        (run / "regression" / "metrics.csv").write_text(
            header + "50,1,1e-3,9,1,,1\n125,2,1e-3,6,1,5.5,2\n250,3,1e-3,2,1,6.5,3\n"
        )
    rows = [
        (125, [{"regression_rmse": 2.5}, {"regression_rmse": 2.6}]),
        (250, [{"regression_rmse": 2.7}, {"regression_rmse": 2.6}]),
    ]
    out = selection.plot_regression_steps(rows, [0, 3], tmp_path, tmp_path / "f.png")
    assert out.is_file() and out.stat().st_size > 1000
    with pytest.raises(FileNotFoundError):  # a seed that did not run is not invented
        selection.plot_regression_steps(rows, [0, 1], tmp_path, tmp_path / "g.png")
