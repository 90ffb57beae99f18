"""Does the training loader keep a GPU busy? Samples/s read vs samples/s trained, at true shapes.

Side by side in one run, at the shapes of the paper's global model
(``configs/era5_global_paper.yaml``: ERA5 0.25° = 721×1440, cropped to 720×1440,
coarse grid 180×360):

1. writes a synthetic ERA5-shaped raw store in the ARCO-ERA5 layout (Zarr, ERA5
   long names and units, latitude 90 → -90, ``--days`` days of ``--steps-per-day``
   time steps, ``--predictors`` predictors + ``total_precipitation``) into
   ``--out`` (default ``out/bench_train_loader``, ignored by git; ~25 MB per day
   and step, removed afterwards unless ``--keep``);
2. runs ``precipdiff prepare`` on it (``--prepare-workers`` processes) and
   reports seconds per day;
3. reads diffusion training batches (random days × random ``--patch`` patches,
   :class:`~precipdiff.offline.train.store_data.PatchDiffusionDataset`) through
   the training loop's :class:`~precipdiff.offline.train.loader.BatchStream`,
   in-process and with ``--workers`` worker processes, and regression batches
   (whole coarse fields of every predictor);
4. times training steps (forward, backward, AdamW; ``--device``) of the config's
   denoiser at the same patch size and of its regression UNet on the coarse grid,
   and counts their FLOPs (``torch.utils.flop_counter``) and the activation
   memory saved for the backward pass per sample;
5. prints samples/s of each, and the ratio loader / training step per training
   process (target ≥ 2), plus the per-epoch extrapolation documented in
   ``docs/training.md``.

The loader and the training steps are measured one after the other (not
concurrently), each with the whole machine. Numbers on a loaded 2-core CPU are
noisy; the ratio is what matters, and it is from one run.

Usage::

    .venv/bin/python bench/bench_train_loader.py [--days 60] [--workers 2] [--device cpu]
    .venv/bin/python bench/bench_train_loader.py --json out/bench_train_loader.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
#: Predictors in the order --predictors takes them (the paper config: the first four).
BENCH_PREDICTORS = ("hus850", "ua850", "va850", "psl", "tas", "hus500")
#: ERA5 long name, units, on pressure levels, (scale, offset) of the synthetic values.
RAW = {
    "hus": ("specific_humidity", "kg kg**-1", True, (0.002, 0.006)),
    "ua": ("u_component_of_wind", "m s**-1", True, (6.0, 0.0)),
    "va": ("v_component_of_wind", "m s**-1", True, (6.0, 0.0)),
    "psl": ("mean_sea_level_pressure", "Pa", False, (900.0, 101300.0)),
    "tas": ("2m_temperature", "K", False, (8.0, 285.0)),
}
LEVELS = (500, 850)


def write_raw_store(path: Path, days: int, steps_per_day: int, n_pred: int) -> None:
    """Synthetic ARCO-layout store at 721x1440 (smooth fields + noise, wet and dry areas).

    Like ARCO-ERA5, a chunk is one time step of a whole variable (all its levels).
    """
    import numcodecs
    import zarr

    rng = np.random.default_rng(0)
    nlat, nlon = 721, 1440
    nt = days * steps_per_day + (1 if steps_per_day > 1 else 0)
    step_h = 24 // steps_per_day
    t0 = (np.datetime64("2001-01-01T00", "h") - np.datetime64("1900-01-01T00", "h")).astype(int)
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    comp = numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE)

    def array(name: str, dims: list[str], shape: tuple[int, ...], attrs: dict[str, Any]) -> Any:
        chunks = (1, *shape[1:]) if dims[0] == "time" else shape
        a = root.create_array(name, shape=shape, chunks=chunks, dtype=np.float32, compressors=comp)
        a.attrs.update({"_ARRAY_DIMENSIONS": dims, **attrs})
        return a

    def coord(name: str, values: np.ndarray, attrs: dict[str, Any]) -> None:
        a = root.create_array(
            name, shape=values.shape, dtype=values.dtype, chunks=values.shape, fill_value=None
        )
        a[...] = values
        a.attrs.update({"_ARRAY_DIMENSIONS": [name], **attrs})

    coord(
        "time",
        (t0 + step_h * np.arange(nt)).astype(np.int64),
        {"units": "hours since 1900-01-01", "calendar": "proleptic_gregorian"},
    )
    coord("latitude", np.linspace(90.0, -90.0, nlat), {"units": "degrees_north"})
    coord("longitude", np.arange(nlon) * 0.25, {"units": "degrees_east"})
    coord("level", np.array(LEVELS, np.int64), {"units": "millibar"})

    def field(scale: float, offset: float) -> np.ndarray:
        low = rng.standard_normal((nlat // 16 + 2, nlon // 16))
        smooth = np.kron(low, np.ones((16, 16)))[:nlat, :nlon]
        noise = 0.2 * rng.standard_normal((nlat, nlon))
        return (offset + scale * (smooth + noise)).astype(np.float32)

    bases = dict.fromkeys(n.rstrip("0123456789") for n in BENCH_PREDICTORS[:n_pred])
    for base in bases:
        long, units, levelled, (scale, offset) = RAW[base]
        if levelled:
            dims = ["time", "level", "latitude", "longitude"]
            a = array(long, dims, (nt, len(LEVELS), nlat, nlon), {"units": units})
            for t in range(nt):
                a[t] = np.stack([field(scale, offset) for _ in LEVELS])
        else:
            a = array(long, ["time", "latitude", "longitude"], (nt, nlat, nlon), {"units": units})
            for t in range(nt):
                a[t] = field(scale, offset)
    tp = array(
        "total_precipitation", ["time", "latitude", "longitude"], (nt, nlat, nlon), {"units": "m"}
    )
    for t in range(nt):
        # m accumulated over the step: about half the globe dry, up to ~50 mm/day.
        tp[t] = np.maximum(field(1.0, -0.2), 0.0) * (0.002 * step_h / 24)
    zarr.consolidate_metadata(str(path))


def experiment(out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The paper config pointed at the synthetic store (its networks, patch, batch)."""
    import yaml

    raw = yaml.safe_load((REPO / "configs" / "era5_global_paper.yaml").read_text())
    names = list(BENCH_PREDICTORS[: args.predictors])
    last = np.datetime64("2001-01-01") + np.timedelta64(args.days - 1, "D")
    split = {"validation_start": str(last - np.timedelta64(4, "D")), "validation_end": str(last)}
    src = str(out / "raw.zarr")
    raw["run_dir"] = str(out / "run")
    pc = raw["prepare"]
    pc.update(
        out=str(out / "store.zarr"),
        target={"name": "pr", "path": src},
        predictors=[{"name": n, "path": src} for n in names],
        storage_options=None,
        start="2001-01-01",
        end=str(last),
        split=split,
        accumulation_hours=24.0 / args.steps_per_day,
        accumulations_end_at_stamp=args.steps_per_day > 1,
        workers=args.prepare_workers,
    )
    for stage in ("regression", "diffusion"):
        data = raw[stage]["data"]
        data["store"] = pc["out"]
        data["split"] = split
        if stage == "regression":
            data["predictors"] = [{"name": n} for n in names]
        raw[stage]["loop"]["workers"] = args.workers
    raw["diffusion"]["patch_size"] = [args.patch, args.patch]
    return raw


def time_loader(dataset: Any, batch: int, steps: int, workers: int) -> float:
    """Samples/s delivered by the training loop's BatchStream (after one warm-up step)."""
    from precipdiff.offline.train.loader import BatchStream, StepPlan

    plan = StepPlan(seed=0, n_train=len(dataset), global_batch=batch)
    with BatchStream(dataset, plan, 0, steps + 1, workers=workers, prefetch=4) as stream:
        stream.get(0)
        t0 = time.perf_counter()
        for s in range(1, steps + 1):
            stream.get(s)
        dt = time.perf_counter() - t0
    return steps * batch / dt


def time_steps(
    model: Any, make: Any, loss_fn: Any, batch: int, steps: int, device: str
) -> dict[str, float]:
    """Training steps/s of a network (forward + backward + AdamW), FLOPs and saved activations."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    dev = torch.device(device)
    model = model.to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    inputs = make(batch, dev)
    use_bf16 = dev.type == "cuda"

    def step() -> None:
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss = loss_fn(model, inputs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    # FLOPs of one step at batch 1 (forward + backward), and the bytes saved for backward.
    one = make(1, dev)
    saved = [0]

    def pack(t: Any) -> Any:
        saved[0] += t.numel() * t.element_size()
        return t

    with (
        FlopCounterMode(display=False) as fc,
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
    ):
        loss_fn(model, one).backward()
    opt.zero_grad(set_to_none=True)
    params = sum(p.numel() for p in model.parameters())
    out = {
        "s_per_step": dt,
        "samples_per_s": batch / dt,
        "flops_per_sample": float(fc.get_total_flops()),
        "activation_bytes_per_sample_fp32": float(saved[0]),
        "parameters": float(params),
    }
    if dev.type == "cuda":
        out["peak_cuda_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--days", type=int, default=60)
    p.add_argument(
        "--steps-per-day", type=int, default=1, help="raw time steps per day (hourly: 24)"
    )
    p.add_argument("--predictors", type=int, default=5)
    p.add_argument("--patch", type=int, default=128)
    p.add_argument("--batch", type=int, default=8, help="samples per training step timed here")
    p.add_argument(
        "--loader-batch",
        type=int,
        default=32,
        help="samples per batch read by the loader (a GPU process's local batch)",
    )
    p.add_argument("--no-steps", action="store_true", help="measure the loader only")
    p.add_argument("--workers", type=int, default=2, help="loader worker processes")
    p.add_argument("--prepare-workers", type=int, default=2)
    p.add_argument("--loader-steps", type=int, default=20)
    p.add_argument("--train-steps", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=REPO / "out" / "bench_train_loader")
    p.add_argument("--keep", action="store_true", help="keep the synthetic stores")
    p.add_argument("--reuse", action="store_true", help="reuse stores left by --keep")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()

    import torch

    from precipdiff.offline.train.config import TrainConfig, from_dict
    from precipdiff.offline.train.diffusion import DiffusionStage, build_denoiser, prepare_diffusion
    from precipdiff.offline.train.loader import sample_seeds
    from precipdiff.offline.train.prepare import run_prepare
    from precipdiff.offline.train.regression import RegressionStage, prepare_regression

    torch.set_num_threads(args.threads)
    out: Path = args.out
    results: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    if not args.reuse:
        shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    raw = experiment(out, args)
    cfg = from_dict(TrainConfig, raw)
    if not (out / "raw.zarr").exists():
        t0 = time.perf_counter()
        write_raw_store(out / "raw.zarr", args.days, args.steps_per_day, args.predictors)
        results["write_raw_s"] = time.perf_counter() - t0
        print(
            f"synthetic raw store: {args.days} days x {args.steps_per_day} steps at 721x1440, "
            f"{args.predictors} predictors + tp, {results['write_raw_s']:.0f} s",
            flush=True,
        )
    if not (out / "store.zarr").exists():
        res = run_prepare(cfg, progress=False)
        results["prepare_s_per_day"] = res.seconds / args.days
        results["prepare_workers"] = args.prepare_workers
        print(
            f"prepare: {res.seconds:.0f} s for {args.days} days with {args.prepare_workers} "
            f"workers = {res.seconds / args.days:.2f} s per day",
            flush=True,
        )

    # -- loader ---------------------------------------------------------------------
    stage, data = prepare_diffusion(cfg)
    reg, _ = prepare_regression(cfg)
    lb = args.loader_batch
    loader = {
        "diffusion_inprocess": time_loader(stage.train_set, lb, args.loader_steps, 0),
        "diffusion_workers": time_loader(stage.train_set, lb, args.loader_steps, args.workers),
        "regression_inprocess": time_loader(reg.train_set, lb, args.loader_steps, 0),
        "regression_workers": time_loader(reg.train_set, lb, args.loader_steps, args.workers),
    }
    results["loader_samples_per_s"] = loader
    for k, v in loader.items():
        print(f"loader {k:22s}: {v:8.1f} samples/s", flush=True)

    if args.no_steps:
        finish(args, out, results)
        return 0

    # -- training steps -------------------------------------------------------------
    b = args.batch
    assert cfg.diffusion is not None and cfg.regression is not None
    den_stage: DiffusionStage = stage
    batch0 = stage.train_set.seeded_batch(np.arange(b), sample_seeds(0, 0, np.arange(b)))

    def make_den(n: int, dev: Any) -> dict[str, Any]:
        return {k: v[:n].repeat(max(1, -(-n // b)), 1, 1, 1)[:n].to(dev) for k, v in batch0.items()}

    def den_loss(model: Any, batch: dict[str, Any]) -> Any:
        seeds = sample_seeds(0, 1, np.arange(batch["y"].shape[0]))
        return den_stage.loss(model, batch, seeds).float().mean()

    den = time_steps(
        build_denoiser(cfg.diffusion), make_den, den_loss, b, args.train_steps, args.device
    )
    reg_stage: RegressionStage = reg
    rbatch = reg.train_set.batch(np.arange(b))

    def make_reg(n: int, dev: Any) -> dict[str, Any]:
        return {k: v[:n].to(dev) for k, v in rbatch.items()}

    def reg_loss(model: Any, batch: dict[str, Any]) -> Any:
        return reg_stage.loss(model, batch, np.zeros(batch["x"].shape[0], np.int64)).float().mean()

    rg = time_steps(reg.model, make_reg, reg_loss, b, args.train_steps, args.device)
    results["train_step"] = {"diffusion": den, "regression": rg}
    results["ratio_diffusion"] = loader["diffusion_workers"] / den["samples_per_s"]
    results["ratio_regression"] = loader["regression_workers"] / rg["samples_per_s"]
    print(
        f"denoiser step ({args.device}, patch {args.patch}, batch {b}): "
        f"{den['samples_per_s']:.2f} samples/s, {den['flops_per_sample'] / 1e9:.1f} GFLOP/sample, "
        f"{den['activation_bytes_per_sample_fp32'] / 2**20:.0f} MiB activations/sample (fp32), "
        f"{den['parameters'] / 1e6:.1f} M parameters",
        flush=True,
    )
    print(
        f"regression step ({args.device}, {data.coarse_grid.shape}, batch {b}): "
        f"{rg['samples_per_s']:.2f} samples/s, {rg['flops_per_sample'] / 1e9:.1f} GFLOP/sample, "
        f"{rg['activation_bytes_per_sample_fp32'] / 2**20:.0f} MiB activations/sample (fp32), "
        f"{rg['parameters'] / 1e6:.1f} M parameters",
        flush=True,
    )
    w = args.workers
    print(f"RATIO diffusion loader ({w} workers) / denoiser step: {results['ratio_diffusion']:.1f}")
    print(
        f"RATIO regression loader ({w} workers) / regression step: "
        f"{results['ratio_regression']:.1f}"
    )
    finish(args, out, results)
    return 0


def finish(args: argparse.Namespace, out: Path, results: dict[str, Any]) -> None:
    """Write the JSON results and remove the synthetic stores (unless --keep)."""
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
