"""Few-step samplers against the 18-step Heun reference (35 network evaluations).

Trains (once, cached under out/bench_sampler_quality/) a small EDM denoiser on
real data -- E-OBS v14 daily precipitation over Iberia (0.5°, climate4R
datasets, cite Haylock et al. 2008), coarsened 4× to 2° and downscaled back, the
diffusion stage of Aich et al. (2025) with condition noise sigma_c -- then
generates ensembles for held-out winter days with several samplers and compares
them in one run:

* CRPS of the ensemble against the E-OBS truth (land cells, mm/day);
* mean bias against the truth (mm/day);
* radially averaged power spectrum: mean |log10 ratio| to the reference's;
* spread-skill ratio (``precipdiff.offline.metrics.spread_skill``; 1 = calibrated; Markdown table);
* ratios of each to the reference (18-step Heun, from pure noise).

Usage::

    .venv/bin/python bench/bench_sampler_quality.py [--train-steps 3000] [--members 8]

With ``--bundle models/iberia-demo`` no denoiser is trained: the bundle's own
denoiser, normalisation, transform and sigma_c are used on the bundle's fine
grid (E-OBS selected by coordinates), the condition is built exactly as
``precipdiff train bundle`` builds it (plain NaN-aware block mean with >= 50 % land,
normalised, missing coarse cells at 0, bilinear upsampling), and the held-out
days are the last ``--days`` days of the file (``--days 271``: the demo's whole
validation split, DJF 1994/95-1996/97). ``--markdown`` also prints the table in
Markdown (for model cards).

Needs ../shared/data (skips with a message otherwise). GPU-ready: --device cuda.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from precipdiff.diffusion import EDMPrecond, SamplerConfig, add_condition_noise, edm_loss, sample
from precipdiff.diffusion.samplers import member_generators
from precipdiff.generator import MassConserver
from precipdiff.grids import LatLonGrid, Regridder, coarsen_block_mean, coarsen_grid
from precipdiff.nn import UNet, UNetConfig
from precipdiff.offline.metrics import crps_ensemble, power_spectrum_radial
from precipdiff.offline.metrics import spread_skill as spread_skill_ratio
from precipdiff.testing import shared_data_dir
from precipdiff.transforms import PrecipTransform

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "out" / "bench_sampler_quality"


def load_eobs() -> tuple[np.ndarray, LatLonGrid]:
    import xarray as xr

    d = shared_data_dir()
    if d is None:
        print("SKIP: ../shared/data not found (set PRECIPDIFF_SHARED_DATA)")
        sys.exit(0)
    ds = xr.open_dataset(d / "climate4r_iberia" / "EOBS_Iberia_pr.nc")
    rr = ds["rr"].values[:, 2:18, 0:28].astype(np.float32)  # 16 x 28 cells: 4x coarsenable
    grid = LatLonGrid(ds["lat"].values[2:18], ds["lon"].values[0:28])
    return rr, grid


TIMES: np.ndarray = np.array([], "datetime64[D]")


def load_eobs_full() -> tuple[np.ndarray, LatLonGrid]:
    """The whole E-OBS Iberia file (19 x 29 cells) and its dates (in ``TIMES``)."""
    import xarray as xr

    global TIMES
    d = shared_data_dir()
    if d is None:
        print("SKIP: ../shared/data not found (set PRECIPDIFF_SHARED_DATA)")
        sys.exit(0)
    ds = xr.open_dataset(d / "climate4r_iberia" / "EOBS_Iberia_pr.nc")
    TIMES = ds["time"].values.astype("datetime64[D]")
    return ds["rr"].values.astype(np.float32), LatLonGrid(ds["lat"].values, ds["lon"].values)


def prepare(rr: np.ndarray, fine: LatLonGrid, tf: PrecipTransform):
    coarse = coarsen_grid(fine, 4)
    land = np.isfinite(rr).all(axis=0)
    rr0 = np.where(np.isfinite(rr), rr, 0.0).astype(np.float32)
    rc = coarsen_block_mean(rr, 4, grid=fine)  # NaN-aware: sea excluded
    rc = np.where(np.isfinite(rc), rc, 0.0).astype(np.float32)
    z = tf.forward(rr0)
    zc = tf.forward(rc)
    mu, sd = float(z.mean()), float(z.std())
    up = Regridder(coarse, fine, "bilinear")((zc - mu) / sd)
    return (z - mu) / sd, up.astype(np.float32), land, (mu, sd)


def prepare_for_bundle(rr_all: np.ndarray, grid_all: LatLonGrid, bundle_path: str):
    """The bundle's fine crop of E-OBS and the condition as the training evaluation builds it."""
    from precipdiff.bundle import load_bundle

    bundle = load_bundle(bundle_path, "cpu")
    fine, coarse = bundle.fine_grid, bundle.coarse_grid
    rows = [int(np.argmin(np.abs(grid_all.lat - v))) for v in fine.lat]
    cols = [int(np.argmin(np.abs(grid_all.lon - v))) for v in fine.lon]
    if not (
        np.allclose(grid_all.lat[rows], fine.lat) and np.allclose(grid_all.lon[cols], fine.lon)
    ):
        print(f"SKIP: the fine grid of {bundle_path} is not a subset of the E-OBS Iberia grid")
        sys.exit(0)
    rr = rr_all[:, rows][:, :, cols]
    tf = bundle.transform
    norm = bundle.manifest.normalisation["precip"]
    mu, sd = float(norm["mean"]), float(norm["std"])
    k = fine.shape[0] // coarse.shape[0]
    # plain block mean, as precipdiff.offline.train.data.StageData defines the coarse target
    rc = coarsen_block_mean(rr, k, min_valid_fraction=0.5)
    cm = np.isfinite(rc)
    c = np.where(cm, (tf.forward(np.where(cm, rc, 0.0).astype(np.float32)) - mu) / sd, 0.0)
    up = np.asarray(Regridder(coarse, fine, "bilinear")(c.astype(np.float32)), np.float32)
    land = np.isfinite(rr).all(axis=0)
    return bundle, rr, fine, up, land, tf, (mu, sd)


def prepare_from_config(config_path: str, bundle_path: str):
    """The validation split of a training config's diffusion stage, for any bundle."""
    from precipdiff.bundle import load_bundle
    from precipdiff.offline.train.config import load_config
    from precipdiff.offline.train.data import StageData, Stats

    cfg = load_config(config_path)
    if cfg.diffusion is None:
        print(f"SKIP: {config_path} has no diffusion section")
        sys.exit(0)
    bundle = load_bundle(bundle_path, "cpu")
    norm = bundle.manifest.normalisation["precip"]
    mu, sd = float(norm["mean"]), float(norm["std"])
    stats = Stats({}, {}, mu, sd, 0)
    tf = bundle.transform
    data = StageData(cfg.diffusion.data, tf, base=cfg.source_dir, stats=stats)
    raw = data.read(data.split.validation)
    c, cm = data.normalise_target(raw["coarse"])
    c = np.where(cm > 0, c, 0.0).astype(np.float32)
    up = np.asarray(data.upsampler(c), np.float32)
    rr = np.asarray(raw["fine"], np.float32)
    land = np.isfinite(rr).all(axis=0)
    return (
        bundle,
        rr,
        data.fine_grid,
        up,
        land,
        tf,
        (mu, sd),
        data.split.times[data.split.validation],
    )


def train(x, up, sigma_c, steps, device, base=16, blocks=1, batch=16, seed=0):
    torch.manual_seed(seed)
    cfg = UNetConfig(
        in_channels=2,
        base_channels=base,
        channel_mult=(1, 2, 2),
        num_blocks=blocks,
        noise_channels=32,
    )
    pre = EDMPrecond(UNet(cfg), sigma_data=1.0).to(device)
    opt = torch.optim.AdamW(pre.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    xt = torch.as_tensor(x[:, None], device=device)
    ut = torch.as_tensor(up[:, None], device=device)
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for step in range(steps):
        idx = torch.randint(0, xt.shape[0], (batch,), generator=g).to(device)
        cond = add_condition_noise(ut[idx], sigma_c)
        loss = edm_loss(pre, xt[idx], cond)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 200 == 0 or step == steps - 1:
            print(
                f"  train step {step:5d} loss {loss.item():.4f} ({time.perf_counter() - t0:.0f} s)"
            )
    return pre.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train-steps", type=int, default=1200)
    ap.add_argument("--base-channels", type=int, default=16)
    ap.add_argument("--num-blocks", type=int, default=1)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--members", type=int, default=8)
    ap.add_argument("--days", type=int, default=120, help="held-out days evaluated")
    ap.add_argument("--sigma-c", type=float, default=0.5, help="condition noise (normalised)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--retrain", action="store_true")
    ap.add_argument("--only", nargs="*", default=None, help="sampler labels to run (+ reference)")
    ap.add_argument("--bundle", default=None, help="evaluate this bundle's denoiser (no training)")
    ap.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    ap.add_argument(
        "--config",
        default=None,
        help="with --bundle: evaluate on this training config's diffusion validation split "
        "(any bundle, e.g. configs/era5_global_shape.yaml) instead of the E-OBS Iberia days",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    tf = PrecipTransform("log1p", eps=0.1)
    if args.bundle and args.config:
        bundle, rr, fine, up, land, tf, (mu, sd), times = prepare_from_config(
            args.config, args.bundle
        )
        args.sigma_c = float(bundle.manifest.sigma_c)
        pre = bundle.denoiser.to(device).eval()
        n_train, args.days = 0, min(args.days, rr.shape[0])
        args.data_label = f"{args.config} diffusion validation split {fine.shape}"
        print(
            f"bundle {args.bundle}: default sampler {bundle.manifest.sampler}, "
            f"sigma_c {args.sigma_c}; {args.config} validation split, {args.days} of "
            f"{rr.shape[0]} samples from {times[0]} on, fine grid {fine.shape}"
        )
    elif args.bundle:
        rr_all, grid_all = load_eobs_full()
        bundle, rr, fine, up, land, tf, (mu, sd) = prepare_for_bundle(rr_all, grid_all, args.bundle)
        args.sigma_c = float(bundle.manifest.sigma_c)
        pre = bundle.denoiser.to(device).eval()
        n_train = rr.shape[0] - args.days
        print(
            f"bundle {args.bundle}: default sampler {bundle.manifest.sampler}, "
            f"sigma_c {args.sigma_c}; held-out days {np.datetime_as_string(TIMES[n_train], 'D')}"
            f" .. {np.datetime_as_string(TIMES[-1], 'D')}"
        )
    else:
        rr, fine = load_eobs()
        x, up, land, (mu, sd) = prepare(rr, fine, tf)
        n_train = 1100
        pre = train_or_load(args, x, up, n_train, device)
    run_candidates(args, pre, rr, fine, up, land, tf, mu, sd, n_train, device)


def train_or_load(args, x, up, n_train, device):
    OUT.mkdir(parents=True, exist_ok=True)
    tag = f"sc{args.sigma_c:g}_b{args.base_channels}x{args.num_blocks}_{args.train_steps}"
    wpath = OUT / f"denoiser_{tag}.safetensors"
    arch = {"base": args.base_channels, "blocks": args.num_blocks}
    from safetensors.torch import load_file, save_file

    if wpath.exists() and not args.retrain:
        pre = train(x[:1], up[:1], args.sigma_c, 1, device, **arch)  # architecture only
        pre.net.load_state_dict(load_file(str(wpath)))
        print(f"loaded cached denoiser {wpath}")
    else:
        print(f"training denoiser on {n_train} E-OBS days ({args.train_steps} steps)")
        pre = train(
            x[:n_train], up[:n_train], args.sigma_c, args.train_steps, device,
            batch=args.batch, **arch,
        )  # fmt: skip
        save_file({k: v.cpu().contiguous() for k, v in pre.net.state_dict().items()}, str(wpath))
    return pre.to(device).eval()


def run_candidates(args, pre, rr, fine, up, land, tf, mu, sd, n_train, device):
    test = slice(n_train, n_train + args.days)
    truth = np.where(land, rr[test], np.nan)
    up_t = torch.as_tensor(up[test][:, None], device=device)
    nd, m = up_t.shape[0], args.members
    sde = {"start": "sdedit"}
    cfgs = {
        "reference heun 18 (noise)": SamplerConfig(name="heun", steps=18),
        "heun 4 (noise)": SamplerConfig(name="heun", steps=4),
        "heun 4 (noise, sigma_max 10)": SamplerConfig(name="heun", steps=4, sigma_max=10.0),
        "euler 8 (noise)": SamplerConfig(name="euler", steps=8),
        "euler 8 (noise, churn 4)": SamplerConfig(name="euler", steps=8, s_churn=4.0),
        "euler 6 (noise)": SamplerConfig(name="euler", steps=6),
        "euler 8 (sdedit 4.0)": SamplerConfig(name="euler", steps=8, sdedit_sigma=4.0, **sde),
        "euler 8 (sdedit 8.0)": SamplerConfig(name="euler", steps=8, sdedit_sigma=8.0, **sde),
        "heun 4 (sdedit 1.0)": SamplerConfig(steps=4, sdedit_sigma=1.0, **sde),
        "heun 4 (sdedit 2.0)": SamplerConfig(steps=4, sdedit_sigma=2.0, **sde),
        "heun 4 (sdedit 4.0)": SamplerConfig(steps=4, sdedit_sigma=4.0, **sde),
        "heun 3 (sdedit 2.0)": SamplerConfig(steps=3, sdedit_sigma=2.0, **sde),
        "euler 2 (sdedit 2.0)": SamplerConfig(name="euler", steps=2, sdedit_sigma=2.0, **sde),
        "euler 1 (sdedit 2.0)": SamplerConfig(name="euler", steps=1, sdedit_sigma=2.0, **sde),
        "heun 4 (noise, sigma_max 5)": SamplerConfig(name="heun", steps=4, sigma_max=5.0),
        "heun 4 (noise, sigma_max 10, rho 3)": SamplerConfig(
            name="heun", steps=4, sigma_max=10.0, rho=3.0
        ),
        "heun 4 (noise, rho 3)": SamplerConfig(name="heun", steps=4, rho=3.0),
        "euler 8 (noise, sigma_max 10)": SamplerConfig(name="euler", steps=8, sigma_max=10.0),
    }
    if args.only:
        keep = {"reference heun 18 (noise)", *args.only}
        cfgs = {k: v for k, v in cfgs.items() if k in keep}
    coarse = coarsen_grid(fine, 4)
    conserver = MassConserver(fine, coarse)
    # target of the correction: the coarse truth the condition was made from (sea = 0)
    target = conserver.down(np.where(np.isfinite(rr[test]), rr[test], 0.0).astype(np.float32))
    results = {}
    maxima: dict[str, float] = {}
    spread_skill: dict[str, float] = {}
    for label, cfg in cfgs.items():
        gens = member_generators(0, np.repeat(np.arange(nd), m), np.tile(np.arange(m), nd), device)
        upm = up_t.repeat_interleave(m, dim=0)
        cond = add_condition_noise(upm, args.sigma_c, gens)
        t0 = time.perf_counter()
        with torch.no_grad():
            z = sample(pre, cond, cfg, gens, x_init=upm)
        dt = time.perf_counter() - t0
        p_full = tf.inverse(z.cpu().numpy()[:, 0] * sd + mu).reshape(nd, m, *fine.shape)
        p = np.where(land, p_full, np.nan)
        crps = float(np.nanmean(crps_ensemble(p, truth)))
        bias = float(np.nanmean(p.mean(axis=1) - truth))
        _, pw = power_spectrum_radial(p, dx=0.5)
        # the same members with the optional mass-conserving correction
        pc = np.where(land, conserver(p_full, target[:, None]), np.nan)
        crps_c = float(np.nanmean(crps_ensemble(pc, truth)))
        bias_c = float(np.nanmean(pc.mean(axis=1) - truth))
        mass_err = float(np.abs(conserver.down(p_full) - target[:, None]).mean())
        results[label] = (cfg.nfe, crps, bias, pw, dt, crps_c, bias_c, mass_err)
        maxima[label] = float(np.nanmax(p))
        spread_skill[label] = spread_skill_ratio(p, truth).ratio
    ref = results["reference heun 18 (noise)"]
    _, pw_truth = power_spectrum_radial(truth, dx=0.5)
    print(
        f"\n{getattr(args, 'data_label', 'E-OBS Iberia 2°→0.5°')}, {nd} held-out days × {m} "
        f"members, sigma_c={args.sigma_c}, "
        f"truth mean {np.nanmean(truth):.3f} mm/day"
    )
    head = f"{'sampler':32s} {'NFE':>4s} {'CRPS':>7s} {'CRPS/ref':>8s} {'bias':>7s} "
    print(head + f"{'|log PSD/ref|':>13s} {'|log PSD/obs|':>13s} {'time/ref':>8s}")
    for label, (nfe, crps, bias, pw, dt, *_) in results.items():
        d_ref = float(np.mean(np.abs(np.log10(pw / ref[3]))))
        d_obs = float(np.mean(np.abs(np.log10(pw / pw_truth))))
        print(
            f"{label:32s} {nfe:4d} {crps:7.3f} {crps / ref[1]:8.3f} {bias:+7.3f} "
            f"{d_ref:13.3f} {d_obs:13.3f} {dt / ref[4]:8.2f}"
        )
    print("\nmass-conserving correction (switch conserve_mass) on the same members:")
    print(
        f"{'sampler':32s} {'coarse |err| off':>16s} {'CRPS off':>8s} {'CRPS on':>8s} "
        f"{'bias off':>8s} {'bias on':>8s}"
    )
    for label, (_, crps, bias, _, _, crps_c, bias_c, mass_err) in results.items():
        print(f"{label:32s} {mass_err:16.3f} {crps:8.3f} {crps_c:8.3f} {bias:+8.3f} {bias_c:+8.3f}")
    if args.markdown:
        print(
            "\n| sampler | NFE | CRPS | CRPS / ref | mean bias | |log PSD/ref| | "
            "|log PSD/obs| | spread-skill | max member (mm/day) |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for label, (nfe, crps, bias, pw, _dt, *_rest) in results.items():
            d_ref = float(np.mean(np.abs(np.log10(pw / ref[3]))))
            d_obs = float(np.mean(np.abs(np.log10(pw / pw_truth))))
            print(
                f"| {label} | {nfe} | {crps:.3f} | {crps / ref[1]:.3f} | {bias:+.3f} | "
                f"{d_ref:.3f} | {d_obs:.3f} | {spread_skill[label]:.2f} | {maxima[label]:.0f} |"
            )


if __name__ == "__main__":
    main()
