"""Samplers against analytic targets with the exact denoiser: the sampler's own error.

For per-pixel Gaussian mixtures the exact denoiser ``E[x0 | x]`` is known
(:mod:`precipdiff.testing.analytic`), so any difference between the samples and
the target is the sampler's discretisation error, separate from any network's
error. The table gives, per sampler and target, the error of the standard
deviation and of the mean (both in % of the target's std) and the network
evaluations (NFE) per sample.

Usage::

    .venv/bin/python bench/bench_sampler_analytic.py [--size 96] [--markdown]

CPU, about a minute. Output of this command is recorded in docs/generator.md
("Default sampler" and "Small scales"). A second table gives each sampler's power per
wavelength band on Gaussian random fields with their exact (Wiener) denoisers
(:class:`~precipdiff.testing.analytic.GaussianRandomField`): an E-OBS-like field and
one with 5x weaker small scales.
"""

from __future__ import annotations

import argparse

import torch

from precipdiff.bundle import default_sampler
from precipdiff.diffusion import SamplerConfig, member_generators, sample
from precipdiff.testing.analytic import (
    REFERENCE_TARGETS,
    GaussianRandomField,
    sampler_moment_errors,
)

#: Spectral targets: the E-OBS-like field (GaussianRandomField's defaults) and one with
#: 5x weaker small scales; bands in cells (2-4 cells = 1-2 deg at 0.5 deg).
FIELDS = {
    "E-OBS-like (0.27 at Nyquist)": GaussianRandomField((64, 64)),
    "weak small scales (0.05)": GaussianRandomField((64, 64), small_std=0.05),
}
BANDS = ((2, 4), (4, 8), (8, 64))

LOGJUMP = {"schedule": "loglinear", "sigma_jump": 5.0, "sigma_min": 0.03}


def candidates() -> dict[str, SamplerConfig]:
    """Samplers compared (the shipped default first)."""
    return {
        "default: dpmpp2m 8 (log-linear, jump 5)": default_sampler(),
        "euler 8 (EDM rho=7)": SamplerConfig(name="euler", steps=8),
        "heun 4 (EDM rho=7)": SamplerConfig(name="heun", steps=4),
        "heun 18 (EDM rho=7)": SamplerConfig(name="heun", steps=18),
        "dpmpp2m 8 (EDM rho=7)": SamplerConfig(name="dpmpp2m", steps=8),
        "dpmpp2m 8 (log-linear, no jump)": SamplerConfig(
            name="dpmpp2m", steps=8, schedule="loglinear", sigma_min=0.03
        ),
        "dpmpp2m 6 (log-linear, jump 5)": SamplerConfig(name="dpmpp2m", steps=6, **LOGJUMP),
        "dpmpp2m 10 (log-linear, jump 5)": SamplerConfig(name="dpmpp2m", steps=10, **LOGJUMP),
        "dpmpp2m 16 (log-linear, jump 5)": SamplerConfig(name="dpmpp2m", steps=16, **LOGJUMP),
    }


def main() -> None:
    """Print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=96, help="field size (8 members of size^2)")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    shape = (8, 1, args.size, args.size)
    names = list(REFERENCE_TARGETS)
    rows = []
    for label, cfg in candidates().items():

        def fn(denoise, cond, cfg=cfg):
            gens = member_generators(1, [0] * cond.shape[0], range(cond.shape[0]), "cpu")
            return sample(denoise, cond, cfg, gens)

        errs = [sampler_moment_errors(fn, REFERENCE_TARGETS[n], shape) for n in names]
        rows.append((label, cfg.nfe, errs))
    se = max(e[2] for e in rows[0][2])
    print(f"errors in % of the target std; standard error of the std estimate <= {100 * se:.2f} %")
    print("targets: " + "; ".join(f"[{i}] {n}" for i, n in enumerate(names)))
    for label, nfe, errs in rows:
        cells = " ".join(
            f"[{i}] {100 * s:+6.1f}/{100 * m:+5.1f}" for i, (m, s, _) in enumerate(errs)
        )
        print(f"{label:42s} NFE {nfe:3d}  std/mean: {cells}")
    if args.markdown:
        print("\n| sampler | NFE | " + " | ".join(names) + " |")
        print("|---|---|" + "---|" * len(names))
        for label, nfe, errs in rows:
            cells = " | ".join(f"{100 * s:+.1f} / {100 * m:+.1f}" for m, s, _ in errs)
            print(f"| {label} | {nfe} | {cells} |")
    spectra(args.markdown)


def spectra(markdown: bool) -> None:
    """Print each sampler's power per wavelength band on the random-field targets."""
    cols = [(f, b) for f in FIELDS for b in BANDS]
    print("\npower / target per band (wavelength in cells; 16 fields of 64x64)")
    rows = []
    for label, cfg in candidates().items():
        cells = []
        for fname, band in cols:
            field = FIELDS[fname]
            cond = torch.zeros((16, 1, *field.size))
            gens = member_generators(3, [0] * 16, range(16), "cpu")
            x = sample(field.denoiser(), cond, cfg, gens)
            ratio, se = field.band_power_ratio(x, band)
            cells.append(f"{ratio:.3f}")
        rows.append((label, cfg.nfe, cells))
        print(f"{label:42s} NFE {cfg.nfe:3d}  " + " ".join(cells), flush=True)
    print(f"standard error of a ratio <= {se:.3f}")
    if markdown:
        head = [f"{f}, {b[0]}-{b[1]} cells" for f, b in cols]
        print("\n| sampler | NFE | " + " | ".join(head) + " |")
        print("|---|---|" + "---|" * len(head))
        for label, nfe, cells in rows:
            print(f"| {label} | {nfe} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
