"""Validation-split evaluation of a trained bundle against simple baselines.

All scores come from :mod:`precipdiff.offline.metrics`. Three comparisons:

* **regression** (coarse grid, regression validation split): MAE and mean bias
  of the regression against a per-cell climatology of the training split and a
  per-cell linear regression on the same (normalised) predictors, fitted on the
  training split by least squares;
* **diffusion given the true coarse field** (fine grid, diffusion validation
  split): ensemble CRPS of members conditioned on the block mean of the
  observations versus the deterministic bilinear upsampling of that block mean
  (whose CRPS is its MAE) -- isolates the downscaling stage;
* **full pipeline** (only when both stages share the target and fine grid, as
  in the Iberia demo): predictors -> regression -> ensemble, versus the
  upsampled regression, plus wet-day frequency, p99 and spatial spectra against
  the observations, with figures.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from precipdiff.bundle import Bundle
from precipdiff.offline import metrics
from precipdiff.offline.train.data import StageData


def _training_coarse(data: StageData, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Normalised predictors and coarse target (mm/day) of the training split."""
    xs, ys = [], []
    tr = data.split.train
    for s in range(0, tr.size, chunk):
        raw = data.read(tr[s : s + chunk])
        xs.append(data.normalise_predictors(raw))
        ys.append(raw["coarse"])
    return np.concatenate(xs), np.concatenate(ys)


def fit_linear_baseline(x: np.ndarray, y: np.ndarray, ridge: float = 1e-6) -> np.ndarray:
    """Per-cell least-squares fit ``y = b0 + sum_c b_c x_c`` ignoring missing targets.

    Parameters
    ----------
    x
        ``(time, C, lat, lon)`` normalised predictors.
    y
        ``(time, lat, lon)`` target (NaN = missing).
    ridge
        Tiny diagonal load for cells with (nearly) collinear predictors.

    Returns
    -------
    numpy.ndarray
        ``(C + 1, lat, lon)`` coefficients (intercept first).
    """
    t, c, h, w = x.shape
    a = np.concatenate([np.ones((t, 1, h, w)), x], axis=1).astype(np.float64)
    valid = np.isfinite(y)
    a = a * valid[:, None]
    yy = np.where(valid, y, 0.0).astype(np.float64)
    ata = np.einsum("tihw,tjhw->hwij", a, a) + ridge * np.eye(c + 1)
    aty = np.einsum("tihw,thw->hwi", a, yy)
    coef = np.linalg.solve(ata, aty[..., None])[..., 0]
    return np.moveaxis(coef, -1, 0)


def predict_linear_baseline(coef: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Apply :func:`fit_linear_baseline` coefficients (clipped at 0 mm/day).

    Parameters
    ----------
    coef
        ``(C + 1, lat, lon)``.
    x
        ``(time, C, lat, lon)``.

    Returns
    -------
    numpy.ndarray
        ``(time, lat, lon)``.
    """
    return np.maximum(coef[0] + np.einsum("chw,tchw->thw", coef[1:], x), 0.0)


def evaluate_regression(
    bundle: Bundle, data: StageData, max_samples: int = 0
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Score the regression on its validation split against two baselines.

    Parameters
    ----------
    bundle
        The loaded bundle.
    data
        The regression stage data (same statistics as the bundle).
    max_samples
        Cap on validation samples (0: all).

    Returns
    -------
    tuple
        Scores and the arrays (``pred``, ``obs``, ``clim``, ``linear``; mm/day).
    """
    from precipdiff.generator import PrecipGenerator

    gen = PrecipGenerator(bundle, use_compiled=False)
    val = data.split.validation
    if max_samples:
        val = val[:max_samples]
    raw = data.read(val)
    obs = raw["coarse"]
    pred = gen.to_precip(gen.regress({p.source.name: raw[p.source.name] for p in data.predictors}))
    x_tr, y_tr = _training_coarse(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # cells that are always missing (sea)
        clim = np.broadcast_to(np.nanmean(y_tr, axis=0), obs.shape)
    coef = fit_linear_baseline(x_tr, y_tr)
    linear = predict_linear_baseline(coef, data.normalise_predictors(raw))
    grid = data.coarse_grid
    scores: dict[str, Any] = {"n_validation": int(val.size), "grid": list(grid.shape)}
    for name, arr in (("regression", pred), ("climatology", clim), ("linear", linear)):
        scores[name] = {
            "mae": metrics.mae(arr, obs, grid),
            "mean_bias": metrics.mean_bias(arr, obs, grid),
            "mean_absolute_bias": metrics.mean_absolute_bias(arr, obs, grid),
        }
    scores["beats_climatology"] = scores["regression"]["mae"] < scores["climatology"]["mae"]
    scores["beats_linear"] = scores["regression"]["mae"] < scores["linear"]["mae"]
    arrays = {"pred": pred, "obs": obs, "clim": np.asarray(clim), "linear": linear}
    return scores, arrays


def _fine_scores(ens: np.ndarray, det: np.ndarray, obs: np.ndarray) -> dict[str, Any]:
    crps_ens = float(np.nanmean(metrics.crps_ensemble(ens, obs)))
    crps_det = float(np.nanmean(np.abs(det - obs)))
    # Spread-skill: mean ensemble spread over the RMSE of the ensemble mean (1 = calibrated).
    spread_skill = float(metrics.spread_skill(ens, obs).ratio) if ens.shape[1] > 1 else float("nan")
    return {
        "spread_skill_ratio": spread_skill,
        "crps_ensemble": crps_ens,
        "crps_upsampled": crps_det,
        "crps_skill_vs_upsampled": 1.0 - crps_ens / crps_det,
        "beats_upsampled": crps_ens < crps_det,
        "mae_ensemble_mean": metrics.mae(ens, obs),
        "mae_upsampled": metrics.mae(det, obs),
        "mean_bias_ensemble": metrics.mean_bias(ens, obs),
        "mean_bias_upsampled": metrics.mean_bias(det, obs),
        "wet_day_frequency": {
            "observed": float(np.nanmean(metrics.wet_day_frequency(obs))),
            "ensemble": float(
                np.nanmean(
                    metrics.wet_day_frequency(np.where(np.isfinite(obs)[:, None], ens, np.nan))
                )
            ),
            "upsampled": float(
                np.nanmean(metrics.wet_day_frequency(np.where(np.isfinite(obs), det, np.nan)))
            ),
        },
        "p99": {
            "observed": float(metrics.quantiles(obs, (0.99,))[0]),
            "ensemble": float(
                metrics.quantiles(np.where(np.isfinite(obs)[:, None], ens, np.nan), (0.99,))[0]
            ),
            "upsampled": float(
                metrics.quantiles(np.where(np.isfinite(obs), det, np.nan), (0.99,))[0]
            ),
        },
    }


def evaluate_diffusion_given_truth(
    bundle: Bundle, data: StageData, members: int, max_samples: int = 0, seed: int = 0
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Score the denoiser conditioned on the observations' block mean (an oracle coarse field).

    Parameters
    ----------
    bundle
        The loaded bundle.
    data
        The diffusion stage data (same statistics as the bundle).
    members
        Ensemble size.
    max_samples
        Cap on validation samples (0: all).
    seed
        Sampling seed.

    Returns
    -------
    tuple
        Scores and arrays (``ens``, ``det``, ``obs``; mm/day).
    """
    from precipdiff.generator import PrecipGenerator

    gen = PrecipGenerator(bundle, use_compiled=False)
    val = data.split.validation
    if max_samples:
        val = val[:max_samples]
    raw = data.read(val)
    obs = raw["fine"]
    c, cm = data.normalise_target(raw["coarse"])
    c = np.where(cm > 0, c, 0.0).astype(np.float32)
    # the denoiser's other inputs as at run time: the features when it is conditioned on them
    # (normalised with the bundle's statistics, on the data's coarse grid)
    x_feat = (
        gen.features_from_coarse(
            {p.source.name: raw[p.source.name] for p in data.predictors}, "condition"
        )
        if bundle.manifest.condition["predictors"]
        else None
    )
    # the denoiser on the data's own fine grid (which may differ from the bundle's, e.g.
    # the patch region a global bundle's denoiser was trained on)
    same_grid = data.fine_grid == gen.fine_grid and data.coarse_grid == gen.coarse_grid
    z = gen.sample_fine(
        c, x_feat, members=members, seed=seed, upsampler=None if same_grid else data.upsampler
    )
    ens = data.denormalise_target(z)
    coarse_mm = np.where(cm > 0, raw["coarse"], data.denormalise_target(np.zeros_like(c)))
    det = np.asarray(data.upsampler(coarse_mm.astype(np.float32)), np.float32)
    scores = {"n_validation": int(val.size), "members": members, **_fine_scores(ens, det, obs)}
    return scores, {"ens": ens, "det": det, "obs": obs}


def evaluate_pipeline(
    bundle: Bundle, data: StageData, members: int, max_samples: int = 0, seed: int = 0
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Score the full pipeline (predictors -> regression -> ensemble) on the fine grid.

    Parameters
    ----------
    bundle
        The loaded bundle.
    data
        The regression stage data (predictors and fine target on the bundle's fine grid).
    members
        Ensemble size.
    max_samples
        Cap on validation samples (0: all).
    seed
        Sampling seed.

    Returns
    -------
    tuple
        Scores and arrays (``ens``, ``det`` (upsampled regression), ``obs``; mm/day).
    """
    from precipdiff.generator import PrecipGenerator

    gen = PrecipGenerator(bundle, use_compiled=False, member_batch=members)
    val = data.split.validation
    if max_samples:
        val = val[:max_samples]
    raw = data.read(val)
    obs = raw["fine"]
    res = gen.generate(
        {p.source.name: raw[p.source.name] for p in data.predictors}, members=members, seed=seed
    )
    det = np.asarray(data.upsampler(res.coarse), np.float32)
    scores = {"n_validation": int(val.size), "members": members, **_fine_scores(res.fine, det, obs)}
    return scores, {"ens": res.fine, "det": det, "obs": obs}


def plot_evaluation(
    out: Path,
    reg: dict[str, np.ndarray],
    fine: dict[str, np.ndarray],
    fine_grid: Any,
    title: str,
    caveat: str = "",
) -> list[str]:
    """Write the model-card figures (PNG) and return their file names.

    Parameters
    ----------
    out
        Directory for the figures.
    reg
        Arrays of :func:`evaluate_regression`.
    fine
        Arrays of :func:`evaluate_pipeline` or :func:`evaluate_diffusion_given_truth`.
    fine_grid
        The fine grid (for spacing and extent).
    title
        Figure title prefix.
    caveat
        What a reader must know about the model (e.g. "not skilful: trained on 20
        snapshots"), written into every figure's title so it travels with the figure.

    Returns
    -------
    list of str
        File names written.
    """
    with warnings.catch_warnings():
        # Sea cells are NaN in every field: their means are NaN by design.
        warnings.simplefilter("ignore", RuntimeWarning)
        return _plot(out, reg, fine, fine_grid, title, caveat)


def _plot(
    out: Path,
    reg: dict[str, np.ndarray],
    fine: dict[str, np.ndarray],
    fine_grid: Any,
    title: str,
    caveat: str = "",
) -> list[str]:
    import matplotlib

    from precipdiff.offline.evaluate.plots import label_map_axes, log_axes

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    names = []
    obs, ens, det = fine["obs"], fine["ens"], fine["det"]
    land = np.isfinite(obs)
    ens_m = np.where(land[:, None], ens, np.nan)
    det_m = np.where(land, det, np.nan)

    # 1. Maps: observed mean, ensemble-mean bias, upsampled-regression bias, member example.
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5), constrained_layout=True)
    ext = [fine_grid.lon.min(), fine_grid.lon.max(), fine_grid.lat.min(), fine_grid.lat.max()]
    lat_desc = fine_grid.lat[0] > fine_grid.lat[-1]
    origin = "upper" if lat_desc else "lower"
    mean_obs = np.nanmean(obs, axis=0)
    vmax = float(np.nanmax(mean_obs))
    panels = [
        (mean_obs, "observed mean (mm/day)", "viridis", 0.0, vmax),
        (np.nanmean(ens_m, axis=(0, 1)), "ensemble mean (mm/day)", "viridis", 0.0, vmax),
        (np.nanmean(det_m, axis=0), "upsampled regression mean (mm/day)", "viridis", 0.0, vmax),
    ]
    bias_e = np.nanmean(ens_m, axis=(0, 1)) - mean_obs
    bias_d = np.nanmean(det_m, axis=0) - mean_obs
    bmax = float(np.nanmax(np.abs(np.concatenate([bias_e.ravel(), bias_d.ravel()])))) or 1.0
    panels += [
        (bias_e, "ensemble mean bias (mm/day)", "RdBu", -bmax, bmax),
        (bias_d, "upsampled regression bias (mm/day)", "RdBu", -bmax, bmax),
    ]
    wettest = int(np.nanargmax(np.nanmean(obs, axis=(1, 2))))
    for i, (ax, (arr, label, cmap, lo, hi)) in enumerate(zip(axes.flat, panels, strict=False)):
        im = ax.imshow(arr, extent=ext, origin=origin, cmap=cmap, vmin=lo, vmax=hi)
        ax.set_title(label, fontsize=9)
        label_map_axes(ax, ylabel=i % 3 == 0)
        fig.colorbar(im, ax=ax, shrink=0.8)
    ax = axes.flat[5]
    im = ax.imshow(ens_m[wettest, 0], extent=ext, origin=origin, cmap="Blues")
    ax.set_title(
        f"member 0, wettest validation day (obs max {np.nanmax(obs[wettest]):.0f})", fontsize=9
    )
    label_map_axes(ax, ylabel=False)
    fig.colorbar(im, ax=ax, shrink=0.8)
    suptitle = f"{title}: validation split" + (f"\n{caveat}" if caveat else "")
    fig.suptitle(suptitle, fontsize=10)
    fig.savefig(out / "maps.png", dpi=80)
    plt.close(fig)
    names.append("maps.png")

    # 2. Distributions and spectra.
    fig, axes = plt.subplots(1, 3, figsize=(14, 4), constrained_layout=True)
    ax = axes[0]
    bins = np.linspace(0, float(np.nanquantile(obs, 0.999)) * 1.2 + 1e-6, 40)
    for arr, label in ((obs, "observed"), (ens_m, "ensemble"), (det_m, "upsampled regression")):
        v = arr[np.isfinite(arr)]
        ax.hist(v, bins=bins, histtype="step", density=True, label=label, log=True)
    ax.set_xlabel("mm/day")
    ax.set_title("distribution (land cells)")
    ax.legend(fontsize=8)
    ax = axes[1]
    dx = float(abs(fine_grid.lon[1] - fine_grid.lon[0]))
    for arr, label in ((obs, "observed"), (ens, "ensemble"), (det, "upsampled regression")):
        k, p = metrics.power_spectrum_radial(arr, dx=dx)
        ax.loglog(k, p, label=label)
    log_axes(ax)
    ax.set_xlabel("wavenumber (cycles/degree)")
    ax.set_title("radial power spectrum")
    ax.legend(fontsize=8)
    ax = axes[2]
    pred, robs, clim, lin = reg["pred"], reg["obs"], reg["clim"], reg["linear"]
    maes = [metrics.mae(a, robs) for a in (pred, lin, clim)]
    ax.bar(["regression", "linear", "climatology"], maes, color=["C0", "C1", "C2"])
    ax.set_ylabel("MAE (mm/day), coarse grid")
    ax.set_title("regression vs baselines")
    fig.suptitle(suptitle, fontsize=10)
    fig.savefig(out / "distributions_spectra.png", dpi=80)
    plt.close(fig)
    names.append("distributions_spectra.png")
    return names


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON (numpy scalars converted).

    Parameters
    ----------
    path
        The file.
    data
        The scores.
    """

    def conv(o: Any) -> Any:
        if isinstance(o, np.generic):
            return o.item()
        raise TypeError(f"not JSON serialisable: {type(o)}")

    path.write_text(json.dumps(data, indent=1, default=conv))


def evaluation_markdown(scores: dict[str, Any], title: str) -> str:
    """Render the scores as the Markdown tables included in a model card.

    Parameters
    ----------
    scores
        Output of :func:`precipdiff.offline.train.bundle.evaluate_bundle`.
    title
        Heading.

    Returns
    -------
    str
        Markdown text.
    """
    lines = [
        f"# {title}: validation-split evaluation",
        "",
        "Written by `precipdiff train bundle` (`precipdiff.offline.train.evaluation`, scores from",
        "`precipdiff.offline.metrics`); mm/day. Do not edit: rerun the command.",
        "",
    ]
    reg = scores["regression"]
    lines += [
        f"## Regression (coarse grid {reg['grid'][0]}x{reg['grid'][1]}, "
        f"{reg['n_validation']} validation samples)",
        "",
        "| model | MAE | mean bias | mean absolute bias |",
        "|---|---|---|---|",
    ]
    for k in ("regression", "linear", "climatology"):
        r = reg[k]
        lines.append(
            f"| {k} | {r['mae']:.3f} | {r['mean_bias']:+.3f} | {r['mean_absolute_bias']:.3f} |"
        )
    lines += [
        "",
        f"Regression beats climatology on MAE: **{reg['beats_climatology']}**; "
        f"beats the linear regression on MAE: **{reg['beats_linear']}**.",
        "",
    ]
    for key, label in (
        ("pipeline", "Full pipeline: predictors -> regression -> ensemble (fine grid)"),
        ("diffusion_given_truth", "Diffusion given the observed block mean (fine grid)"),
    ):
        if key not in scores:
            continue
        f = scores[key]
        wet = f["wet_day_frequency"]
        lines += [
            f"## {label}",
            "",
            f"{f['n_validation']} validation samples, {f['members']} members.",
            "",
            "| | ensemble | upsampled (deterministic) | observed |",
            "|---|---|---|---|",
            f"| CRPS | {f['crps_ensemble']:.3f} | {f['crps_upsampled']:.3f} | |",
            f"| MAE (ensemble mean) | {f['mae_ensemble_mean']:.3f} | {f['mae_upsampled']:.3f} | |",
            f"| mean bias | {f['mean_bias_ensemble']:+.3f} | {f['mean_bias_upsampled']:+.3f} | |",
            f"| wet-day frequency (>= 1 mm/day) | {wet['ensemble']:.3f} | "
            f"{wet['upsampled']:.3f} | {wet['observed']:.3f} |",
            f"| p99 | {f['p99']['ensemble']:.2f} | {f['p99']['upsampled']:.2f} | "
            f"{f['p99']['observed']:.2f} |",
            *(
                [f"| spread-skill ratio (1 = calibrated) | {f['spread_skill_ratio']:.3f} | | |"]
                if "spread_skill_ratio" in f
                else []
            ),
            "",
            f"CRPS skill vs upsampled: {f['crps_skill_vs_upsampled']:+.3f} "
            f"(ensemble beats upsampled: **{f['beats_upsampled']}**).",
            "",
        ]
    lines += [f"![{n}](figures/{n})" for n in scores.get("figures", [])]
    return "\n".join(lines) + "\n"
