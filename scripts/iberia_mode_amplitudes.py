#!/usr/bin/env python
"""Per-mode amplitudes of E-OBS winter precipitation in the networks' space, by wavelength.

What the samplers' spectral check (``GaussianRandomField`` in
``precipdiff.testing.analytic``, ``tests/python/test_samplers.py``) is modelled on:
E-OBS daily precipitation over Iberia (the demo's 16x28 crop, training winters DJF
1982/83-1993/94 only), transformed and normalised as the bundle's networks see it
(``log1p(P / eps)``, the manifest's precipitation mean and std), in the largest
all-land box, each day's box mean removed; orthonormal 2-D FFT; the root-mean-square
mode amplitude per wavelength band (0.5 deg cells).

Usage (seconds)::

    PRECIPDIFF_SHARED_DATA=../shared/data .venv/bin/python scripts/iberia_mode_amplitudes.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BANDS_DEG = ((1.0, 1.4), (1.4, 2.0), (2.0, 4.0), (4.0, np.inf))


def main() -> int:
    """Print the table."""
    from precipdiff.bundle import read_manifest
    from precipdiff.io import import_xarray
    from precipdiff.offline import metrics
    from precipdiff.testing import shared_data_dir

    root = shared_data_dir()
    if root is None:
        print("SKIP: ../shared/data not found (set PRECIPDIFF_SHARED_DATA)")
        return 0
    manifest = read_manifest(REPO / "models" / "iberia-demo")
    eps = float(manifest.transform["eps"])
    mean, std = (float(manifest.normalisation["precip"][k]) for k in ("mean", "std"))
    xr = import_xarray()
    with xr.open_dataset(root / "climate4r_iberia" / "EOBS_Iberia_pr.nc") as ds:
        t = ds["time"].values
        rr = np.asarray(ds["rr"].values[t < np.datetime64("1994-03-01"), 0:16, 0:28], float)
    z = (np.log1p(rr / eps) - mean) / std
    box = metrics.land_box(np.isfinite(z).all(axis=0))
    zb = z[:, box[0], box[1]]
    zb = zb - zb.mean(axis=(1, 2), keepdims=True)
    power = (np.abs(np.fft.fft2(zb, norm="ortho")) ** 2).mean(axis=0)
    ny, nx = power.shape
    k = np.hypot(np.fft.fftfreq(ny)[:, None], np.fft.fftfreq(nx)[None, :])
    wavelength = np.where(k > 0, 0.5 / np.where(k > 0, k, 1.0), np.inf)
    print(f"{zb.shape[0]} days, box {ny}x{nx} cells; wavelength band (deg): modes, rms amplitude")
    for lo, hi in BANDS_DEG:
        band = (wavelength >= lo) & (wavelength < hi) & (k > 0)
        amp = np.sqrt(power[band].mean())
        print(f"{lo:4.1f}-{hi:4.1f}: {int(band.sum()):3d} modes, {amp:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
