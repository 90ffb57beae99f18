#!/usr/bin/env python
"""Learning curves of a training run: training and validation loss per stage.

Reads ``RUN_DIR/regression/metrics.csv`` and ``RUN_DIR/diffusion/metrics.csv`` (what
``precipdiff train`` writes) and draws one panel per stage: the training loss (mean
over the last ``loop.log_every`` steps) and the validation loss (every
``loop.validate_every`` steps) on a log scale, with the step of the lowest validation
loss marked. Prints that step and the final-to-lowest ratio per stage.

Usage (seconds)::

    .venv/bin/python scripts/plot_learning_curves.py RUN_DIR --out curves.png [--title T]

For example the inner-split run of the shipped Iberia config, made by
``scripts/iberia_selection.py --calibrated shipped`` (``out/selection/shipped``);
its figure is ``docs/results/iberia/learning_curves_inner.png``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

STAGES = ("regression", "diffusion")


def main() -> int:
    """Draw the figure and print the lowest-validation step of each stage."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--title", default="")
    args = ap.parse_args()
    stages = [s for s in STAGES if (args.run_dir / s / "metrics.csv").is_file()]
    if not stages:
        print(f"no {STAGES[0]}/metrics.csv or {STAGES[1]}/metrics.csv under {args.run_dir}")
        return 2
    from precipdiff.offline.evaluate.plots import _pyplot, _save
    from precipdiff.offline.train.loop import read_learning_curves

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(stages), figsize=(5 * len(stages), 3.8), squeeze=False)
    for ax, stage in zip(axes[0], stages, strict=True):
        m = read_learning_curves(args.run_dir / stage / "metrics.csv")
        ax.plot(*zip(*m["train"], strict=True), "C0", lw=1, label="training")
        if m["val"]:
            ax.plot(*zip(*m["val"], strict=True), "C1o-", ms=3, label="validation")
            best = min(m["val"], key=lambda sv: sv[1])
            last = m["val"][-1]
            ax.axvline(best[0], color="C1", ls=":", lw=1)
            print(
                f"{stage}: lowest validation loss {best[1]:.4g} at step {best[0]}; "
                f"final {last[1]:.4g} at step {last[0]} ({last[1] / best[1]:.2f}x the lowest)"
            )
        ax.set_yscale("log")
        ax.set_xlabel("optimiser step")
        ax.set_ylabel("loss")
        ax.set_title(f"{args.title} {stage}".strip())
        ax.legend()
    fig.tight_layout()
    print(f"wrote {_save(fig, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
