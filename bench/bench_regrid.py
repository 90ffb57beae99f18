"""Regridder cost at ERA5 sizes, side by side in one run.

For 1 deg (181x360) -> 0.25 deg (721x1440) bilinear and 0.25 deg -> 1 deg
conservative, compares per call:

- ``Regridder.__call__`` (one precomputed sparse matrix product),
- ``scipy.interpolate.RegularGridInterpolator`` rebuilt per call (what a
  per-timestep implementation without precomputation would do; bilinear only),

and prints ratios, plus the one-off construction cost. Timings are the best of
several repeats; this machine is shared, so expect +-20 % noise.

Run: OMP_NUM_THREADS=1 .venv/bin/python bench/bench_regrid.py
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from scipy.interpolate import RegularGridInterpolator

from precipdiff.grids import LatLonGrid, Regridder


def best_of(fn: Callable[[], object], repeat: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def rgi_bilinear(src: LatLonGrid, dst: LatLonGrid, x: np.ndarray) -> np.ndarray:
    """Periodic bilinear via RegularGridInterpolator (ascending lat, wrap column added)."""
    order = np.argsort(src.lat)
    lon = np.concatenate([src.lon, [src.lon[0] + 360.0]])
    xe = np.concatenate([x[order], x[order][:, :1]], axis=1)
    f = RegularGridInterpolator((src.lat[order], lon), xe, method="linear")
    la, lo = np.meshgrid(dst.lat, np.mod(dst.lon - src.lon[0], 360.0) + src.lon[0], indexing="ij")
    return f(np.stack([la.ravel(), lo.ravel()], axis=-1)).reshape(dst.shape)


def main() -> None:
    coarse = LatLonGrid.regular(1.0, descending=True)
    fine = LatLonGrid.regular(0.25)
    rng = np.random.default_rng(0)

    t0 = time.perf_counter()
    up = Regridder(coarse, fine, "bilinear")
    build_up = time.perf_counter() - t0
    t0 = time.perf_counter()
    down = Regridder(fine, coarse, "conservative")
    build_down = time.perf_counter() - t0

    x = rng.random(coarse.shape, dtype=np.float32)
    np.testing.assert_allclose(up(x), rgi_bilinear(coarse, fine, x), rtol=1e-5, atol=1e-5)
    t_up = best_of(lambda: up(x))
    t_rgi = best_of(lambda: rgi_bilinear(coarse, fine, x), repeat=3)
    print(
        f"bilinear 1deg->0.25deg, one field: Regridder {t_up * 1e3:.2f} ms, "
        f"RegularGridInterpolator per call {t_rgi * 1e3:.1f} ms, ratio {t_rgi / t_up:.1f}x"
    )
    print(f"  construction once: {build_up:.2f} s (nnz {up.weights.nnz})")

    y = rng.random(fine.shape, dtype=np.float32)
    t_down = best_of(lambda: down(y))
    print(
        f"conservative 0.25deg->1deg, one field: Regridder {t_down * 1e3:.2f} ms; "
        f"construction once {build_down:.2f} s (nnz {down.weights.nnz})"
    )

    for batch in (4, 16):
        xb = rng.random((batch, *coarse.shape), dtype=np.float32)
        t_batch = best_of(lambda xb=xb: up(xb))
        t_loop = best_of(lambda xb=xb: [up(f) for f in xb])
        print(
            f"bilinear batch {batch}: batched {t_batch * 1e3:.1f} ms, per-field loop "
            f"{t_loop * 1e3:.1f} ms, ratio {t_loop / t_batch:.2f}"
        )


if __name__ == "__main__":
    main()
