"""Assemble the two trained stages into a model bundle and score it.

``precipdiff train bundle CONFIG`` loads the best (EMA) weights of
``run_dir/regression`` and ``run_dir/diffusion``, writes the bundle with
:func:`precipdiff.bundle.save_bundle` (safetensors + JSON manifest with the
variables, grids, training-split normalisation, transform, ``sigma_c``,
sampler defaults and provenance), and -- unless ``bundle.evaluate`` is off --
scores it on the validation splits (:mod:`precipdiff.offline.train.evaluation`),
writing ``evaluation.json`` and figures next to the weights.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from precipdiff.bundle import default_sampler, load_bundle, manifest_from_networks, save_bundle
from precipdiff.diffusion.edm import EDMPrecond
from precipdiff.diffusion.samplers import SamplerConfig
from precipdiff.errors import ConfigError
from precipdiff.grids import LatLonGrid
from precipdiff.nn.unet import UNet, UNetConfig
from precipdiff.offline.train.config import TrainConfig, to_dict
from precipdiff.offline.train.data import Stats
from precipdiff.offline.train.regression import stage_dir
from precipdiff.offline.train.store_data import open_stage_data
from precipdiff.statics import COMPUTED_STATICS
from precipdiff.transforms import PrecipTransform
from precipdiff.variables import get_variable


def _stage_meta(cfg: TrainConfig, name: str) -> tuple[dict[str, Any], Path]:
    d = stage_dir(cfg, name)
    meta_path, best = d / "stats.json", d / "best.safetensors"
    if not meta_path.exists() or not best.exists():
        raise ConfigError(
            f"no trained {name} stage in {d} (missing stats.json or best.safetensors): "
            f"run `precipdiff train {name} CONFIG` first"
        )
    return json.loads(meta_path.read_text()), best


def load_trained(cfg: TrainConfig) -> tuple[UNet, EDMPrecond, dict[str, Any], dict[str, Any]]:
    """Load the best EMA weights of both stages.

    Parameters
    ----------
    cfg
        The experiment configuration.

    Returns
    -------
    tuple
        Regression UNet, EDM denoiser, and the two stages' ``stats.json`` contents.
    """
    if cfg.regression is None or cfg.diffusion is None:
        raise ConfigError("a bundle needs both a 'regression' and a 'diffusion' section")
    reg_meta, reg_w = _stage_meta(cfg, "regression")
    den_meta, den_w = _stage_meta(cfg, "diffusion")
    reg = UNetConfig.from_dict(reg_meta["unet"]).build()
    reg.load_state_dict(load_file(reg_w), strict=True)
    den_cfg = UNetConfig.from_dict(den_meta["unet"])
    den = EDMPrecond(den_cfg.build(), sigma_data=cfg.diffusion.sigma_data)
    den.load_state_dict(load_file(den_w), strict=True)
    if cfg.bundle is not None and cfg.bundle.denoiser_periodic_lon is not None:
        # Padding mode only: the parameters are identical.
        net = UNet(dataclasses.replace(den_cfg, periodic_lon=cfg.bundle.denoiser_periodic_lon))
        net.load_state_dict(den.net.state_dict(), strict=True)
        den = EDMPrecond(net, sigma_data=cfg.diffusion.sigma_data)
    reg.eval()
    den.eval()
    return reg, den, reg_meta, den_meta


def bundle_sampler(cfg: TrainConfig) -> SamplerConfig:
    """Return the default sampler a config gives its bundle.

    Parameters
    ----------
    cfg
        The experiment configuration (with a ``bundle`` section).

    Returns
    -------
    SamplerConfig
        ``bundle.sampler``, or :func:`precipdiff.bundle.default_sampler` when empty.
    """
    assert cfg.bundle is not None
    return SamplerConfig.from_dict(cfg.bundle.sampler) if cfg.bundle.sampler else default_sampler()


def _derived(features: list[dict[str, Any]] | None, names: list[str]) -> bool:
    """Whether the features differ from "the variables, in order" (else not recorded)."""
    if features is None:
        return False
    plain = [{"name": n, "op": "identity", "inputs": [n], "pressure_pa": None} for n in names]
    return features != plain


def build_bundle(cfg: TrainConfig, out: str | None = None) -> Path:
    """Write the bundle of a trained experiment (and its evaluation).

    Parameters
    ----------
    cfg
        The experiment configuration (needs ``bundle``).
    out
        Output directory overriding ``bundle.out``.

    Returns
    -------
    pathlib.Path
        The bundle directory.
    """
    if cfg.bundle is None:
        raise ConfigError("the config has no 'bundle' section")
    assert cfg.regression is not None and cfg.diffusion is not None
    reg, den, reg_meta, den_meta = load_trained(cfg)
    reg_stats = Stats.from_dict(reg_meta["stats"])
    den_stats = Stats.from_dict(den_meta["stats"])
    if (den_stats.target_mean, den_stats.target_std) != (
        reg_stats.target_mean,
        reg_stats.target_std,
    ):
        raise ConfigError(
            "the diffusion stage was trained with a different precipitation normalisation "
            "than the regression (retrain the diffusion stage after the regression)"
        )
    names = reg_meta["predictors"]
    variables = [get_variable(n).to_dict() for n in names]
    features = reg_meta.get("features")
    feature_names = [f["name"] for f in features] if features is not None else names
    den_cond = den_meta.get("condition", {"source": "truth", "predictors": False, "statics": []})
    static_names = list(den_cond.get("statics", []))
    cond_feature_names = [
        str(f["name"]) for f in den_cond.get("features", []) if f["name"] not in feature_names
    ]
    statics: dict[str, np.ndarray] = {}
    stored = [n for n in static_names if n not in COMPUTED_STATICS]
    if stored:
        with np.load(stage_dir(cfg, "diffusion") / "statics.npz") as z:
            statics = {f"fine/{n}": np.asarray(z[n], np.float32) for n in stored}
    coarse = LatLonGrid.from_dict(reg_meta["coarse_grid"])
    if cfg.bundle.fine_grid is not None:
        fine = LatLonGrid.regular(**cfg.bundle.fine_grid)
    else:
        fine = LatLonGrid.from_dict(den_meta["fine_grid"])
    data_desc = {
        "regression": {
            "predictors": [to_dict(p) for p in cfg.regression.data.predictors],
            "target": to_dict(cfg.regression.data.target),
            "train_period": reg_meta["train_period"],
            "validation_period": reg_meta["validation_period"],
            "n_train": reg_meta["n_train"],
            "n_validation": reg_meta["n_validation"],
            "crop": [cfg.regression.data.crop_lat, cfg.regression.data.crop_lon],
            "coarsen_factor": cfg.regression.data.coarsen_factor,
        },
        "diffusion": {
            "target": to_dict(cfg.diffusion.data.target),
            "train_period": den_meta["train_period"],
            "validation_period": den_meta["validation_period"],
            "n_train": den_meta["n_train"],
            "n_validation": den_meta["n_validation"],
            "crop": [cfg.diffusion.data.crop_lat, cfg.diffusion.data.crop_lon],
            "coarsen_factor": cfg.diffusion.data.coarsen_factor,
            "patch_size": cfg.diffusion.patch_size,
            "trained_fine_grid_shape": LatLonGrid.from_dict(den_meta["fine_grid"]).shape,
        },
    }
    manifest = manifest_from_networks(
        variables=variables,
        coarse_grid=coarse,
        fine_grid=fine,
        predictor_stats={
            **{n: (reg_stats.predictor_mean[n], reg_stats.predictor_std[n]) for n in feature_names},
            # the denoiser's own feature channels: normalised by the diffusion stage
            **{
                n: (den_stats.predictor_mean[n], den_stats.predictor_std[n])
                for n in cond_feature_names
            },
        },
        precip_stats=(reg_stats.target_mean, reg_stats.target_std),
        regression=reg,
        denoiser=den,
        sigma_c=cfg.diffusion.sigma_c,
        transform=PrecipTransform.from_dict(cfg.transform),
        sampler=bundle_sampler(cfg),
        static_fields={"coarse": [], "fine": static_names},
        features=features if _derived(features, names) else None,
        condition={
            "source": den_cond["source"],
            "predictors": bool(den_cond["predictors"]),
            # written only when set, so that bundles without it stay readable by
            # earlier versions of format 3
            **({"residual": True} if den_cond.get("residual") else {}),
            **({"features": den_cond["features"]} if den_cond.get("features") else {}),
        },
        provenance={
            "name": cfg.bundle.name,
            "description": cfg.bundle.description,
            "notes": cfg.bundle.notes,
            "data": data_desc,
            "training_config": to_dict(cfg),
            "seed": cfg.seed,
        },
    )
    dest = Path(out if out is not None else cfg.bundle.out)
    if not dest.is_absolute() and cfg.source_dir is not None and out is None:
        dest = Path.cwd() / dest
    # save_bundle replaces the directory: keep hand-written documents (the model card).
    kept = {p.name: p.read_text() for p in dest.glob("*.md")} if dest.is_dir() else {}
    save_bundle(dest, manifest, reg, den, statics=statics or None, overwrite=True)
    for name, text in kept.items():
        (dest / name).write_text(text)
    if cfg.bundle.evaluate:
        evaluate_bundle(cfg, dest)
    return dest


def evaluate_bundle(cfg: TrainConfig, dest: Path) -> dict[str, Any]:
    """Score a written bundle on the validation splits; write JSON and figures.

    Parameters
    ----------
    cfg
        The experiment configuration.
    dest
        The bundle directory.

    Returns
    -------
    dict
        The scores (also in ``dest/evaluation.json``).
    """
    from precipdiff.offline.train.evaluation import (
        evaluate_diffusion_given_truth,
        evaluate_pipeline,
        evaluate_regression,
        evaluation_markdown,
        plot_evaluation,
        write_json,
    )

    assert cfg.bundle is not None and cfg.regression is not None and cfg.diffusion is not None
    torch.manual_seed(cfg.seed)
    bundle = load_bundle(dest, "cpu")
    transform = PrecipTransform.from_dict(cfg.transform)
    try:
        reg_meta, _ = _stage_meta(cfg, "regression")
        stats = Stats.from_dict(reg_meta["stats"])
    except ConfigError:
        # No run directory (e.g. re-evaluating a shipped bundle): the statistics the
        # networks were trained with are the manifest's normalisation.
        norm = bundle.manifest.normalisation
        # keyed by the network's input channels (derived features, e.g. rh850)
        names = [f.name for f in bundle.manifest.feature_specs()]
        stats = Stats(
            predictor_mean={n: float(norm["predictors"][n]["mean"]) for n in names},
            predictor_std={n: float(norm["predictors"][n]["std"]) for n in names},
            target_mean=float(norm["precip"]["mean"]),
            target_std=float(norm["precip"]["std"]),
            n_train=int(
                bundle.manifest.provenance.get("data", {}).get("regression", {}).get("n_train", 0)
            ),
        )
    reg_data = open_stage_data(cfg.regression.data, transform, base=cfg.source_dir, stats=stats)
    from precipdiff.offline.train.diffusion import diffusion_data_config

    den_data = open_stage_data(
        diffusion_data_config(cfg), transform, base=cfg.source_dir, stats=stats
    )
    n_max = cfg.bundle.max_eval_samples
    m = cfg.bundle.members
    scores: dict[str, Any] = {"members": m, "sampler": bundle.manifest.sampler}
    scores["regression"], reg_arrays = evaluate_regression(bundle, reg_data, n_max)
    scores["diffusion_given_truth"], truth_arrays = evaluate_diffusion_given_truth(
        bundle, den_data, m, n_max, seed=cfg.seed
    )
    fine_arrays = truth_arrays
    same = reg_data.fine_grid == bundle.fine_grid and to_dict(
        cfg.regression.data.target
    ) == to_dict(cfg.diffusion.data.target)
    if same:
        scores["pipeline"], fine_arrays = evaluate_pipeline(
            bundle, reg_data, m, n_max, seed=cfg.seed
        )
    figure_grid = bundle.fine_grid if same else den_data.fine_grid
    # the bundle's own name (a distilled student of the config's bundle has its own)
    title = str(bundle.manifest.provenance.get("name") or cfg.bundle.name)
    scores["figures"] = plot_evaluation(
        dest / "figures",
        reg_arrays,
        fine_arrays,
        figure_grid,
        title,
        caveat=cfg.bundle.notes,  # e.g. "not skilful": in the figure, not only in the card
    )
    write_json(dest / "evaluation.json", scores)
    (dest / "EVALUATION.md").write_text(evaluation_markdown(scores, title))
    return scores


#: Most network evaluations per member a shipped bundle's default sampler may cost.
MAX_DEFAULT_NFE = 8


def set_default_sampler(
    path: str | Path, sampler: dict[str, Any], reason: str, max_nfe: int = MAX_DEFAULT_NFE
) -> dict[str, Any]:
    """Change a bundle's default sampler without touching its weights.

    The weight files (and so their sha256 entries in the manifest) are unchanged;
    the manifest is rewritten atomically with the new ``sampler`` block and a
    ``provenance.sampler_changes`` entry (previous settings and ``reason``). The
    bundle is loaded afterwards, which re-verifies every weight file's sha256.

    Parameters
    ----------
    path
        The bundle directory.
    sampler
        Keyword arguments of :class:`precipdiff.diffusion.samplers.SamplerConfig`.
    reason
        Why (recorded in the provenance).
    max_nfe
        Refuse a default costing more network evaluations per member.

    Returns
    -------
    dict
        The new manifest ``sampler`` block.
    """
    from precipdiff.bundle import read_manifest, write_manifest

    config = SamplerConfig.from_dict(sampler)
    if config.nfe > max_nfe:
        raise ConfigError(
            f"default sampler {sampler} costs {config.nfe} network evaluations per member; "
            f"at most {max_nfe} allowed"
        )
    manifest = read_manifest(path)
    new_block = config.to_dict()
    changes = list(manifest.provenance.get("sampler_changes", []))
    changes.append({"previous": manifest.sampler, "new": new_block, "reason": reason})
    provenance = {**manifest.provenance, "sampler_changes": changes}
    manifest = dataclasses.replace(manifest, sampler=new_block, provenance=provenance)
    write_manifest(path, manifest)
    load_bundle(path, "cpu")  # verifies the weights' sha256 against the manifest
    return new_block
