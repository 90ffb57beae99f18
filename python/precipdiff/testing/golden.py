"""Golden tier: stored reference tensors for the generator, samplers, regridding and QDM.

Each case is a deterministic computation on CPU (tiny models with fixed seeds, small
grids, few sampler steps) whose outputs are stored in ``tests/python/golden/<case>.npz``.
``tests/python/test_golden.py`` recomputes every case and compares it with the stored
arrays, so an unintended change of any number the runtime produces fails a test.

When a change is intended (a new sampler schedule, a different UNet padding, ...),
regenerate the references and commit them with the change, saying why::

    python -m precipdiff.testing.golden --regenerate          # every case
    python -m precipdiff.testing.golden --regenerate sampler  # one case
    python -m precipdiff.testing.golden --check               # compare, print differences

Tolerances (:data:`TOLERANCE`) allow for float32 summation-order differences between
CPU builds, not for any change of the method.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CASES", "GOLDEN_DIR", "TOLERANCE", "compare", "compute", "main"]

#: Where the reference tensors live (in the repository, next to the tests using them).
GOLDEN_DIR = Path(__file__).resolve().parents[3] / "tests" / "python" / "golden"

#: (rtol, atol) per case: float32 networks vs float64 numpy maths.
TOLERANCE: dict[str, tuple[float, float]] = {
    "generator": (1e-4, 1e-5),
    "sampler": (1e-5, 1e-6),
    "regrid": (1e-12, 1e-12),
    "qdm": (1e-6, 1e-6),
}


def _torch_single_thread() -> None:
    import torch

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True, warn_only=True)


def _generator_case() -> dict[str, np.ndarray]:
    """Generate from a tiny random-weight bundle: predictors on another grid, 2 members."""
    from precipdiff.generator import PrecipGenerator
    from precipdiff.grids import LatLonGrid
    from precipdiff.testing.models import make_tiny_bundle, random_predictors

    _torch_single_thread()
    coarse = LatLonGrid.regular(4.0, lat_min=32.0, lat_max=48.0, lon_min=2.0, lon_max=18.0)
    fine = LatLonGrid.regular(1.0, lat_min=30.5, lat_max=49.5, lon_min=0.5, lon_max=19.5)
    esm = LatLonGrid.regular(2.0, lat_min=31.0, lat_max=49.0, lon_min=1.0, lon_max=19.0)
    with tempfile.TemporaryDirectory() as tmp:
        path = make_tiny_bundle(Path(tmp) / "b", coarse_grid=coarse, fine_grid=fine, seed=3)
        gen = PrecipGenerator.from_bundle(path, device="cpu", use_compiled=False)
        x = random_predictors(gen.manifest.variable_names(), esm, times=2, seed=5)
        res = gen.generate(x, grid=esm, members=2, seed=11, steps=4)
        mass = gen.generate(x, grid=esm, members=1, seed=11, steps=4, conserve_mass=True)
    return {"fine": res.fine, "coarse": res.coarse, "fine_conserved": mass.fine}


def _sampler_case() -> dict[str, np.ndarray]:
    """Heun, Euler, churn and SDEdit with an analytic denoiser (no network)."""
    import torch

    from precipdiff.diffusion.edm import add_condition_noise
    from precipdiff.diffusion.samplers import SamplerConfig, member_generators, sample

    _torch_single_thread()

    def denoise(x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        # The exact denoiser of data N(cond, 0.5^2): D = (0.25 x + s^2 cond) / (0.25 + s^2).
        s2 = sigma.reshape(-1, 1, 1, 1).to(x.dtype) ** 2
        return (0.25 * x + s2 * cond[:, :1]) / (0.25 + s2)

    g = torch.Generator().manual_seed(0)
    cond = torch.randn(3, 1, 8, 12, generator=g)
    out: dict[str, np.ndarray] = {}
    configs = {
        "heun": SamplerConfig(name="heun", steps=6),
        "euler": SamplerConfig(name="euler", steps=8),
        "heun_churn": SamplerConfig(name="heun", steps=6, s_churn=10.0),
        "sdedit": SamplerConfig(name="heun", steps=4, start="sdedit", sdedit_sigma=1.0),
    }
    for name, cfg in configs.items():
        gens = member_generators(7, [0, 0, 1], [0, 1, 0], "cpu")
        noisy = add_condition_noise(cond, 0.5, gens)
        with torch.no_grad():
            out[name] = sample(denoise, noisy, cfg, gens, x_init=cond).numpy()
    return out


def _regrid_case() -> dict[str, np.ndarray]:
    """Bilinear and conservative remapping between two regional grids and a global one."""
    from precipdiff.grids import LatLonGrid, Regridder, coarsen_block_mean

    src = LatLonGrid.regular(2.5, lat_min=-88.75, lat_max=88.75, lon_min=1.25, lon_max=358.75)
    dst = LatLonGrid.regular(1.0, lat_min=30.5, lat_max=60.5, lon_min=-19.5, lon_max=29.5)
    lat2, lon2 = np.meshgrid(src.lat, src.lon, indexing="ij")
    field = np.cos(np.deg2rad(lat2)) * (
        2.0 + np.sin(np.deg2rad(3 * lon2)) * np.cos(np.deg2rad(2 * lat2))
    )
    out = {
        "bilinear": Regridder(src, dst, "bilinear")(field),
        "conservative": Regridder(src, dst, "conservative")(field),
    }
    fine = LatLonGrid.regular(0.5, lat_min=30.25, lat_max=59.75, lon_min=-19.75, lon_max=29.75)
    out["coarsened"] = coarsen_block_mean(Regridder(src, fine, "bilinear")(field), 4, grid=fine)
    return out


def _qdm_case() -> dict[str, np.ndarray]:
    """QDM fit, offline correction (self and static) and four online windows."""
    from precipdiff.offline.qdm_fit import apply_qdm, fit_qdm
    from precipdiff.qdm import OnlineQDM, QDMConfig

    rng = np.random.default_rng(42)
    t = np.arange(np.datetime64("1990-01-01"), np.datetime64("1995-12-31"), dtype="datetime64[D]")
    tf = t + np.timedelta64(365 * 60, "D")
    ref = {"pr": rng.gamma(0.7, 3.0, (t.size, 2, 3)), "ta": rng.normal(280, 4, (t.size, 2, 3))}
    hist = {"pr": rng.gamma(0.6, 3.5, (t.size, 2, 3)) + 0.02, "ta": ref["ta"] - 2.0}
    fut = {"pr": hist["pr"] * 1.2, "ta": hist["ta"] + 3.0}
    cfg = QDMConfig(n_quantiles=12, group="month", trace={"pr": 0.05})
    tables = fit_qdm(ref, hist, t, t, cfg)
    out: dict[str, np.ndarray] = {}
    for name in ("pr", "ta"):
        out[f"{name}_ref_q"] = tables.variables[name].ref_q
        out[f"{name}_hist_q"] = tables.variables[name].hist_q
        # Every 5th day of the corrected 6 years is stored (keeps the file small).
        out[f"{name}_self"] = apply_qdm(tables, name, fut[name], tf)[::5]
        out[f"{name}_static"] = apply_qdm(tables, name, fut[name], tf, projection="static")[::5]
    online = OnlineQDM(tables, trailing_years=0.1, calendar="proleptic_gregorian")
    days = [online.apply({k: v[i] for k, v in fut.items()}, tf[i]) for i in range(0, 120, 30)]
    for name in ("pr", "ta"):
        out[f"{name}_online"] = np.stack([d[name] for d in days])
    return out


#: Case name -> computation returning named arrays.
CASES: dict[str, Callable[[], dict[str, np.ndarray]]] = {
    "generator": _generator_case,
    "sampler": _sampler_case,
    "regrid": _regrid_case,
    "qdm": _qdm_case,
}


def compute(case: str) -> dict[str, np.ndarray]:
    """Run one golden case.

    Parameters
    ----------
    case
        A key of :data:`CASES`.

    Returns
    -------
    dict
        Named output arrays.
    """
    return {k: np.asarray(v) for k, v in CASES[case]().items()}


def compare(case: str, got: dict[str, np.ndarray], directory: Path = GOLDEN_DIR) -> list[str]:
    """Compare computed arrays with the stored references of ``case``.

    Parameters
    ----------
    case
        A key of :data:`CASES`.
    got
        Arrays from :func:`compute`.
    directory
        Where the ``<case>.npz`` references are.

    Returns
    -------
    list of str
        One line per difference (empty when everything matches within
        :data:`TOLERANCE`).
    """
    path = directory / f"{case}.npz"
    if not path.is_file():
        return [f"{path} is missing: run python -m precipdiff.testing.golden --regenerate {case}"]
    rtol, atol = TOLERANCE[case]
    problems = []
    with np.load(path) as ref:
        if set(ref.files) != set(got):
            problems.append(f"{case}: arrays {sorted(got)} vs stored {sorted(ref.files)}")
        for key in sorted(set(ref.files) & set(got)):
            want, have = ref[key], got[key]
            if want.shape != have.shape:
                problems.append(f"{case}/{key}: shape {have.shape}, stored {want.shape}")
                continue
            bad = ~np.isclose(have, want, rtol=rtol, atol=atol, equal_nan=True)
            if bad.any():
                i = np.unravel_index(int(np.flatnonzero(bad)[0]), bad.shape)
                problems.append(
                    f"{case}/{key}: {int(bad.sum())} of {bad.size} values differ beyond "
                    f"rtol={rtol:g}, atol={atol:g}; first at {tuple(int(j) for j in i)}: "
                    f"{have[i]!r} vs stored {want[i]!r}"
                )
    return problems


def main(argv: list[str] | None = None) -> int:
    """Regenerate or check the golden references (see the module docstring).

    Parameters
    ----------
    argv
        Command-line arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success, 1 when ``--check`` finds differences.
    """
    p = argparse.ArgumentParser(prog="python -m precipdiff.testing.golden", description=__doc__)
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--regenerate", action="store_true", help="recompute and store")
    mode.add_argument("--check", action="store_true", help="recompute and compare")
    p.add_argument("cases", nargs="*", choices=[*CASES, []], help="cases (default all)")
    p.add_argument("--dir", type=Path, default=GOLDEN_DIR, help="reference directory")
    args = p.parse_args(argv)
    status = 0
    for case in args.cases or list(CASES):
        got = compute(case)
        if args.regenerate:
            args.dir.mkdir(parents=True, exist_ok=True)
            save: Any = np.savez_compressed  # (numpy's stub types **arrays as allow_pickle)
            save(args.dir / f"{case}.npz", **got)
            print(f"wrote {args.dir / (case + '.npz')} ({', '.join(sorted(got))})")
            continue
        problems = compare(case, got, args.dir)
        print(f"{case}: " + ("ok" if not problems else "\n  ".join(["DIFFERS", *problems])))
        status |= bool(problems)
    return status


if __name__ == "__main__":
    sys.exit(main())
