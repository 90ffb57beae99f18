"""Compare trained regression runs (e.g. different ``regression.loss``) on validation.

Scores each run's shipped weights (``RUN/regression/best.safetensors``, the EMA
weights with the best validation loss) on the regression validation split with
the same metrics as ``precipdiff train bundle`` (MAE, mean bias, mean absolute
bias of the time mean; :mod:`precipdiff.offline.metrics`, mm/day, coarse grid), next to
the per-cell climatology and linear-regression baselines::

    python -m precipdiff.offline.train.compare_losses CONFIG RUN_DIR [RUN_DIR ...]

``CONFIG`` supplies the data section (all runs must share it); each run's own
``config.json`` supplies its network and loss.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from precipdiff.offline import metrics
from precipdiff.offline.train.config import TrainConfig, load_config
from precipdiff.offline.train.data import StageData, Stats
from precipdiff.offline.train.evaluation import (
    _training_coarse,
    fit_linear_baseline,
    predict_linear_baseline,
)
from precipdiff.offline.train.regression import build_regression_net
from precipdiff.offline.train.store_data import open_stage_data
from precipdiff.transforms import PrecipTransform


def _scores(pred: np.ndarray, obs: np.ndarray, data: StageData) -> dict[str, float]:
    grid = data.coarse_grid
    return {
        "mae": metrics.mae(pred, obs, grid),
        "mean_bias": metrics.mean_bias(pred, obs, grid),
        "mean_absolute_bias": metrics.mean_absolute_bias(pred, obs, grid),
    }


def compare_runs(cfg: TrainConfig, runs: list[Path]) -> dict[str, dict[str, Any]]:
    """Score regression runs and the two baselines on the validation split.

    Parameters
    ----------
    cfg
        Experiment configuration providing the regression data section.
    runs
        Run directories (each with ``regression/best.safetensors``,
        ``stats.json`` and ``config.json``).

    Returns
    -------
    dict
        ``{label: {"mae", "mean_bias", "mean_absolute_bias", ...}}``; labels are
        the run directories plus ``linear`` and ``climatology``.
    """
    from precipdiff.errors import ConfigError

    if cfg.regression is None:
        raise ConfigError("the config has no 'regression' section")
    transform = PrecipTransform.from_dict(cfg.transform)
    out: dict[str, dict[str, Any]] = {}
    data: StageData | None = None
    for run in runs:
        meta = json.loads((run / "regression" / "stats.json").read_text())
        run_cfg = json.loads((run / "regression" / "config.json").read_text())
        reg = run_cfg["regression"]
        stage = dataclasses.replace(
            cfg.regression, model=reg["model"], loss=reg.get("loss", "mse_transformed")
        )
        stats = Stats.from_dict(meta["stats"])
        data = open_stage_data(cfg.regression.data, transform, base=cfg.source_dir, stats=stats)
        net = build_regression_net(stage, len(data.predictors))
        net.load_state_dict(load_file(str(run / "regression" / "best.safetensors")))
        net.eval()
        raw = data.read(data.split.validation)
        with torch.no_grad():
            z = net(torch.from_numpy(data.normalise_predictors(raw))).numpy()[:, 0]
        pred = data.denormalise_target(z)
        out[str(run)] = {"loss": stage.loss, **_scores(pred, raw["coarse"], data)}
    if data is not None:
        raw = data.read(data.split.validation)
        obs = raw["coarse"]
        x_tr, y_tr = _training_coarse(data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # always-missing (sea) cells
            clim = np.broadcast_to(np.nanmean(y_tr, axis=0), obs.shape)
        linear = predict_linear_baseline(
            fit_linear_baseline(x_tr, y_tr), data.normalise_predictors(raw)
        )
        out["linear"] = {"loss": "-", **_scores(linear, obs, data)}
        out["climatology"] = {"loss": "-", **_scores(np.asarray(clim), obs, data)}
    return out


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (prints a Markdown table).

    Parameters
    ----------
    argv
        Arguments (default: ``sys.argv[1:]``).
    """
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("config")
    ap.add_argument("runs", nargs="+", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    res = compare_runs(load_config(args.config), args.runs)
    print("| run | loss | MAE | mean bias | mean absolute bias |")
    print("|---|---|---|---|---|")
    for label, s in res.items():
        print(
            f"| {label} | {s['loss']} | {s['mae']:.3f} | {s['mean_bias']:+.3f} | "
            f"{s['mean_absolute_bias']:.3f} |"
        )


if __name__ == "__main__":
    main()
