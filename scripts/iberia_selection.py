#!/usr/bin/env python
"""Choose the Iberia demo's design on training winters only (inner split), then report.

Every choice that shapes ``models/iberia-demo`` (how the denoiser is conditioned,
the predictor set, static channels, the condition noise) is made here, on an
*inner* split of the training winters: the networks train on DJF 1982/83-1990/91
and are scored on DJF 1991/92-1993/94. The validation winters of the shipped
bundle (1994/95-1996/97) are never read. Each variant is the shipped config
(``configs/iberia_demo.yaml``) with one change, trained with the package's own
pipeline (``precipdiff train``), and scored with the same metrics as
``precipdiff evaluate iberia`` (a):

* CRPS of the ensemble, and against NCEP's own precipitation (bilinear);
* spread-skill ratio; p99 and wet-day frequency relative to E-OBS;
* power at 1-2 degree wavelengths relative to E-OBS (Hann, all-land box);
* for the predictor sets, the stationarity check of issue 13 item 4: the
  relative change of the land-mean DJF mean of the regression driven by QDM-mapped
  CNRM-CM5 predictors (RCP8.5 2081-2100 against 1983-1997), next to CNRM-CM5's own
  change. QDM tables are fitted on the inner training winters.
* the output calibration (issue 13's option of last resort): the inner shipped
  bundle gets a calibration fitted on the inner training winters
  (``precipdiff.offline.output_calibration``) and is scored with and without it,
  together with the generated RCP8.5 change (land-mean DJF mean, q0.9, q0.99 of
  the pooled land values; the same members with and without calibration).
* the regression's training length (issue 13 cause 5): the regression alone,
  trained for each of :data:`REGRESSION_STEPS` optimiser steps with three seeds,
  scored by its inner-validation RMSE (:func:`regression_steps_choice`) with its
  RCP8.5 change beside.

Usage (about 20 minutes per variant on one core of the development machine)::

    .venv/bin/python scripts/iberia_selection.py [--variants NAME ...] [--members 8]
    # the training-length sweep alone (about 15 minutes on one core):
    .venv/bin/python scripts/iberia_selection.py --predictor-sets --variants \
        --regression-steps 60 125 250 500 1000 1500 --write-docs

Writes ``out/selection/<variant>/`` (runs, bundles) and the tables of
``docs/results/iberia/selection.md`` (with ``--write-docs``; the training-length
table and ``regression_training_length.png`` only when that sweep ran, the other
tables only when one of them ran).
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]

#: Inner split: train on the first nine training winters, score on the last three.
INNER_SPLIT = {
    "validation_start": "1991-12-01",
    "validation_end": "1994-02-28",
    "train_end": "1991-02-28",
}

Edit = Callable[[dict[str, Any]], None]


def _cond(**kw: Any) -> Edit:
    def edit(cfg: dict[str, Any]) -> None:
        cfg["diffusion"]["condition"].update(kw)

    return edit


def _features(feats: list[str]) -> Edit:
    def edit(cfg: dict[str, Any]) -> None:
        cfg["regression"]["data"]["features"] = feats

    return edit


def _set(path: str, value: Any) -> Edit:
    def edit(cfg: dict[str, Any]) -> None:
        node = cfg
        keys = path.split(".")
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value

    return edit


def _both(*edits: Edit) -> Edit:
    def edit(cfg: dict[str, Any]) -> None:
        for e in edits:
            e(cfg)

    return edit


#: The condition noise the design choices below were first made with (the shipped
#: value until the sigma_c sweep): the ablations keep it, so that their rows are
#: reproduced exactly as they were run.
EARLIER_SIGMA_C = _set("diffusion.sigma_c", 0.1)


def _regression_steps(steps: int) -> Edit:
    """Train the regression for ``steps`` optimiser steps (5 % warm-up).

    Validation, checkpoints and logs every 250, 500 and 50 steps (the settings of the
    earlier 1500-step regression) or at the end of shorter runs; none of them changes
    the weights (``loop.select: last``).
    """

    def edit(cfg: dict[str, Any]) -> None:
        reg = cfg["regression"]
        reg["optim"]["steps"] = steps
        reg["optim"]["warmup_steps"] = steps // 20
        reg["loop"].update(
            validate_every=min(250, steps),
            checkpoint_every=min(500, steps),
            log_every=min(50, steps),
        )

    return edit


#: The regression the ablations, the sigma_c sweep and the predictor sets were run
#: with (1500 steps, 75 warm-up): they keep it, so that their rows and caches stay
#: what they were.
EARLIER_REGRESSION = _regression_steps(1500)


def _diffusion_steps(steps: int) -> Edit:
    """Train the denoiser for ``steps`` optimiser steps (3 % warm-up, as shipped)."""

    def edit(cfg: dict[str, Any]) -> None:
        cfg["diffusion"]["optim"]["steps"] = steps
        cfg["diffusion"]["optim"]["warmup_steps"] = round(0.03 * steps)

    return edit


#: Variants: one change each from the shipped config. The ablations and the sigma_c
#: sweep were run with the earlier regression (:data:`EARLIER_REGRESSION`) and keep
#: it; "shipped" and the denoiser lengths have the shipped one.
VARIANTS: dict[str, Edit] = {
    "shipped": lambda cfg: None,
    "paper: condition on the true block mean": _both(
        EARLIER_REGRESSION, EARLIER_SIGMA_C, _cond(source="truth", predictors=False)
    ),
    "no predictors in the condition": _both(
        EARLIER_REGRESSION, EARLIER_SIGMA_C, _cond(predictors=False)
    ),
    "no static channels": _both(
        EARLIER_REGRESSION, EARLIER_SIGMA_C, _cond(statics=[], static_files=[])
    ),
    "sigma_c 0.1": _both(EARLIER_REGRESSION, EARLIER_SIGMA_C),
    "sigma_c 0.25": _both(EARLIER_REGRESSION, _set("diffusion.sigma_c", 0.25)),
    "sigma_c 0.5": _both(EARLIER_REGRESSION, _set("diffusion.sigma_c", 0.5)),
    "sigma_c 1.0": _both(EARLIER_REGRESSION, _set("diffusion.sigma_c", 1.0)),
    "denoiser 1000 steps": _diffusion_steps(1000),
    "denoiser 2000 steps": _diffusion_steps(2000),
    "residual denoiser": _cond(residual=True),
    "no predictor channels": _cond(predictors=False),
    "denoiser also reads hus850": _cond(features=["rh850", "psl", "hus850"]),
    "denoiser reads hus850, not rh850": _cond(features=["hus850", "psl"]),
    "denoiser dropout 0.1": _set("diffusion.model.dropout", 0.1),
}

#: The denoiser's training length (issue 13 cause 5), each scored output-calibrated
#: (``--calibrated``) and chosen by :func:`sigma_c_choice`'s rule, unchanged; "shipped"
#: is the 4000-step value.
DIFFUSION_STEPS_SWEEP = ["denoiser 1000 steps", "denoiser 2000 steps", "shipped"]


#: The residual formulation (``diffusion.condition.residual``: the denoiser generates
#: ``z_fine - up(z_coarse)``, which scales the small scales with the condition in the
#: ``log1p`` space), against the shipped config; scored output-calibrated and chosen by
#: :func:`sigma_c_choice`'s rule, unchanged (fixed before the runs).
RESIDUAL_SWEEP = ["shipped", "residual denoiser"]

#: Where the q0.99 change is lost (diagnostic): the shipped pipeline with the denoiser
#: not reading the predictors directly (it still gets them through the regression's
#: condition), scored like the residual comparison and under the same rule.
PREDICTOR_CHANNELS_SWEEP = ["shipped", "no predictor channels"]

#: Absolute humidity for the small scales (the q0.99 change): the denoiser reads
#: ``hus850`` besides the regression's ``rh850, psl`` (the regression is unchanged, so
#: the large-scale stationarity argument for relative humidity still holds); decided by
#: :func:`moisture_channel_choice`, fixed before the runs.
MOISTURE_SWEEP = ["shipped", "denoiser also reads hus850"]

#: The same question without the temperature the pair ``rh850, hus850`` implies
#: (q = RH q_s(T)): the denoiser reads ``hus850, psl`` (the regression still reads
#: ``rh850, psl``); the same rule, fixed before this run too.
MOISTURE_ONLY_SWEEP = ["shipped", "denoiser reads hus850, not rh850"]


#: Regularising the over-fitting denoiser (issue 13 cause 5): dropout 0.1 in its
#: residual blocks (EDM's remedy for small data sets; the shipped regression has 0.1,
#: the shipped denoiser none), otherwise the shipped config; scored output-calibrated
#: and chosen by :func:`sigma_c_choice`'s rule, unchanged (fixed before the runs).
DROPOUT_SWEEP = ["shipped", "denoiser dropout 0.1"]


#: The comparisons scored output-calibrated, each with its block of selection.md.
CALIBRATED_COMPARISONS: tuple[tuple[list[str], str], ...] = (
    (DIFFUSION_STEPS_SWEEP, "denoiser steps"),
    (RESIDUAL_SWEEP, "residual"),
    (PREDICTOR_CHANNELS_SWEEP, "predictor channels"),
    (MOISTURE_SWEEP, "moisture channel"),
    (MOISTURE_ONLY_SWEEP, "moisture only"),
    (DROPOUT_SWEEP, "denoiser dropout"),
)


def moisture_channel_choice(
    shipped: dict[str, float], candidate: dict[str, float], name: str = "candidate"
) -> str:
    """Adopt a physically motivated condition change only if it does what it is for.

    The rule, written before the runs (selection.md, "Absolute humidity for the
    small scales"), on calibrated scores of the inner split:

    1. the candidate's RCP8.5 mean change is within +-30 % (relative) of the ESM's;
    2. its CRPS is at most 1 % above the shipped config's (non-inferior skill);
    3. its q0.99 change is closer to the ESM's own than the shipped config's is.

    Parameters
    ----------
    shipped, candidate
        Calibrated scores as :func:`score_output_calibration` returns them.
    name
        The candidate's name (returned when it is adopted).

    Returns
    -------
    str
        ``name`` when all three hold, else ``"shipped"``.
    """
    esm = candidate["change_mean_esm_own"]
    if abs(candidate["change_mean_calibrated"] / esm - 1.0) > 0.3:
        return "shipped"
    if candidate["crps"] > 1.01 * shipped["crps"]:
        return "shipped"
    q_esm = candidate["change_q0.99_esm_own"]
    closer = abs(candidate["change_q0.99_calibrated"] - q_esm) < abs(
        shipped["change_q0.99_calibrated"] - q_esm
    )
    return name if closer else "shipped"


#: The sigma_c sweep (issue 13 cause 3): the shipped product is output-calibrated, so
#: each value is also scored with a calibration fitted on the inner training winters
#: (``--calibrated``), and the choice is made on the calibrated scores
#: (:func:`sigma_c_choice`).
SIGMA_C_SWEEP = ["sigma_c 0.1", "sigma_c 0.25", "sigma_c 0.5", "sigma_c 1.0"]

#: The output-calibration decision and its settings were made on this variant.
CALIBRATION_BASE = "sigma_c 0.1"


def sigma_c_choice(rows: list[tuple[str, dict[str, float]]], esm_change: float) -> str:
    """The sigma_c rule, fixed before the sweep was run (selection.md, "Condition noise").

    1. Values whose calibrated RCP8.5 mean change is outside +-30 % (relative) of
       the ESM's own are excluded.
    2. The lowest calibrated CRPS wins; values within 1 % of it are tied.
    3. Ties go to the smallest sum of ``|ln ratio|`` of spread-skill, p99, wet-day
       frequency and 1-2 degree power (each against its target 1).

    Parameters
    ----------
    rows
        ``(variant, calibrated scores)`` as :func:`score_output_calibration` returns.
    esm_change
        The ESM's own relative change of the DJF mean.

    Returns
    -------
    str
        The chosen variant.
    """
    keep = [(n, s) for n, s in rows if abs(s["change_mean_calibrated"] / esm_change - 1.0) <= 0.3]
    if not keep:
        raise ValueError("no sigma_c value keeps the mean change within 30 % of the ESM's")
    best = min(s["crps"] for _, s in keep)
    tied = [(n, s) for n, s in keep if s["crps"] <= 1.01 * best]

    def distance(s: dict[str, float]) -> float:
        keys = ("spread_skill", "p99_ratio", "wet_ratio", "band_ratio")
        return float(sum(abs(np.log(s[k])) for k in keys))

    return min(tied, key=lambda ns: distance(ns[1]))[0]


#: Predictor sets (issue 13 item 4): the regression alone decides them -- its skill
#: on the inner validation winters and its RCP8.5 change (the stationarity check).
#: Only the regression is trained (no cross-fitting, a one-step placeholder
#: denoiser so that the bundle machinery can load it; no diffusion score is read).
PREDICTOR_SETS: dict[str, list[str]] = {
    "rh850, psl (shipped)": ["rh850", "psl"],
    "hus850, psl (the paper's humidity + pressure)": ["hus850", "psl"],
    "hus850, psl, ta850": ["hus850", "psl", "ta850"],
    "rh850, psl, ta850": ["rh850", "psl", "ta850"],
}


def _regression_only(cfg: dict[str, Any]) -> None:
    """Train the regression alone: no cross-fitting, a one-step placeholder denoiser.

    The placeholder lets the bundle machinery load the regression; no diffusion
    score is read from such a bundle.
    """
    cfg["regression"]["cross_fit_folds"] = 0
    cfg["diffusion"]["condition"] = {"source": "truth", "predictors": False, "statics": []}
    cfg["diffusion"]["optim"]["steps"] = 1
    cfg["diffusion"]["optim"]["warmup_steps"] = 0
    cfg["diffusion"]["loop"]["validate_every"] = 1
    cfg["diffusion"]["loop"]["checkpoint_every"] = 1


def predictor_set_config(name: str, run_root: Path) -> Any:
    """The earlier regression (:data:`EARLIER_REGRESSION`), inner split, one predictor set."""
    feats = PREDICTOR_SETS[name]

    def edit(cfg: dict[str, Any]) -> None:
        EARLIER_REGRESSION(cfg)
        cfg["regression"]["data"]["features"] = feats
        _regression_only(cfg)

    return _configured(edit, "predictors_" + name, run_root)


#: Regression training lengths compared on the inner split (issue 13 cause 5), each
#: with three seeds: the regression memorises its ~800 training days (its inner
#: validation loss is lowest at the first evaluation while the training loss keeps
#: falling), so the number of optimiser steps is a choice, made here.
REGRESSION_STEPS = (60, 125, 250, 500, 1000, 1500)
REGRESSION_SEEDS = (0, 1, 2)


#: Regression losses compared on the inner split (docs/training.md, "Choosing the
#: regression loss"), at the shipped training length, three seeds each.
REGRESSION_LOSSES: dict[str, dict[str, Any]] = {
    "mse_physical (shipped)": {"loss": "mse_physical"},
    "mse_transformed": {"loss": "mse_transformed"},
    "mixed, physical_weight 0.1": {"loss": "mixed", "physical_weight": 0.1},
    "mixed, physical_weight 0.5": {"loss": "mixed", "physical_weight": 0.5},
    "mixed, physical_weight 2.0": {"loss": "mixed", "physical_weight": 2.0},
}


def regression_loss_config(name: str, run_root: Path, seed: int = 0) -> Any:
    """The shipped regression (alone), inner split, one loss of :data:`REGRESSION_LOSSES`."""

    def edit(cfg: dict[str, Any]) -> None:
        cfg["regression"].update(REGRESSION_LOSSES[name])
        _regression_only(cfg)
        cfg["seed"] = seed

    return _configured(edit, "regression_loss_" + name + (f"_seed{seed}" if seed else ""), run_root)


def regression_loss_choice(
    rows: list[tuple[str, list[dict[str, float]]]], shipped: str = next(iter(REGRESSION_LOSSES))
) -> str:
    """The loss rule, fixed before the inner-split comparison ran (selection.md).

    The lowest seed-mean inner-validation mean absolute bias of the time mean (the
    paper's headline metric, ``regression_mab``) wins; losses within 1 % of it are
    tied and a tie keeps the shipped loss if it is tied, else goes to the lowest.

    Parameters
    ----------
    rows
        ``(loss name, [scores per seed])``.
    shipped
        The loss the shipped config had before the comparison.

    Returns
    -------
    str
        The chosen loss's name.
    """
    if not rows:
        raise ValueError("no regression losses to choose from")
    mean = {n: _seed_mean(seeds, "regression_mab") for n, seeds in rows}
    best = min(mean.values())
    if shipped in mean and mean[shipped] <= 1.01 * best:
        return shipped
    return min(mean, key=lambda n: mean[n])


def regression_steps_config(steps: int, run_root: Path, seed: int = 0) -> Any:
    """The shipped regression (alone), inner split, ``steps`` optimiser steps, ``seed``."""

    def edit(cfg: dict[str, Any]) -> None:
        _regression_steps(steps)(cfg)
        _regression_only(cfg)
        cfg["seed"] = seed

    name = f"regression_steps_{steps}" + (f"_seed{seed}" if seed else "")
    return _configured(edit, name, run_root)


def regression_steps_choice(rows: list[tuple[int, list[dict[str, float]]]]) -> int:
    """The training-length rule, fixed before the sweep ran (selection.md).

    The lowest seed-mean inner-validation RMSE of the regression wins; lengths within
    1 % of it are tied and the tie goes to the fewest steps (the cheaper, less
    over-fitted network).

    Parameters
    ----------
    rows
        ``(steps, [scores per seed])``, each score with ``regression_rmse``.

    Returns
    -------
    int
        The chosen number of steps.
    """
    if not rows:
        raise ValueError("no regression training lengths to choose from")
    mean = {n: _seed_mean(seeds, "regression_rmse") for n, seeds in rows}
    best = min(mean.values())
    return min(n for n, m in mean.items() if m <= 1.01 * best)


def variant_config(name: str, run_root: Path) -> Any:
    """The shipped config with the inner split and one variant's change."""
    return _configured(VARIANTS[name], name, run_root)


def _configured(edit: Edit, name: str, run_root: Path) -> Any:
    import yaml

    from precipdiff.offline.train.config import from_dict

    raw = yaml.safe_load((REPO / "configs" / "iberia_demo.yaml").read_text())
    raw = copy.deepcopy(raw)
    for stage in ("regression", "diffusion"):
        raw[stage]["data"]["split"] = dict(INNER_SPLIT)
        raw[stage]["loop"]["progress"] = False
    raw["diffusion"].setdefault("condition", {})
    edit(raw)
    slug = "".join(c if c.isalnum() else "_" for c in name).strip("_")
    raw["run_dir"] = str(run_root / slug)
    raw["bundle"]["out"] = str(run_root / slug / "bundle")
    raw["bundle"]["evaluate"] = False
    cfg = from_dict(type_of_config(), raw)
    cfg.source_dir = REPO / "configs"
    return cfg


def type_of_config() -> Any:
    from precipdiff.offline.train.config import TrainConfig

    return TrainConfig


def _regression_key(cfg: Any) -> str:
    import hashlib

    from precipdiff.offline.train.config import to_dict

    blob = json.dumps(
        {"regression": to_dict(cfg.regression), "seed": cfg.seed, "tf": cfg.transform},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def train(cfg: Any) -> Path:
    """Train both stages and write the bundle (resumes finished stages).

    Variants with the same regression section share one trained regression (its
    directory, cross-fitted folds included, is copied): the same config and seed
    give the same weights.
    """
    import shutil

    from precipdiff.offline.train.bundle import build_bundle
    from precipdiff.offline.train.ddp import setup
    from precipdiff.offline.train.diffusion import train_diffusion
    from precipdiff.offline.train.regression import train_regression

    ctx = setup("cpu")
    shared = Path(cfg.run_dir).parent / "regressions" / _regression_key(cfg)
    mine = Path(cfg.run_dir) / "regression"
    if not (mine / "best.safetensors").is_file():
        if (shared / "condition.npz").is_file() or (shared / "best.safetensors").is_file():
            shutil.rmtree(mine, ignore_errors=True)
            shutil.copytree(shared, mine)
    train_regression(cfg, ctx)
    if not (shared / "best.safetensors").is_file():
        shutil.copytree(mine, shared, dirs_exist_ok=True)
    train_diffusion(cfg, ctx)
    return build_bundle(cfg)


def score(
    cfg: Any, bundle: Path, members: int, seed: int = 0, calibrate: bool | None = None
) -> dict[str, float]:
    """Scores on the inner validation winters, as ``precipdiff evaluate iberia`` (a)."""
    from precipdiff.generator import PrecipGenerator

    gen = PrecipGenerator.from_bundle(bundle, device="cpu", use_compiled=False)
    return score_settings(cfg, gen, members, (calibrate,), seed)[0][0]


def score_settings(
    cfg: Any,
    gen: Any,
    members: int,
    settings: tuple[bool | None, ...],
    seed: int = 0,
    periods: dict[str, Any] | None = None,
) -> tuple[list[dict[str, float]], np.ndarray]:
    """One generation on the inner validation winters, scored per output-calibration setting.

    The members are generated once without the calibration, which is then applied to
    the very same members for each setting that asks for it (``None``: the bundle's
    default) -- what :meth:`PrecipGenerator.generate` would return with that setting.
    The regression's RCP8.5 check (:func:`rcp85_change`), unaffected by the
    calibration, is computed once. Returns the scores per setting and the land mask.
    """
    from precipdiff.grids import LatLonGrid, Regridder
    from precipdiff.io import import_xarray
    from precipdiff.offline import metrics
    from precipdiff.offline.train.data import StageData
    from precipdiff.testing import shared_data_dir
    from precipdiff.transforms import PrecipTransform

    xr = import_xarray()
    data = StageData(
        cfg.regression.data, PrecipTransform.from_dict(cfg.transform), REPO / "configs"
    )
    val = data.split.validation
    raw = data.read(val)
    names = gen.manifest.variable_names()
    dates = data.split.times[val]
    res = gen.generate(
        {n: raw[n] for n in names}, members=members, seed=seed, output_calibration=False
    )
    obs = raw["fine"]
    root = shared_data_dir()
    assert root is not None
    with xr.open_dataset(root / "climate4r_iberia" / "NCEP_Iberia_pr.nc") as ds:
        keys = ds["time"].values.astype("datetime64[D]")
        idx = np.searchsorted(keys, dates.astype("datetime64[D]"))
        g = LatLonGrid(ds["lat"].values, ds["lon"].values)
        ncep_pr = np.asarray(ds["pr"].values[idx], np.float32) * 86400.0
    ncep_fine = Regridder(g, gen.fine_grid, "bilinear")(ncep_pr)
    ncep_fine = np.where(np.isfinite(obs), ncep_fine, np.nan)
    land = np.isfinite(obs).all(axis=0)
    box = metrics.land_box(land)
    dx = float(abs(gen.fine_grid.lon[1] - gen.fine_grid.lon[0]))
    crps_ncep = metrics.mae(ncep_fine, obs)
    change = rcp85_change(gen, land, periods)
    outs = []
    for setting in settings:
        fine = res.fine
        if gen.calibrates(setting):
            fine = gen.output_calibration.apply(fine, dates)
        ens = np.where(np.isfinite(obs)[:, None], fine, np.nan)
        crps = float(np.nanmean(metrics.crps_ensemble(ens, obs)))
        p99 = metrics.quantiles(ens, (0.99,))[0] / metrics.quantiles(obs, (0.99,))[0]
        wet = np.nanmean(metrics.wet_day_frequency(ens)) / np.nanmean(
            metrics.wet_day_frequency(obs)
        )
        out = {
            "crps": crps,
            "crps_ncep_own": crps_ncep,
            "crps_ratio_to_ncep_own": crps / crps_ncep,
            "spread_skill": metrics.spread_skill(ens, obs).ratio,
            "p99_ratio": float(p99),
            "wet_ratio": float(wet),
            "band_ratio": metrics.band_power_ratio(
                ens[..., box[0], box[1]], obs[..., box[0], box[1]], (1.0, 2.0), dx=dx
            ),
            "mean_bias": metrics.mean_bias(ens, obs),
        }
        out.update(change)
        outs.append(out)
    return outs, land


def score_regression(cfg: Any, bundle: Path) -> dict[str, float]:
    """The regression alone on the inner validation winters, and its RCP8.5 change."""
    from precipdiff.generator import PrecipGenerator
    from precipdiff.offline import metrics
    from precipdiff.offline.train.data import StageData
    from precipdiff.transforms import PrecipTransform

    gen = PrecipGenerator.from_bundle(bundle, device="cpu", use_compiled=False)
    data = StageData(
        cfg.regression.data, PrecipTransform.from_dict(cfg.transform), REPO / "configs"
    )
    raw = data.read(data.split.validation)
    names = gen.manifest.variable_names()
    pred = gen.to_precip(gen.regress({n: raw[n] for n in names}))
    obs = raw["coarse"]
    pred = np.where(np.isfinite(obs), pred, np.nan)
    out = {
        "regression_rmse": metrics.rmse(pred, obs),
        "regression_mae": metrics.mae(pred, obs),
        "regression_bias": metrics.mean_bias(pred, obs),
        "regression_mab": metrics.mean_absolute_bias(pred, obs),
    }
    land = np.isfinite(raw["fine"]).all(axis=0)
    out.update(rcp85_change(gen, land))
    return out


def esm_periods(gen: Any) -> dict[str, Any]:
    """CNRM-CM5 historical and RCP8.5 inputs, QDM-mapped, and the ESM's own precipitation.

    QDM tables are fitted on the inner training winters (NCEP against CNRM-CM5, per
    calendar month) and applied trend-preserving to each period. Keys: ``hist``,
    ``fut`` (predictors on the bundle's coarse grid), ``t_hist``, ``t_fut`` and
    ``own_hist``, ``own_fut`` (CNRM-CM5's precipitation on the fine grid, bilinear).
    """
    from precipdiff.grids import LatLonGrid, Regridder
    from precipdiff.io import import_xarray
    from precipdiff.io.readers import open_predictors
    from precipdiff.offline.qdm_fit import apply_qdm, fit_qdm
    from precipdiff.qdm import QDMConfig
    from precipdiff.testing import shared_data_dir

    xr = import_xarray()
    root = shared_data_dir()
    assert root is not None
    names = gen.manifest.variable_names()
    specs = list(gen.manifest.variables)

    def load(stem: str, suffix: str = "") -> tuple[dict[str, np.ndarray], Any]:
        paths = [root / "climate4r_iberia" / f"{stem}_Iberia_{n}{suffix}.nc" for n in names]
        dsx = open_predictors(paths, specs, grid=gen.coarse_grid)
        try:
            return {n: np.asarray(dsx[n].values, np.float32) for n in names}, dsx["time"].values
        finally:
            dsx.close()

    ncep, t_n = load("NCEP")
    hist, t_h = load("CMIP5")
    fut, t_f = load("CMIP5", ".rcp85")
    tr_n = (t_n < np.datetime64(INNER_SPLIT["train_end"])).nonzero()[0]
    tr_h = (t_h < np.datetime64(INNER_SPLIT["train_end"])).nonzero()[0]
    tables = fit_qdm(
        {n: ncep[n][tr_n] for n in names},
        {n: hist[n][tr_h] for n in names},
        t_n[tr_n],
        t_h[tr_h],
        QDMConfig(group="month"),
    )
    with xr.open_dataset(root / "climate4r_iberia" / "CMIP5_Iberia_pr.nc") as ds:
        gh = LatLonGrid(ds["lat"].values, ds["lon"].values)
        own_h = Regridder(gh, gen.fine_grid, "bilinear")(ds["pr"].values.astype(np.float32))
    with xr.open_dataset(root / "climate4r_iberia" / "CMIP5_Iberia_pr.rcp85.nc") as ds:
        own_f = Regridder(gh, gen.fine_grid, "bilinear")(ds["pr"].values.astype(np.float32))
    return {
        "hist": {n: apply_qdm(tables, n, hist[n], t_h) for n in names},
        "fut": {n: apply_qdm(tables, n, fut[n], t_f) for n in names},
        "t_hist": t_h,
        "t_fut": t_f,
        "own_hist": own_h,
        "own_fut": own_f,
    }


def rcp85_change(
    gen: Any, land: np.ndarray, periods: dict[str, Any] | None = None
) -> dict[str, float]:
    """Stationarity check of the predictor set: the regression's RCP8.5 change.

    Relative change of the land-mean DJF mean of the regression driven by
    QDM-mapped CNRM-CM5 predictors (:func:`esm_periods`), 2081-2100 against
    1983-1997, next to CNRM-CM5's own change. ``periods``: :func:`esm_periods`'s
    result when the caller has it already.
    """
    from precipdiff.grids import Regridder

    e = periods if periods is not None else esm_periods(gen)
    mask = np.where(land, 1.0, np.nan)
    up = Regridder(gen.coarse_grid, gen.fine_grid, "bilinear")

    def land_mean(x: np.ndarray) -> float:
        return float(np.nanmean(np.nanmean(x, axis=0) * mask))

    reg_h = up(gen.to_precip(gen.regress(e["hist"])))
    reg_f = up(gen.to_precip(gen.regress(e["fut"])))
    return {
        "rcp85_change_regression": land_mean(reg_f) / land_mean(reg_h) - 1.0,
        "rcp85_change_esm_own": land_mean(e["own_fut"]) / land_mean(e["own_hist"]) - 1.0,
    }


def generated_change(
    gen: Any, land: np.ndarray, members: int = 2, periods: dict[str, Any] | None = None
) -> dict[str, float]:
    """The generated RCP8.5 change with and without the bundle's output calibration.

    CNRM-CM5 predictors, QDM-mapped (:func:`esm_periods`), historical 1983-1997 and
    RCP8.5 2081-2100, ``members`` members per day; the calibration is applied to the
    very same members. Changes of the land-mean DJF mean and of the 0.9 / 0.99
    quantiles of the pooled land values, with CNRM-CM5's own changes. ``periods``:
    :func:`esm_periods`'s result when the caller has it already.
    """
    assert gen.output_calibration is not None
    e = periods if periods is not None else esm_periods(gen)
    fields = {"own_h": e["own_hist"][..., land], "own_f": e["own_fut"][..., land]}
    for label, period, seed in (("h", "hist", 21), ("f", "fut", 22)):
        res = gen.generate(e[period], members=members, seed=seed, output_calibration=False)
        fields[label] = res.fine[..., land]
        cal = gen.output_calibration.apply(res.fine, e["t_" + period])
        fields[label + "_cal"] = cal[..., land]
    out: dict[str, float] = {}
    for key, h, f in (
        ("generated", "h", "f"),
        ("calibrated", "h_cal", "f_cal"),
        ("esm_own", "own_h", "own_f"),
    ):
        a, b = fields[h], fields[f]
        out[f"change_mean_{key}"] = float(np.mean(b) / np.mean(a) - 1.0)
        for q in (0.9, 0.99):
            out[f"change_q{q}_{key}"] = float(np.quantile(b, q) / np.quantile(a, q) - 1.0)
    return out


def score_output_calibration(cfg: Any, members: int) -> dict[str, float]:
    """A variant's inner bundle with an output calibration fitted on the inner training winters.

    Returns the scores of :func:`score` with (keys as there) and without
    (``uncalibrated_*``) the calibration, and :func:`generated_change`.
    """
    import shutil

    from precipdiff.offline.output_calibration import calibrate_bundle
    from precipdiff.offline.train.config import OutputCalibrationConfig

    src = train(cfg)
    dest = Path(cfg.run_dir) / "calibrated_bundle"
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(src, dest)
    assert cfg.bundle is not None
    cfg.bundle.output_calibration = OutputCalibrationConfig()
    calibrate_bundle(cfg, dest)
    return calibration_scores(cfg, dest, members)


def calibration_scores(cfg: Any, bundle: Path, members: int) -> dict[str, float]:
    """:func:`score_output_calibration`'s scores of an already calibrated bundle.

    One generation scored with and without the calibration (:func:`score_settings`)
    and :func:`generated_change`, sharing one :func:`esm_periods`.
    """
    from precipdiff.generator import PrecipGenerator

    gen = PrecipGenerator.from_bundle(bundle, device="cpu", use_compiled=False)
    periods = esm_periods(gen)
    (out, uncal), land = score_settings(cfg, gen, members, (True, False), periods=periods)
    out.update({f"uncalibrated_{k}": v for k, v in uncal.items()})
    out.update(generated_change(gen, land, periods=periods))
    return out


#: Output-calibration settings compared on the inner split (the first is the shipped one):
#: members generated per training day, quantile nodes, season grouping.
CALIBRATION_SETTINGS: dict[str, dict[str, Any]] = {
    "4 members, 100 nodes, one table (shipped)": {"members": 4, "n_quantiles": 100},
    "1 member, 100 nodes, one table": {"members": 1, "n_quantiles": 100},
    "1 member, 50 nodes, per month": {"members": 1, "n_quantiles": 50, "group": "month"},
}


def table_roughness(bundle: Path) -> float:
    """Neighbour r.m.s. difference of log(factor) at the median node (a fixed-pattern measure).

    A calibration estimated from few samples has noisy per-cell factors; their
    cell-to-cell noise is a *fixed* small-scale pattern stamped on every field, which
    raises the power at 1-2 degrees without any weather in it.
    """
    from precipdiff.bundle import read_manifest
    from precipdiff.qdm.calibration import OutputCalibration

    m = read_manifest(bundle)
    assert m.output_calibration is not None
    cal = OutputCalibration.from_manifest(m.output_calibration, bundle)
    f = cal.factors(cal.groups[0])
    i = int(np.argmin(np.abs(cal.nodes - 0.5)))
    lf = np.log(np.maximum(f[i], 1e-3))
    d = np.concatenate([np.diff(lf, axis=0).ravel(), np.diff(lf, axis=1).ravel()])
    d = d[np.isfinite(d) & (d != 0)]  # cells without observations keep factor 1
    return float(np.sqrt(np.mean(d**2)))


def score_calibration_setting(cfg: Any, name: str, members: int) -> dict[str, float]:
    """:func:`score` of the inner shipped bundle with one calibration setting."""
    import shutil

    from precipdiff.offline.output_calibration import calibrate_bundle
    from precipdiff.offline.train.config import OutputCalibrationConfig

    src = train(cfg)
    slug = "".join(c if c.isalnum() else "_" for c in name)
    dest = Path(cfg.run_dir) / f"calibration_{slug}"
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(src, dest)
    assert cfg.bundle is not None
    cfg.bundle.output_calibration = OutputCalibrationConfig(**CALIBRATION_SETTINGS[name])
    calibrate_bundle(cfg, dest)
    out = score(cfg, dest, members, calibrate=True)
    out["table_roughness"] = table_roughness(dest)
    return out


def _score_set(cfg: Any) -> dict[str, float]:
    return score_regression(cfg, train(cfg))


def _seeded(configure: Callable[[int], Any], args: argparse.Namespace) -> list[dict[str, float]]:
    """A regression-only config trained and scored once per seed of ``--regression-seeds``."""
    out = []
    for seed in args.regression_seeds:
        cfg = configure(seed)
        out.append(_cached(cfg, functools.partial(_score_set, cfg)))
        print(
            f"{Path(cfg.run_dir).name}: RMSE {out[-1]['regression_rmse']:.3f}, "
            f"MAB {out[-1].get('regression_mab', float('nan')):.3f}",
            flush=True,
        )
    return out


def _seed_mean(seeds: list[dict[str, float]], key: str) -> float:
    return float(np.mean([s[key] for s in seeds]))


def _score_variant(cfg: Any, members: int) -> dict[str, float]:
    return score(cfg, train(cfg), members)


def _cached(
    cfg: Any, run: Callable[[], dict[str, float]], name: str = "scores.json"
) -> dict[str, float]:
    cache = Path(cfg.run_dir) / name
    if cache.is_file():
        return dict(json.loads(cache.read_text()))
    t0 = time.perf_counter()
    s = run()
    s["wall_s"] = time.perf_counter() - t0
    cache.write_text(json.dumps(s, indent=1))
    return s


def regression_steps_table(rows: list[tuple[int, list[dict[str, float]]]]) -> str:
    """The training-length table: seed means, the change's range over seeds, the choice."""
    lines = [
        "| regression steps | seeds | RMSE (2 deg, mm/day) | MAE | mean bias "
        "| RCP8.5 change of the DJF mean, regression: mean (range over seeds) "
        "| CNRM-CM5's own change |",
        "|---|---|---|---|---|---|---|",
    ]
    for steps, seeds in rows:
        m = functools.partial(_seed_mean, seeds)
        ch = [100 * s["rcp85_change_regression"] for s in seeds]
        lines.append(
            f"| {steps} | {len(seeds)} | {m('regression_rmse'):.3f} | "
            f"{m('regression_mae'):.3f} | {m('regression_bias'):+.3f} | "
            f"{np.mean(ch):+.1f} % ({min(ch):+.1f} to {max(ch):+.1f}) | "
            f"{100 * m('rcp85_change_esm_own'):+.1f} % |"
        )
    chosen = regression_steps_choice(rows)
    lines += ["", f"The training-length rule (`regression_steps_choice`) picks: **{chosen}**."]
    return "\n".join(lines)


def plot_regression_steps(
    rows: list[tuple[int, list[dict[str, float]]]], seeds: list[int], root: Path, path: Path
) -> Path:
    """Learning curves of the longest runs and inner-validation RMSE against training length.

    Left: training loss (mean of the last 50 steps, dropout on) and inner-validation
    loss (MSE, (mm/day)^2) of each seed's run with the most steps. Right: the
    inner-validation RMSE of every run (dots) and the seed mean (line).
    """
    from precipdiff.offline.evaluate.plots import _pyplot, _save
    from precipdiff.offline.train.loop import read_learning_curves

    plt = _pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    longest = rows[-1][0]
    for k, seed in enumerate(seeds):
        run = Path(regression_steps_config(longest, root, seed).run_dir)
        curves = read_learning_curves(run / "regression" / "metrics.csv")
        st, tl = zip(*curves["train"], strict=True)
        a.plot(st, tl, "C0", lw=1, alpha=0.7, label="training" if k == 0 else None)
        vs, vl = zip(*curves["val"], strict=True)
        a.plot(vs, vl, "C1o-", lw=1, ms=3, label="inner validation" if k == 0 else None)
    a.set_yscale("log")
    a.set_xlabel("optimiser step (batch 64; about 12.5 steps per epoch of the inner split)")
    a.set_ylabel("MSE, (mm/day)$^2$")
    a.set_title(f"regression, {longest} steps, {len(seeds)} seeds")
    a.legend()
    steps = [n for n, _ in rows]
    for n, sc in rows:
        b.plot([n] * len(sc), [x["regression_rmse"] for x in sc], "k.", alpha=0.5)
    b.plot(steps, [np.mean([x["regression_rmse"] for x in sc]) for _, sc in rows], "C1o-")
    b.set_xscale("log")
    b.set_xlabel("optimiser steps")
    b.set_ylabel("inner-validation RMSE, mm/day (2 deg)")
    b.set_title("training length")
    fig.tight_layout()
    return _save(fig, path)


def calibrated_table(rows: list[tuple[str, dict[str, float]]]) -> list[str]:
    """Rows of :func:`score_output_calibration` scores as a markdown table."""
    lines = [
        "| variant | CRPS | CRPS uncalibrated | spread-skill | p99 / E-OBS "
        "| wet days / E-OBS | 1-2 deg power / E-OBS | mean bias "
        "| RCP8.5 change: mean, q0.9, q0.99 (ESM own) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, c in rows:
        lines.append(
            f"| {name} | {c['crps']:.3f} | {c['uncalibrated_crps']:.3f} | "
            f"{c['spread_skill']:.2f} | {c['p99_ratio']:.2f} | {c['wet_ratio']:.2f} | "
            f"{c['band_ratio']:.2f} | {c['mean_bias']:+.2f} | "
            + ", ".join(
                f"{100 * c[f'change_{q}_calibrated']:+.1f} %" for q in ("mean", "q0.9", "q0.99")
            )
            + " ("
            + ", ".join(
                f"{100 * c[f'change_{q}_esm_own']:+.1f} %" for q in ("mean", "q0.9", "q0.99")
            )
            + ") |"
        )
    return lines


def regression_loss_table(rows: list[tuple[str, list[dict[str, float]]]]) -> str:
    """The loss table: seed means of the regression's scores, the choice."""
    lines = [
        "| regression loss | seeds | MAB of the DJF mean (2 deg, mm/day) | mean bias "
        "| MAE | RMSE | RCP8.5 change of the DJF mean, regression (CNRM-CM5's own) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, seeds in rows:
        m = functools.partial(_seed_mean, seeds)
        lines.append(
            f"| {name} | {len(seeds)} | {m('regression_mab'):.3f} | "
            f"{m('regression_bias'):+.3f} | {m('regression_mae'):.3f} | "
            f"{m('regression_rmse'):.3f} | {100 * m('rcp85_change_regression'):+.1f} % "
            f"({100 * m('rcp85_change_esm_own'):+.1f} %) |"
        )
    chosen = regression_loss_choice(rows)
    lines += ["", f"The loss rule (`regression_loss_choice`) picks: **{chosen}**."]
    return "\n".join(lines)


def rule_block(
    rows: list[tuple[str, dict[str, float]]], sweep: list[str], *, moisture: bool = False
) -> str:
    """A comparison's calibrated table and its rule's pick ("" if incomplete).

    The rule is :func:`sigma_c_choice`, or :func:`moisture_channel_choice` for
    ``moisture`` (rows: the shipped config, then the candidate).
    """
    if len(rows) != len(sweep):
        return ""
    if moisture:
        by = dict(rows)
        chosen = moisture_channel_choice(by[sweep[0]], by[sweep[1]], sweep[1])
        rule = "`moisture_channel_choice`"
    else:
        chosen = sigma_c_choice(rows, rows[0][1]["change_mean_esm_own"])
        rule = "`sigma_c_choice`, unchanged"
    return "\n".join(
        [
            *calibrated_table(rows),
            "",
            f"The rule ({rule}) picks: **{chosen}**.",
        ]
    )


def replace_block(text: str, name: str, body: str, cmd: str) -> str:
    """Replace the generated block ``<!-- name -->`` ... ``<!-- /name -->`` of ``text``."""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    if start not in text or end not in text:
        raise ValueError(f"selection.md has no {start} ... {end} block to replace")
    head, rest = text.split(start, 1)
    tail = rest.split(end, 1)[1]
    return f"{head}{start}\n{body}\n\nProduced by `{cmd}`.\n{end}{tail}"


def main() -> int:
    """Train and score the variants; print (and optionally write) the tables."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS))
    ap.add_argument("--predictor-sets", nargs="*", default=list(PREDICTOR_SETS))
    ap.add_argument(
        "--regression-steps",
        nargs="*",
        type=int,
        default=[],
        help=f"regression training lengths to compare (the sweep: {list(REGRESSION_STEPS)})",
    )
    ap.add_argument("--regression-seeds", nargs="*", type=int, default=list(REGRESSION_SEEDS))
    ap.add_argument(
        "--regression-losses",
        nargs="*",
        default=[],
        help=f"regression losses to compare (the comparison: {list(REGRESSION_LOSSES)})",
    )
    ap.add_argument("--members", type=int, default=8)
    ap.add_argument("--out", default=str(REPO / "out" / "selection"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument(
        "--output-calibration",
        action="store_true",
        help="also score the shipped variant with an output calibration (inner split)",
    )
    ap.add_argument(
        "--calibrated",
        nargs="*",
        default=[],
        help="variants also scored with an output calibration fitted on the inner "
        f"training winters (the sigma_c sweep: {SIGMA_C_SWEEP})",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    from precipdiff.testing import shared_data_dir

    if shared_data_dir() is None:
        print("SKIP: ../shared/data not found (set PRECIPDIFF_SHARED_DATA)")
        return 0
    for name, known in (
        (args.variants, VARIANTS),
        (args.predictor_sets, PREDICTOR_SETS),
        (args.calibrated, VARIANTS),
        (args.regression_losses, REGRESSION_LOSSES),
    ):
        bad = [n for n in name if n not in known]
        if bad:
            print(f"unknown {bad!r}; known: {list(known)}", file=sys.stderr)
            return 2
    root = Path(args.out)
    sets = []
    for name in args.predictor_sets:
        cfg = predictor_set_config(name, root)
        s = _cached(cfg, functools.partial(_score_set, cfg))
        sets.append((name, s))
        print(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in s.items()), flush=True)
    lengths = [
        (n, _seeded(lambda seed, n=n: regression_steps_config(n, root, seed), args))
        for n in args.regression_steps
    ]
    losses = [
        (n, _seeded(lambda seed, n=n: regression_loss_config(n, root, seed), args))
        for n in args.regression_losses
    ]
    rows = []
    for name in args.variants:
        cfg = variant_config(name, root)
        s = _cached(cfg, functools.partial(_score_variant, cfg, args.members))
        rows.append((name, s))
        print(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in s.items()), flush=True)
    calib = None
    if args.output_calibration:
        # its trained bundle, a calibrated copy beside it
        cfg = variant_config(CALIBRATION_BASE, root)
        calib = _cached(
            cfg,
            functools.partial(score_output_calibration, cfg, args.members),
            "scores_output_calibration.json",
        )
        print("output calibration: " + ", ".join(f"{k} {v:.3f}" for k, v in calib.items()))
        settings = []
        for name in CALIBRATION_SETTINGS:
            slug = "".join(c if c.isalnum() else "_" for c in name)
            sc = _cached(
                cfg,
                functools.partial(score_calibration_setting, cfg, name, args.members),
                f"scores_calibration_{slug}.json",
            )
            settings.append((name, sc))
            print(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in sc.items()), flush=True)
    calibrated = []
    for name in args.calibrated:
        cfg = variant_config(name, root)
        sc = _cached(
            cfg,
            functools.partial(score_output_calibration, cfg, args.members),
            "scores_output_calibration.json",
        )
        calibrated.append((name, sc))
        print(f"{name}, calibrated: " + ", ".join(f"{k} {v:.3f}" for k, v in sc.items()))
    lines = [
        "| predictor set | regression MAE (2 deg, mm/day) | regression mean bias "
        "| RCP8.5 change of the DJF mean, regression | CNRM-CM5's own change |",
        "|---|---|---|---|---|",
    ]
    for name, s in sets:
        lines.append(
            f"| {name} | {s['regression_mae']:.3f} | {s['regression_bias']:+.3f} | "
            f"{100 * s['rcp85_change_regression']:+.1f} % | "
            f"{100 * s['rcp85_change_esm_own']:+.1f} % |"
        )
    lines += (
        []
        if not rows
        else [
            "",
            "| variant | CRPS | CRPS / NCEP own | spread-skill | p99 / E-OBS | wet days / E-OBS "
            "| 1-2 deg power / E-OBS | mean bias | RCP8.5 change, regression (ESM own) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
    )
    for name, s in rows:
        lines.append(
            f"| {name} | {s['crps']:.3f} | {s['crps_ratio_to_ncep_own']:.3f} | "
            f"{s['spread_skill']:.2f} | {s['p99_ratio']:.2f} | {s['wet_ratio']:.2f} | "
            f"{s['band_ratio']:.2f} | {s['mean_bias']:+.2f} | "
            f"{100 * s['rcp85_change_regression']:+.1f} % "
            f"({100 * s['rcp85_change_esm_own']:+.1f} %) |"
        )
    if calib is not None:
        lines += [
            "",
            "Output calibration (the sigma_c 0.1 variant; calibration fitted on the inner training "
            "winters; the same members with and without it):",
            "",
            "| product | CRPS | CRPS / NCEP own | spread-skill | p99 / E-OBS | wet days / E-OBS "
            "| 1-2 deg power / E-OBS | mean bias | RCP8.5 change: mean, q0.9, q0.99 |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for label, pre, key in (
            ("without calibration", "uncalibrated_", "generated"),
            ("with calibration", "", "calibrated"),
        ):
            c = {k[len(pre) :]: v for k, v in calib.items() if k.startswith(pre)} if pre else calib
            lines.append(
                f"| {label} | {c['crps']:.3f} | {c['crps_ratio_to_ncep_own']:.3f} | "
                f"{c['spread_skill']:.2f} | {c['p99_ratio']:.2f} | {c['wet_ratio']:.2f} | "
                f"{c['band_ratio']:.2f} | {c['mean_bias']:+.2f} | "
                + ", ".join(
                    f"{100 * calib[f'change_{q}_{key}']:+.1f} %" for q in ("mean", "q0.9", "q0.99")
                )
                + " |"
            )
        lines.append(
            "| CNRM-CM5's own | | | | | | | | "
            + ", ".join(
                f"{100 * calib[f'change_{q}_esm_own']:+.1f} %" for q in ("mean", "q0.9", "q0.99")
            )
            + " |"
        )
    if calib is not None:
        lines += [
            "",
            "Output-calibration settings (the sigma_c 0.1 variant, calibrated; "
            "'table roughness': neighbour r.m.s. difference of log(factor) at the median node):",
            "",
            "| setting | CRPS | spread-skill | p99 / E-OBS | wet days / E-OBS "
            "| 1-2 deg power / E-OBS | mean bias | table roughness |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, c in settings:
            lines.append(
                f"| {name} | {c['crps']:.3f} | {c['spread_skill']:.2f} | {c['p99_ratio']:.3f} | "
                f"{c['wet_ratio']:.2f} | {c['band_ratio']:.2f} | {c['mean_bias']:+.2f} | "
                f"{c['table_roughness']:.3f} |"
            )
    in_comparison = {n for sweep, _ in CALIBRATED_COMPARISONS for n in sweep}
    others = [n for n, _ in calibrated if n not in in_comparison]
    if others:
        lines += [
            "",
            "Condition noise sigma_c, each value output-calibrated as shipped (calibration "
            "fitted on the inner training winters; uncalibrated CRPS and the generated "
            "RCP8.5 change of the calibrated members beside):",
            "",
            *calibrated_table([(n, c) for n, c in calibrated if n in others]),
        ]
        swept = [(n, c) for n, c in calibrated if n in SIGMA_C_SWEEP]
        if swept:
            chosen = sigma_c_choice(swept, swept[0][1]["change_mean_esm_own"])
            lines += ["", f"The sigma_c rule (`sigma_c_choice`) picks: **{chosen}**."]
    steps_table = regression_steps_table(lengths) if lengths else ""
    if steps_table:
        print(steps_table)
    loss_table = regression_loss_table(losses) if losses else ""
    if loss_table:
        print(loss_table)
    table = "\n".join(lines)
    if sets or rows or calib is not None or others:
        print(table)
    cmd = shlex.join(["scripts/iberia_selection.py", *sys.argv[1:]])
    if args.write_docs and steps_table:
        path = REPO / "docs" / "results" / "iberia" / "selection.md"
        path.write_text(replace_block(path.read_text(), "regression steps", steps_table, cmd))
        plot_regression_steps(
            lengths, args.regression_seeds, root, path.parent / "regression_training_length.png"
        )
    # the comparisons scored output-calibrated under sigma_c_choice's rule, each with its
    # own block of selection.md (written when every variant of it was scored)
    steps_d_body = ""
    for sweep, block in CALIBRATED_COMPARISONS:
        body = rule_block(
            [(n, c) for n, c in calibrated if n in sweep],
            sweep,
            moisture=sweep in (MOISTURE_SWEEP, MOISTURE_ONLY_SWEEP),
        )
        if not body:
            continue
        print(body)
        if block == "denoiser steps":
            steps_d_body = body
        if args.write_docs:
            path = REPO / "docs" / "results" / "iberia" / "selection.md"
            path.write_text(replace_block(path.read_text(), block, body, cmd))
    shipped = [(n, c) for n, c in calibrated if n == "shipped"]
    if shipped:
        print("\n".join(calibrated_table(shipped)))
    if args.write_docs and shipped and steps_d_body:
        # the shipped config's whole pipeline: its own block, beside the design tables,
        # from the same run as the denoiser-length table (which has it as a row)
        path = REPO / "docs" / "results" / "iberia" / "selection.md"
        body = "\n".join(calibrated_table(shipped))
        path.write_text(replace_block(path.read_text(), "shipped calibrated", body, cmd))
    if args.write_docs and loss_table:
        path = REPO / "docs" / "results" / "iberia" / "selection.md"
        path.write_text(replace_block(path.read_text(), "regression loss", loss_table, cmd))
    if args.write_docs and (sets or rows or calib is not None or others):
        path = REPO / "docs" / "results" / "iberia" / "selection.md"
        text = (path.read_text().split("<!-- table -->")[0] if path.is_file() else "") or (
            "# Design choices for the Iberia demo, on training winters only\n\n"
        )
        path.write_text(text + "<!-- table -->\n" + table + f"\n\nProduced by `{cmd}`.\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
