"""Distil a bundle's sampler into a two-evaluation student (issue 13's stretch goal).

The teacher is a bundle's denoiser with its default sampler (DPM-Solver++(2M), 8
evaluations per member). The student is a copy of the teacher's network, trained to
reproduce the teacher's *deterministic* map from a member's initial noise and
condition to its sample in two evaluations, with the project's own sampler
(``dpmpp2m``, ``steps=2``, log-linear levels ``sigma_max`` -> ``sigma_mid``
-> 0):

1. ``x1 = D_s(x_T; sigma_max) + (sigma_mid / sigma_max) x_T`` (the sampler's
   first step from pure noise, ``x_T = sigma_max * n``);
2. the sample is ``D_s(x1; sigma_mid)``.

The loss is the teacher's sample against step 2 plus the teacher's ``D(x_T;
sigma_max)`` against the student's (so that step 1 stays the teacher's), a direct
("knowledge") distillation of the probability-flow ODE (Luhman & Luhman 2021): the
ODE map is deterministic, so the student's members keep the teacher's randomness,
and any spread or small-scale power the student loses is measured, not assumed
(``scripts/iberia_distill.py``). Teacher draws come from the bundle's own pipeline
on training days (:func:`teacher_draws`), with the runtime's condition noise and
member streams.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from precipdiff.diffusion.edm import EDMPrecond
from precipdiff.diffusion.samplers import SamplerConfig
from precipdiff.errors import ConfigError

#: The student's noise level after its first step: the teacher's jump level.
DEFAULT_SIGMA_MID = 5.0

#: Distillation settings of the shipped students, fixed before any score was seen
#: (docs/results/iberia/selection.md, "Distilled sampler"): teacher members per
#: training day, Adam steps, batch size, learning rate, seed of the teacher draws.
DEFAULT_SETTINGS: dict[str, Any] = {
    "members": 4,
    "steps": 1500,
    "batch_size": 32,
    "lr": 3e-4,
    "seed": 101,
}


@dataclass
class TeacherDraws:
    """Inputs and outputs of the teacher's sampler, one row per member draw.

    Parameters
    ----------
    x_start
        ``(n, 1, H, W)`` the sampler's start ``x_T = sigma_max * n``.
    cond
        ``(n, C, H, W)`` the condition channels the runtime built for that member.
    d_start
        ``(n, 1, H, W)`` the teacher's ``D(x_T; sigma_max)``.
    sample
        ``(n, 1, H, W)`` the teacher's sample (network space, before a residual
        bundle adds the condition back).
    sigma_max
        The start level.
    """

    x_start: torch.Tensor
    cond: torch.Tensor
    d_start: torch.Tensor
    sample: torch.Tensor
    sigma_max: float

    def __len__(self) -> int:
        return int(self.x_start.shape[0])


def student_sampler(sigma_max: float = 80.0, sigma_mid: float = DEFAULT_SIGMA_MID) -> SamplerConfig:
    """Return the student's sampler: ``dpmpp2m``, 2 evaluations, ``sigma_max -> sigma_mid -> 0``.

    Parameters
    ----------
    sigma_max
        Start level (the teacher's).
    sigma_mid
        Level after the first step.

    Returns
    -------
    SamplerConfig
        The sampler settings (``nfe == 2``).
    """
    # two log-linear levels are exactly (sigma_max, sigma_mid), then 0
    return SamplerConfig(
        name="dpmpp2m", steps=2, schedule="loglinear", sigma_max=sigma_max, sigma_min=sigma_mid
    )


def teacher_draws(
    gen: Any, y_c: np.ndarray, x_feat: np.ndarray | None, members: int, seed: int
) -> TeacherDraws:
    """Run the bundle's pipeline (stage 2) and record each member's sampler inputs and output.

    Parameters
    ----------
    gen
        A :class:`precipdiff.generator.PrecipGenerator` whose default sampler is the
        teacher (``dpmpp2m`` from noise).
    y_c
        ``(time, nlat_c, nlon_c)`` coarse fields in normalised transformed space.
    x_feat
        Normalised features for bundles conditioned on them (else ``None``).
    members, seed
        Members per day and the generation seed.

    Returns
    -------
    TeacherDraws
        One row per (day, member).
    """
    cfg = gen.sampler
    if cfg.name != "dpmpp2m" or cfg.start != "noise":
        raise ConfigError(f"the teacher sampler must be dpmpp2m from noise, got {cfg}")
    inner = gen.denoise_fn
    rows: list[dict[str, torch.Tensor]] = []

    def recorder(x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        out = inner(x, sigma, cond)
        if math.isclose(float(sigma), cfg.sigma_start, rel_tol=1e-6):
            rows.append({"x": x.clone(), "cond": cond.clone(), "d": out.clone()})
        rows[-1]["last"] = out.clone()  # dpmpp2m returns its last evaluation
        return out

    gen.denoise_fn = recorder
    try:
        gen.sample_fine(y_c, x_feat, members=members, seed=seed)
    finally:
        gen.denoise_fn = inner
    return TeacherDraws(
        x_start=torch.cat([r["x"] for r in rows]).float(),
        cond=torch.cat([r["cond"] for r in rows]).float(),
        d_start=torch.cat([r["d"] for r in rows]).float(),
        sample=torch.cat([r["last"] for r in rows]).float(),
        sigma_max=float(cfg.sigma_start),
    )


def distill(
    teacher: EDMPrecond,
    draws: TeacherDraws,
    *,
    sigma_mid: float = DEFAULT_SIGMA_MID,
    steps: int = 1000,
    batch_size: int = 32,
    lr: float = 2e-4,
    seed: int = 0,
    log: Callable[[int, float], None] | None = None,
) -> tuple[EDMPrecond, list[float]]:
    """Train a two-evaluation student from the teacher's draws.

    Parameters
    ----------
    teacher
        The teacher denoiser (not modified; the student starts as its copy).
    draws
        :func:`teacher_draws`' result (training days only).
    sigma_mid
        The student's level after its first step.
    steps, batch_size, lr
        Adam steps, draws per step, learning rate (cosine decay to 5 %).
    seed
        Seed of the batch order.
    log
        Called as ``log(step, loss)`` every 50 steps.

    Returns
    -------
    tuple
        The student (eval mode, float32, CPU) and the loss per step.
    """
    if len(draws) < batch_size:
        raise ConfigError(f"{len(draws)} teacher draws for a batch of {batch_size}")
    student = copy.deepcopy(teacher).float().cpu().train()
    opt = torch.optim.Adam(student.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(i / steps, 1.0)))
    )
    g = torch.Generator().manual_seed(seed)
    s_max = torch.tensor(draws.sigma_max)
    s_mid = torch.tensor(float(sigma_mid))
    losses = []
    for step in range(steps):
        idx = torch.randint(0, len(draws), (batch_size,), generator=g)
        x_t, cond = draws.x_start[idx], draws.cond[idx]
        d0 = student(x_t, s_max.expand(batch_size), cond)
        x1 = d0.detach() + (sigma_mid / draws.sigma_max) * x_t
        d1 = student(x1, s_mid.expand(batch_size), cond)
        loss = torch.mean((d1 - draws.sample[idx]) ** 2) + torch.mean(
            (d0 - draws.d_start[idx]) ** 2
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if log is not None and (step % 50 == 0 or step == steps - 1):
            log(step, float(np.mean(losses[-50:])))
    return student.eval(), losses


def write_student_bundle(
    teacher_bundle: str | Path,
    student: EDMPrecond,
    dest: str | Path,
    sampler: SamplerConfig,
    note: str,
) -> Path:
    """Write a copy of the teacher's bundle with the student's weights and sampler.

    Everything else (regression, statics, normalisation, output calibration) is the
    teacher's; the manifest's denoiser sha256, ``sampler`` and a
    ``provenance.distilled`` entry are updated, compiled packages are dropped, the
    teacher's model card, evaluation and figures are not copied (they describe the
    teacher), and the bundle is loaded once to verify it.

    Parameters
    ----------
    teacher_bundle
        The teacher's bundle directory.
    student
        The trained student.
    dest
        The new bundle directory (replaced if it exists).
    sampler
        The student's sampler (:func:`student_sampler`).
    note
        What was distilled, on which days (recorded in the provenance).

    Returns
    -------
    pathlib.Path
        ``dest``.
    """
    import shutil

    from safetensors.torch import save_file

    from precipdiff.bundle import DENOISER_FILE, load_bundle, read_manifest, write_manifest
    from precipdiff.bundle.manifest import sha256_file

    src, out = Path(teacher_bundle), Path(dest)
    shutil.rmtree(out, ignore_errors=True)
    # the teacher's card, evaluation and figures describe the teacher: not copied
    shutil.copytree(
        src,
        out,
        ignore=shutil.ignore_patterns(
            "compiled", "figures", "MODEL_CARD.md", "EVALUATION.md", "evaluation.json"
        ),
    )
    state = {k: v.detach().float().cpu().contiguous() for k, v in student.net.state_dict().items()}
    save_file(state, str(out / DENOISER_FILE))
    manifest = read_manifest(out)
    teacher_sampler = manifest.sampler
    files = {**manifest.files, DENOISER_FILE: sha256_file(out / DENOISER_FILE)}
    provenance = {
        **manifest.provenance,
        "name": out.name,
        "description": f"two-evaluation distilled student of {src.name}: "
        + str(manifest.provenance.get("description", "")),
        "distilled": {"teacher": str(src), "teacher_sampler": teacher_sampler, "note": note},
    }
    manifest = dataclasses.replace(
        manifest, sampler=sampler.to_dict(), files=files, compiled=[], provenance=provenance
    )
    write_manifest(out, manifest)
    load_bundle(out)  # verifies every file's sha256 and the networks' shapes
    return out


def distill_bundle(
    cfg: Any,
    dest: str | Path | None = None,
    teacher_bundle: str | Path | None = None,
    log: Callable[[str], None] | None = None,
    **settings: Any,
) -> Path:
    """Distil a trained bundle into a two-evaluation student bundle on its training days.

    The teacher's pipeline (regression on the training split's predictors, condition
    noise, statics, default sampler) generates ``members`` draws per training day; a
    copy of its denoiser is trained on them (:func:`distill`) and written with the
    teacher's everything else (:func:`write_student_bundle`).

    Parameters
    ----------
    cfg
        The training config (:class:`~precipdiff.offline.train.config.TrainConfig`):
        its regression data section gives the training days.
    dest
        The student bundle (default: ``<teacher>-distilled``).
    teacher_bundle
        The teacher (default: ``cfg.bundle.out``).
    log
        Progress messages.
    **settings
        Overrides of :data:`DEFAULT_SETTINGS`.

    Returns
    -------
    pathlib.Path
        The student bundle.
    """
    from precipdiff.generator import PrecipGenerator
    from precipdiff.offline.train.data import StageData
    from precipdiff.transforms import PrecipTransform

    unknown = set(settings) - set(DEFAULT_SETTINGS)
    if unknown:
        raise ConfigError(f"unknown distillation settings {sorted(unknown)}")
    opts = {**DEFAULT_SETTINGS, **settings}
    say = log or (lambda msg: None)
    if teacher_bundle is None:
        if cfg.bundle is None:
            raise ConfigError("the config has no 'bundle' section: pass the teacher bundle")
        teacher_bundle = cfg.bundle.out
    src = Path(teacher_bundle)
    out = Path(dest) if dest is not None else src.with_name(src.name + "-distilled")
    gen = PrecipGenerator.from_bundle(src, device="cpu", use_compiled=False)
    data = StageData(cfg.regression.data, PrecipTransform.from_dict(cfg.transform), cfg.source_dir)
    train = data.split.train
    raw = data.read(train)
    preds = {n: raw[n] for n in gen.manifest.variable_names()}
    y_c = gen.regress(preds)
    x_feat = gen.condition_features_normalised(preds)
    draws = teacher_draws(gen, y_c, x_feat, members=opts["members"], seed=opts["seed"])
    say(f"{len(draws)} teacher draws on {len(train)} training days")
    sigma_mid = gen.sampler.sigma_jump or DEFAULT_SIGMA_MID
    student, _ = distill(
        gen.bundle.denoiser,
        draws,
        sigma_mid=sigma_mid,
        steps=opts["steps"],
        batch_size=opts["batch_size"],
        lr=opts["lr"],
        log=lambda i, v: say(f"step {i:5d}  loss {v:.4f}"),
    )
    t = data.split.times[train]
    note = (
        f"{opts['steps']} Adam steps (batch {opts['batch_size']}, lr {opts['lr']}) on "
        f"{len(draws)} teacher draws ({opts['members']} per day, seed {opts['seed']}) of the "
        f"training days {str(t.min())[:10]} to {str(t.max())[:10]}"
    )
    sampler = student_sampler(gen.sampler.sigma_start, sigma_mid)
    return write_student_bundle(src, student, out, sampler, note)
