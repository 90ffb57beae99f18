"""``precipdiff train``: train the regression and diffusion stages and assemble a bundle.

The documented sequence (``docs/training.md``)::

    precipdiff train regression CONFIG
    precipdiff train diffusion CONFIG
    precipdiff train bundle CONFIG      # evaluates on the validation split, writes the bundle
    precipdiff train calibrate CONFIG   # optional: output calibration (bundle.output_calibration)
    precipdiff train distill CONFIG     # optional: 2-evaluation student, <bundle>-distilled

or ``precipdiff train all CONFIG``. Interrupted runs resume from their last
checkpoint when the same command is repeated. Under ``torchrun`` the stages
train with DistributedDataParallel without any change::

    torchrun --nproc_per_node 4 -m precipdiff train diffusion CONFIG
"""

from __future__ import annotations

import argparse
import shutil

import torch


def _run(args: argparse.Namespace) -> int:
    from precipdiff.offline.train.config import load_config
    from precipdiff.offline.train.ddp import setup, teardown

    cfg = load_config(args.config)
    if args.run_dir is not None:
        cfg.run_dir = args.run_dir
    if args.device is not None:
        cfg.device = args.device
    for section in (cfg.regression, cfg.diffusion):
        if section is not None and args.no_progress:
            section.loop.progress = False
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    # Late in training (small learning rates, EMA of tiny updates) denormal floats made CPU
    # steps several times slower here; flushing them to zero changes nothing measurable.
    torch.set_flush_denormal(True)
    stages = ["regression", "diffusion", "bundle"] if args.stage == "all" else [args.stage]
    if args.stage == "all" and cfg.bundle is not None and cfg.bundle.output_calibration:
        # fitted after the bundle is built; `train evaluate` then scores the calibrated product
        stages += ["calibrate", "evaluate"]
    if args.restart:
        from precipdiff.offline.train.regression import stage_dir

        for s in stages:
            if s in ("regression", "diffusion"):
                shutil.rmtree(stage_dir(cfg, s), ignore_errors=True)
    ctx = setup(cfg.device)
    try:
        for s in stages:
            if s == "regression":
                from precipdiff.offline.train.regression import train_regression

                r = train_regression(cfg, ctx, stop_at=args.stop_at)
            elif s == "diffusion":
                from precipdiff.offline.train.diffusion import train_diffusion

                r = train_diffusion(cfg, ctx, stop_at=args.stop_at)
            elif s == "calibrate":
                if ctx.is_main:
                    from precipdiff.offline.output_calibration import calibrate_bundle

                    entry = calibrate_bundle(cfg, args.out)  # ConfigError without a section
                    assert cfg.bundle is not None
                    state = "on" if entry["default"] else "off"
                    print(
                        f"output calibration fitted on {entry['provenance']['days']} training "
                        f"days and attached to {args.out or cfg.bundle.out} (applied by default: "
                        f"{state})"
                    )
                continue
            elif s == "distill":
                if ctx.is_main:
                    from precipdiff.offline.train.distill import distill_bundle

                    given = {"steps": args.distill_steps, "members": args.distill_members}
                    extra = {k: v for k, v in given.items() if v is not None}
                    dest = distill_bundle(cfg, args.distill_out, args.out, log=print, **extra)
                    print(f"distilled student bundle written to {dest}")
                continue
            elif s == "evaluate":
                if ctx.is_main:
                    from pathlib import Path

                    from precipdiff.offline.train.bundle import evaluate_bundle

                    assert cfg.bundle is not None
                    dest = Path(args.out or cfg.bundle.out)
                    evaluate_bundle(cfg, dest)
                    print(
                        f"evaluation of {dest} written (evaluation.json, EVALUATION.md, figures/)"
                    )
                continue
            else:
                if ctx.is_main:
                    from precipdiff.offline.train.bundle import build_bundle

                    out = build_bundle(cfg, out=args.out)
                    print(f"bundle written to {out}")
                continue
            if ctx.is_main:
                state = "finished" if r.finished else "stopped (resume by rerunning)"
                print(
                    f"{s}: {state} at step {r.step}; best validation loss "
                    f"{r.best_val_loss:.5g} at step {r.best_step}"
                )
            if not r.finished:
                break
    finally:
        teardown(ctx)
    return 0


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the ``train`` subcommand.

    Parameters
    ----------
    subparsers
        The ``add_subparsers`` action of the top-level parser.
    """
    p = subparsers.add_parser(
        "train",
        help="train the regression / diffusion stages and assemble a bundle",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "stage",
        choices=["regression", "diffusion", "bundle", "all", "evaluate", "calibrate", "distill"],
        help="evaluate: re-score an existing bundle on the validation split (figures, "
        "evaluation.json, EVALUATION.md), without its training run directory; calibrate: fit "
        "the output calibration of an existing bundle on the training split "
        "(bundle.output_calibration); distill: train a two-evaluation student of an existing "
        "bundle on the training split and write it as <bundle>-distilled "
        "(precipdiff.offline.train.distill)",
    )
    p.add_argument("config", help="training config (YAML or JSON), e.g. configs/iberia_demo.yaml")
    p.add_argument("--run-dir", help="override run_dir of the config")
    p.add_argument("--out", help="bundle output directory (default: bundle.out of the config)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override device")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--stop-at", type=int, help="stop (checkpointed) at this step; rerun to resume")
    p.add_argument(
        "--restart", action="store_true", help="discard existing checkpoints of these stages"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--distill-out", help="distill: the student bundle (default: <bundle>-distilled)"
    )
    p.add_argument(
        "--distill-steps", type=int, help="distill: Adam steps (default: DEFAULT_SETTINGS, 1500)"
    )
    p.add_argument(
        "--distill-members",
        type=int,
        help="distill: teacher members per training day (default: DEFAULT_SETTINGS, 4)",
    )
    p.set_defaults(func=_run)
