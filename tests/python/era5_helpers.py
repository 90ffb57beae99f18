"""Tiny synthetic ERA5 inputs as users have them: an ARCO-ERA5-layout Zarr store and CDS files.

Both hold the same hourly values (a global grid, latitude 90 -> -90 like ERA5, ERA5
names and units: specific humidity in kg kg**-1 on pressure levels, winds in
m s**-1, mean sea-level pressure in Pa, total precipitation as hourly
accumulations in m stamped at the end of the hour), so a test can check that both
routes give the same training store. Precipitation follows the humidity anomaly,
so a tiny model has something to learn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from precipdiff.offline.train.config import TrainConfig, from_dict

LEVELS = (500, 850, 1000)
#: ERA5 long names (ARCO-ERA5 store) -> short names (CDS netCDF files).
SHORT = {
    "specific_humidity": "q",
    "u_component_of_wind": "u",
    "v_component_of_wind": "v",
    "mean_sea_level_pressure": "msl",
    "total_precipitation": "tp",
}


def hourly_fields(
    days: int = 6, start: str = "2000-01-29", nlat: int = 33, nlon: int = 64, seed: int = 0
) -> xr.Dataset:
    """Hourly global fields from ``start`` 00:00 to the day after the last day, 00:00."""
    rng = np.random.default_rng(seed)
    nt = 24 * days + 1
    lat = np.linspace(90.0, -90.0, nlat)
    lon = np.arange(nlon) * 360.0 / nlon
    t0 = np.datetime64(start, "h")
    times = t0 + np.arange(nt).astype("timedelta64[h]")
    hours = (times - np.datetime64("1900-01-01T00", "h")).astype(np.int64)
    # Smooth, slowly moving anomalies: random walks of a few low-order modes.
    yy, xx = np.meshgrid(np.deg2rad(lat), np.deg2rad(lon), indexing="ij")
    modes = np.stack(
        [np.cos(k * xx + m * yy) for k in range(1, 4) for m in range(1, 3)]
    )  # (6, nlat, nlon)
    coef = np.cumsum(rng.normal(0, 0.15, (nt, modes.shape[0])), axis=0)
    anom = np.einsum("tk,kyx->tyx", coef, modes) / 3.0
    noise = rng.normal(0, 0.1, (nt, nlat, nlon))
    q850 = (0.001 + 0.007 * np.cos(yy) ** 2 + 0.0008 * np.tanh(anom + noise)).astype(np.float32)
    q = np.stack([q850 * 0.4, q850, q850 * 1.2], axis=1)
    u = np.stack([(8 * anom + rng.normal(0, 2, anom.shape)) * s for s in (1.5, 1.0, 0.7)], 1)
    v = np.stack(
        [(6 * np.roll(anom, 3, -1) + rng.normal(0, 2, anom.shape)) * s for s in (1.5, 1.0, 0.7)], 1
    )
    msl = 101325.0 - 800.0 * anom + rng.normal(0, 50, anom.shape)
    rate_mm_h = np.maximum(0.0, 0.4 * (anom + noise) - 0.1) * (0.5 + np.cos(yy) ** 2)
    tp = (rate_mm_h / 1000.0).astype(np.float32)  # m accumulated over the hour ending at t
    coords: dict[str, Any] = {
        "time": (
            "time",
            hours,
            {"units": "hours since 1900-01-01", "calendar": "proleptic_gregorian"},
        ),
        "level": (
            "level",
            np.array(LEVELS, np.int64),
            {"units": "millibar", "long_name": "pressure_level"},
        ),
        "latitude": ("latitude", lat, {"units": "degrees_north"}),
        "longitude": ("longitude", lon, {"units": "degrees_east"}),
    }
    f32 = np.float32
    return xr.Dataset(
        {
            "specific_humidity": (
                ("time", "level", "latitude", "longitude"),
                q.astype(f32),
                {"units": "kg kg**-1"},
            ),
            "u_component_of_wind": (
                ("time", "level", "latitude", "longitude"),
                u.astype(f32),
                {"units": "m s**-1"},
            ),
            "v_component_of_wind": (
                ("time", "level", "latitude", "longitude"),
                v.astype(f32),
                {"units": "m s**-1"},
            ),
            "mean_sea_level_pressure": (
                ("time", "latitude", "longitude"),
                msl.astype(f32),
                {"units": "Pa"},
            ),
            "total_precipitation": (("time", "latitude", "longitude"), tp, {"units": "m"}),
            "2m_temperature": (
                ("time", "latitude", "longitude"),
                np.full(anom.shape, 288.0, f32),
                {"units": "K"},
            ),
        },
        coords=coords,
    )


def write_arco_store(path: Path, fields: xr.Dataset) -> Path:
    """ARCO-ERA5 layout: one Zarr store (format 2), chunked one hour x all levels x globe."""
    enc = {name: {"chunks": (1, *fields[name].shape[1:])} for name in fields.data_vars}
    fields.to_zarr(path, mode="w", zarr_format=2, consolidated=True, encoding=enc)
    return path


def write_cds_files(directory: Path, fields: xr.Dataset) -> Path:
    """CDS-style netCDF: one file per variable and month, ERA5 short names, valid_time."""
    directory.mkdir(parents=True, exist_ok=True)
    hours = fields["time"].values
    when = np.datetime64("1900-01-01T00", "h") + hours.astype("timedelta64[h]")
    months = when.astype("datetime64[M]")
    for long, short in SHORT.items():
        da = fields[long]
        for m in np.unique(months):
            sel = months == m
            part = da.isel(time=np.flatnonzero(sel)).rename(
                {
                    "time": "valid_time",
                    **({"level": "pressure_level"} if "level" in da.dims else {}),
                }
            )
            part = part.assign_coords(
                valid_time=(
                    "valid_time",
                    ((when[sel] - np.datetime64("1970-01-01T00", "h")).astype(np.int64) * 3600),
                    {"units": "seconds since 1970-01-01", "calendar": "proleptic_gregorian"},
                )
            )
            out = part.to_dataset(name=short)
            out.to_netcdf(directory / f"era5_{short}_{m!s}.nc")
    return directory


PREDICTORS = ("hus850", "ua850", "va850", "psl")


def store_experiment(
    tmp: Path,
    *,
    days: int = 10,
    start: str = "2000-01-01",
    steps: int = 6,
    batch: int = 4,
    workers: int = 0,
    nlat: int = 33,
    nlon: int = 64,
) -> dict[str, Any]:
    """A whole experiment on a tiny ARCO-layout store: prepare, both stages, bundle.

    Writes ``tmp/arco.zarr`` and returns the config as a plain dict (YAML-able);
    the last two days are the validation split.
    """
    fields = hourly_fields(days=days, start=start, nlat=nlat, nlon=nlon)
    write_arco_store(tmp / "arco.zarr", fields)
    first = np.datetime64(start, "D")
    last = first + np.timedelta64(days - 1, "D")
    split = {"validation_start": str(last - np.timedelta64(1, "D")), "validation_end": str(last)}
    store = str(tmp / "store.zarr")
    loop = {
        "validate_every": max(steps // 2, 1),
        "checkpoint_every": max(steps // 2, 1),
        "log_every": 1,
        "progress": False,
        "workers": workers,
    }
    optim = {"steps": steps, "batch_size": batch, "lr": 0.002, "warmup_steps": 2, "ema_decay": 0.9}
    tiny = {"base_channels": 8, "channel_mult": [1, 2], "num_blocks": 1}
    return {
        "run_dir": str(tmp / "run"),
        "seed": 0,
        "device": "cpu",
        "transform": {"kind": "log1p", "eps": 0.1},
        "prepare": {
            "out": store,
            "data_root": str(tmp),
            "target": {"name": "pr", "path": "arco.zarr"},
            "predictors": [{"name": n, "path": "arco.zarr"} for n in PREDICTORS],
            "start": str(first),
            "end": str(last),
            "split": split,
            "crop_lat": [0, nlat - 1],
            "days_per_task": 3,
            "fine_chunk": [8, 16],
        },
        "regression": {
            "data": {
                "store": store,
                "target": {"name": "pr"},
                "predictors": [{"name": n} for n in PREDICTORS],
                "split": split,
            },
            "model": {**tiny, "periodic_lon": True},
            "loss": "mse_physical",
            "optim": optim,
            "loop": loop,
        },
        "diffusion": {
            "data": {"store": store, "target": {"name": "pr"}, "split": split},
            "model": {**tiny, "noise_channels": 8},
            "patch_size": [16, 16],
            "sigma_c": 0.1,
            "optim": optim,
            "loop": loop,
        },
        "bundle": {
            "out": str(tmp / "bundle"),
            "name": "tiny-era5-store",
            "description": "test bundle from a synthetic ARCO-ERA5 store",
            "sampler": {"name": "euler", "steps": 2},
            "denoiser_periodic_lon": True,
            "members": 2,
            "max_eval_samples": 2,
        },
    }


def config(raw: dict[str, Any]) -> TrainConfig:
    """Validate a config dict as ``load_config`` would."""
    return from_dict(TrainConfig, raw)
