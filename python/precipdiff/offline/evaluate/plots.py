"""Figures of the evaluation report (matplotlib, Agg backend, PNG files).

Every function takes plain arrays, writes one PNG and returns its path, so the
same figures are produced by ``precipdiff evaluate`` and by tests.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "plot_bias_maps",
    "plot_change_signal",
    "plot_qq",
    "plot_rank_histogram",
    "plot_spectra",
    "plot_spread_skill",
]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return p


def label_map_axes(ax: Any, *, ylabel: bool = True) -> None:
    """Label a lon-lat map panel: ``longitude (°E)`` / ``latitude (°N)``, degree ticks.

    Parameters
    ----------
    ax
        A matplotlib axes holding a map in degrees.
    ylabel
        Also label the y axis (only the leftmost panel of a row needs it).
    """
    from matplotlib.ticker import FuncFormatter

    ax.set_xlabel("longitude (°E)", fontsize=8)
    if ylabel:
        ax.set_ylabel("latitude (°N)", fontsize=8)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}°"))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}°"))


def log_axes(ax: Any, axis: str = "both") -> None:
    """Readable log-scale ticks: labels on decades only (no overlapping minor labels).

    Parameters
    ----------
    ax
        A matplotlib axes with logarithmic scales.
    axis
        ``"x"``, ``"y"`` or ``"both"``.
    """
    from matplotlib.ticker import LogFormatterSciNotation, LogLocator, NullFormatter

    for a in [ax.xaxis, ax.yaxis] if axis == "both" else [getattr(ax, f"{axis}axis")]:
        a.set_major_locator(LogLocator(base=10.0, numticks=6))
        a.set_major_formatter(LogFormatterSciNotation(base=10.0))
        a.set_minor_locator(
            LogLocator(base=10.0, subs=[0.1 * k for k in range(2, 10)], numticks=12)
        )
        a.set_minor_formatter(NullFormatter())


def plot_bias_maps(
    maps: Mapping[str, NDArray[np.floating]],
    lat: NDArray[np.floating],
    lon: NDArray[np.floating],
    path: str | os.PathLike[str],
    title: str = "Bias of the time mean (mm/day)",
    scores: Mapping[str, float] | None = None,
    units: str = "mm/day",
) -> Path:
    """Side-by-side maps with one symmetric colour scale.

    Parameters
    ----------
    maps
        ``{label: (lat, lon) bias}``.
    lat, lon
        Cell-centre coordinates.
    path
        Output PNG.
    title
        Figure title.
    scores
        Optional ``{label: mean absolute bias}`` shown in each panel title.
    units
        Colour-bar label. The scale is symmetric, up to the 98th percentile of
        the absolute values of all panels (a few extreme cells do not wash out
        the others).

    Returns
    -------
    pathlib.Path
        The PNG written.
    """
    plt = _pyplot()
    n = len(maps)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.2), squeeze=False)
    allv = np.concatenate([np.abs(np.asarray(m, dtype=np.float64)).ravel() for m in maps.values()])
    allv = allv[np.isfinite(allv)]
    vmax = float(np.percentile(allv, 98)) if allv.size else 1.0
    vmax = vmax if np.isfinite(vmax) and vmax > 0 else 1.0
    im = None
    for i, (ax, (label, m)) in enumerate(zip(axes[0], maps.items(), strict=True)):
        im = ax.pcolormesh(lon, lat, m, cmap="BrBG", vmin=-vmax, vmax=vmax, shading="nearest")
        # long product names wrap instead of running into the next panel's title
        name = textwrap.fill(label, 34)
        sub = name if scores is None else f"{name}\nMAB {scores[label]:.3f}"
        ax.set_title(sub, fontsize=9)
        ax.set_aspect("equal")
        ax.tick_params(labelsize=7)
        label_map_axes(ax, ylabel=i == 0)
    if im is not None:
        fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label=units, extend="both")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_spectra(
    spectra: Mapping[str, tuple[NDArray[np.floating], NDArray[np.floating]]],
    path: str | os.PathLike[str],
    xlabel: str = "wavenumber (cycles per degree)",
    title: str = "Radially averaged power spectrum",
) -> Path:
    """Log-log power spectra of several products.

    Parameters
    ----------
    spectra
        ``{label: (wavenumber, power)}``.
    path
        Output PNG.
    xlabel, title
        Axis label and title.

    Returns
    -------
    pathlib.Path
        The PNG written.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for label, (k, p) in spectra.items():
        ax.loglog(k, p, marker="o", ms=3, label=label)
    log_axes(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("power (mm²/day²)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_qq(
    obs: NDArray[np.floating],
    products: Mapping[str, NDArray[np.floating]],
    path: str | os.PathLike[str],
    title: str = "Quantile-quantile plot (all cells and days)",
) -> Path:
    """QQ plot of products against the observations (pooled values).

    Parameters
    ----------
    obs
        Observed values (any shape; NaN ignored).
    products
        ``{label: values}``.
    path
        Output PNG.
    title
        Title.

    Returns
    -------
    pathlib.Path
        The PNG written.
    """
    plt = _pyplot()
    q = np.concatenate([np.linspace(0.5, 0.99, 50), [0.995, 0.999, 0.9995]])
    o = np.asarray(obs, dtype=np.float64)
    oq = np.quantile(o[np.isfinite(o)], q)
    fig, ax = plt.subplots(figsize=(4.2, 4))
    top = float(oq[-1])
    for label, v in products.items():
        a = np.asarray(v, dtype=np.float64)
        pq = np.quantile(a[np.isfinite(a)], q)
        top = max(top, float(pq[-1]))
        ax.plot(oq, pq, marker=".", label=label)
    ax.plot([0, top], [0, top], color="k", lw=0.8, ls="--")
    ax.set_xlabel("observed quantile (mm/day)")
    ax.set_ylabel("product quantile (mm/day)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_spread_skill(
    curves: Mapping[str, tuple[NDArray[np.floating], NDArray[np.floating]]],
    path: str | os.PathLike[str],
) -> Path:
    """Binned ensemble spread against RMSE of the ensemble mean.

    Parameters
    ----------
    curves
        ``{label: (bin_spread, bin_rmse)}``.
    path
        Output PNG.

    Returns
    -------
    pathlib.Path
        The PNG written.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 4))
    top = 0.0
    for label, (s, e) in curves.items():
        ax.plot(s, e, marker="o", label=label)
        top = max(top, float(np.max(s)), float(np.max(e)))
    ax.plot([0, top], [0, top], color="k", lw=0.8, ls="--", label="calibrated")
    ax.set_xlabel("ensemble spread (mm/day)")
    ax.set_ylabel("RMSE of ensemble mean (mm/day)")
    ax.set_title("Spread-skill", fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_rank_histogram(counts: NDArray[np.integer], path: str | os.PathLike[str]) -> Path:
    """Rank histogram normalised to frequencies, with the flat reference.

    Parameters
    ----------
    counts
        Counts per rank (length ``M + 1``).
    path
        Output PNG.

    Returns
    -------
    pathlib.Path
        The PNG written.
    """
    plt = _pyplot()
    c = np.asarray(counts, dtype=np.float64)
    f = c / c.sum()
    fig, ax = plt.subplots(figsize=(4.2, 3.2))
    ax.bar(np.arange(c.size), f, color="tab:blue")
    ax.axhline(1.0 / c.size, color="k", ls="--", lw=0.8)
    ax.set_xlabel("rank of the observation among the members")
    ax.set_ylabel("frequency")
    ax.set_title("Rank histogram (ties broken at random)", fontsize=10)
    return _save(fig, path)


def plot_change_signal(
    q: Sequence[float],
    signals: Mapping[str, NDArray[np.floating]],
    path: str | os.PathLike[str],
    ylabel: str = "relative change",
    title: str = "Change signal per quantile",
    *,
    percent: bool = False,
) -> Path:
    """Change signal per quantile of several products.

    Parameters
    ----------
    q
        Probabilities.
    signals
        ``{label: change per quantile}``.
    path
        Output PNG.
    ylabel, title
        Axis label and title.
    percent
        The signals are relative changes (fractions): plot them in % (as the change maps
        are) and add ``(%)`` to the axis label.

    Returns
    -------
    pathlib.Path
        The PNG written.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    scale = 100.0 if percent else 1.0
    for label, s in signals.items():
        ax.plot(q, scale * np.asarray(s, dtype=np.float64), marker="o", label=label)
    ax.axhline(0.0, color="k", lw=0.6)
    ax.set_xlabel("quantile")
    ax.set_ylabel(f"{ylabel} (%)" if percent and "%" not in ylabel else ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)
