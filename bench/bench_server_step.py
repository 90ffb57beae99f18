"""Per-step cost of the embedded server's Plugin, and what lagged inference saves.

Side by side in one run:

1. Per ESM timestep without a window close: the Plugin's ``set_field`` x4 +
   ``step`` on a 1-degree ESM grid, against the floor of adding the same four
   fields into float64 sums with numpy (ratio printed), and the 3-D path (three
   32-level fields interpolated in log-pressure).
2. A run of a few "days" with a real tiny bundle and an ESM that does some work
   per step: wall time with ``inference = 'sync'`` and ``'lagged'`` (ratio
   printed). Lagged inference overlaps the generator with the ESM's steps.

Usage: ``.venv/bin/python bench/bench_server_step.py [--days N] [--threads T]``.
Numbers depend on the machine and its load; compare only within one run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from precipdiff.grids import LatLonGrid
from precipdiff.server import Plugin, PluginConfig, PredictorSpec


class ZeroEngine:
    """Engine whose inference costs nothing (isolates the Plugin's own work)."""

    def __init__(self, coarse: LatLonGrid, fine: LatLonGrid) -> None:
        self.predictors = [
            PredictorSpec("hus850", 850.0, (), ("hus",)),
            PredictorSpec("ua850", 850.0, (), ("ua",)),
            PredictorSpec("va850", 850.0, (), ("va",)),
            PredictorSpec("psl"),
        ]
        self.coarse_lat, self.coarse_lon = coarse.lat, coarse.lon
        self.fine_lat, self.fine_lon = fine.lat, fine.lon
        self.bundle_id = "zero"
        self.fine_shape = fine.shape

    def generate(self, p, members, seed, window, steps, cm):  # type: ignore[no-untyped-def]
        return np.zeros((members, *self.fine_shape))

    def bias_correct(self, p, d):  # type: ignore[no-untyped-def]
        return p

    def bias_state(self):  # type: ignore[no-untyped-def]
        return {}

    def load_bias_state(self, s):  # type: ignore[no-untyped-def]
        return None


def per_call(fn: Callable[[int], None], n: int) -> float:
    fn(0)
    t0 = time.perf_counter()
    for i in range(1, n + 1):
        fn(i)
    return (time.perf_counter() - t0) / n


def bench_step_cost() -> None:
    model = LatLonGrid.regular(1.0)
    eng = ZeroEngine(LatLonGrid.regular(2.0), LatLonGrid.regular(0.5))
    cfg = PluginConfig(bundle_path="unused", window_s=86400.0 * 365)
    dt = 1800.0
    rng = np.random.default_rng(0)
    fields = {n: rng.random(model.shape) for n in ("hus850", "ua850", "va850", "psl")}
    plugin = Plugin(cfg, model.lon, model.lat, eng, rank=0)

    def plugin_step(i: int) -> None:
        for k, v in fields.items():
            plugin.set_field(k, v)
        plugin.step((i + 1) * dt, dt)

    sums = {k: np.zeros(model.shape) for k in fields}

    def floor_step(i: int) -> None:
        for k, v in fields.items():
            np.add(sums[k], v, out=sums[k])

    n = 200
    t_plugin = per_call(plugin_step, n)
    t_floor = per_call(floor_step, n)
    print(f"[step] ESM grid {model.shape}, 4 fields, no window close")
    print(f"  plugin set_field x4 + step : {t_plugin * 1e3:8.3f} ms/step")
    print(f"  numpy floor (4 in-place adds): {t_floor * 1e3:8.3f} ms/step")
    print(f"  ratio plugin / floor       : {t_plugin / t_floor:8.2f}")

    nlev = 32
    p3 = np.linspace(1000.0, 100000.0, nlev)[:, None, None] * np.ones((1, *model.shape))
    q3 = rng.random((nlev, *model.shape))
    plugin3 = Plugin(cfg, model.lon, model.lat, eng, rank=0)

    def step3d(i: int) -> None:
        for base in ("hus", "ua", "va"):
            plugin3.set_field(base, q3, p3)
        plugin3.set_field("psl", fields["psl"])
        plugin3.step((i + 1) * dt, dt)

    t3 = per_call(step3d, 20)
    print(
        f"  3-D: 3 fields x {nlev} levels (log-p) + psl: {t3 * 1e3:8.3f} ms/step "
        f"(ratio to 2-D plugin step {t3 / t_plugin:.1f})"
    )


def bench_lag(days: int) -> None:
    from precipdiff.testing.models import make_tiny_bundle

    coarse = LatLonGrid.regular(2.0, lat_min=20.0, lat_max=58.0, lon_min=0.0, lon_max=78.0)
    fine = LatLonGrid.regular(0.5, lat_min=19.25, lat_max=58.75, lon_min=-0.75, lon_max=78.75)
    model = LatLonGrid.regular(1.0, lat_min=19.5, lat_max=58.5, lon_min=-0.5, lon_max=78.5)
    steps_per_day = 24
    dt = 86400.0 / steps_per_day
    rng = np.random.default_rng(1)
    lat2 = np.broadcast_to(model.lat[:, None], model.shape)
    fields = {
        "hus850": 0.006 + 0.002 * np.cos(np.deg2rad(lat2)),
        "ua850": 5.0 + rng.standard_normal(model.shape),
        "va850": rng.standard_normal(model.shape),
        "psl": 101300.0 + 500.0 * rng.standard_normal(model.shape),
    }
    work = rng.random((900, 900))
    with tempfile.TemporaryDirectory() as tmp:
        bundle = make_tiny_bundle(
            Path(tmp) / "b", coarse_grid=coarse, fine_grid=fine, base_channels=16
        )
        results = {}
        for mode in ("sync", "lagged"):
            nml = Path(tmp) / f"{mode}.nml"
            nml.write_text(
                f"&precipdiff_nml\n bundle_path = '{bundle}', device = 'cpu', members = 4,\n"
                f" sampler_steps = 8, inference = '{mode}'\n/\n"
            )
            plugin = Plugin.from_namelist(str(nml), model.lon, model.lat)
            t0 = time.perf_counter()
            ready = 0
            for s in range(days * steps_per_day):
                _ = work @ work  # the ESM's own work this step
                for k, v in fields.items():
                    plugin.set_field(k, v)
                ready += plugin.step((s + 1) * dt, dt)
            plugin.close()
            results[mode] = (time.perf_counter() - t0, ready)
    print(
        f"[lag] {days} days x {steps_per_day} steps, tiny bundle {coarse.shape}->{fine.shape}, "
        "4 members x 8 sampler steps, torch threads",
        torch.get_num_threads(),
    )
    for mode, (t, r) in results.items():
        print(f"  {mode:7s}: {t:7.2f} s wall, {r} results handed back")
    print(f"  ratio lagged / sync wall time: {results['lagged'][0] / results['sync'][0]:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bench_step_cost()
    bench_lag(args.days)


if __name__ == "__main__":
    main()
