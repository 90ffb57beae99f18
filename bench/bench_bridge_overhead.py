"""Bridge benchmarks, measured side by side in one run.

1. Per-call overhead of the bridge (Fortran -> C -> Python -> C -> Fortran) with a
   no-op plugin, in microseconds per call, next to the same no-op calls made
   directly from Python (what the bridge adds).
2. A tiny-bundle model driven from Fortran vs from Python (same namelist, same
   fields, each in a fresh process): ratio of the time-stepping loops (target <= 1.05).
3. Start-up: precipdiff_init from Fortran (interpreter start + imports + bundle load)
   vs Python (imports + Plugin.from_namelist) in a fresh process.
4. (``--ftorch``) Glue vs networks, FTorch-like: whole windows of a global bundle
   (default ``models/era5-global-shape``, 1 regression + the sampler's denoiser
   evaluations at 721x1440) driven from Fortran through precipdiff, next to the same
   networks traced to TorchScript (from the same weights, as written before issue
   #15: explicit padding) and run by a native C++ libtorch program
   (``bench/ftorch_like_window.cpp``: what FTorch does, no Python at all) with
   torch's default allocator, and with glibc told to keep freed memory
   (``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_``: process-wide, fine for a
   benchmark, not for a parameterization inside someone else's model). precipdiff
   runs with its defaults and with ``torch_allocator = 'default'``. Rounds alternate
   the programs; 2 torch threads.

Usage:  .venv/bin/python bench/bench_bridge_overhead.py [--build-dir build] [--repeat 3]
        [--only-overhead] [--json]   (part 1 only / as JSON: bench/compare_bridge_overhead.py)
        .venv/bin/python bench/bench_bridge_overhead.py --ftorch [--windows 3] [--repeat 3]
Needs the CMake build (tests/fortran/pd_replay_driver); part 4 also a C++ compiler (the
libtorch program is compiled once into ~/.cache/precipdiff). Parts 1-3 use 1 torch thread.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "python"))

from bridge_helpers import run_driver  # noqa: E402


class NoOpPlugin:
    """Plugin contract with no work: isolates the bridge's own cost."""

    def __init__(self, lon: np.ndarray, lat: np.ndarray) -> None:
        self.required_fields = ["hus850", "ua850", "va850", "psl"]
        self.model_shape = (lat.size, lon.size)
        self.fine_shape = self.model_shape
        self.fine_lon, self.fine_lat = np.asarray(lon), np.asarray(lat)
        self._out = np.zeros(self.model_shape)

    @classmethod
    def from_namelist(cls, nml_path: str, lon, lat, rank: int | None = None) -> NoOpPlugin:
        return cls(lon, lat)

    def set_field(self, name, values, pressure=None) -> None:
        pass

    def step(self, model_time_s: float, dt_s: float) -> bool:
        return False

    def output_fine(self) -> np.ndarray:
        return self._out

    def output_model(self) -> np.ndarray:
        return self._out

    def write_restart(self, path: str) -> None:
        pass

    def read_restart(self, path: str) -> None:
        pass

    def close(self) -> None:
        pass


PY_LOOP = r"""
import json, sys, time
import numpy as np
t0 = time.perf_counter()
from precipdiff.server import Plugin
spec = json.load(open(sys.argv[1]))
lon, lat = np.array(spec["lon"]), np.array(spec["lat"])
p = Plugin.from_namelist(spec["nml"], lon, lat, rank=0)
t1 = time.perf_counter()
data = np.load(spec["fields"])
names = spec["names"]
dt = spec["dt"]
t2 = time.perf_counter()
for s in range(data.shape[0]):
    for k, n in enumerate(names):
        p.set_field(n, data[s, k])
    p.step((s + 1) * dt, dt)
t3 = time.perf_counter()
p.close()
print(json.dumps({"init_s": t1 - t0, "run_s": t3 - t2}))
"""


def bench_overhead(build: Path, work: Path, repeat: int, nlat: int, nlon: int) -> dict[str, float]:
    from precipdiff.server.capi import Bridge

    lon = np.linspace(0.5, 359.5, nlon)
    lat = np.linspace(-90.0, 90.0, nlat)
    rng = np.random.default_rng(0)
    step = {n: rng.random((lat.size, lon.size)) for n in ("hus850", "ua850", "va850", "psl")}
    nml = work / "noop.nml"
    nml.write_text("&precipdiff_nml\n bundle_path = 'none'\n/\n")
    env = {
        # Keep a caller's PYTHONPATH (compare_bridge_overhead.py points it at another tree).
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(REPO / "bench"), os.environ.get("PYTHONPATH")])
        ),
        "PRECIPDIFF_PLUGIN_CLASS": "bench_bridge_overhead:NoOpPlugin",
    }
    nrep = 2000
    best = np.inf
    for _ in range(repeat):
        res = run_driver(build, nml, work, lon, lat, [step], 3600.0, None, 8, nrep, env)
        if res.errflg:
            raise SystemExit(f"driver failed: {res.errmsg}\n{res.stderr}")
        calls = res.value("CALLS") * 5  # 4 x set_field + 1 x run per step
        best = min(best, res.value("RUN_S") / calls)

    # The same calls from Python through the bridge's Python layer only.
    os.environ["PRECIPDIFF_PLUGIN_CLASS"] = "bench_bridge_overhead:NoOpPlugin"
    sys.path.insert(0, str(REPO / "bench"))
    b = Bridge()
    h = b.create(str(nml), lon, lat)
    py_best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        for s in range(nrep):
            for n, v in step.items():
                b.set_field(h, n, v, None)
            b.step(h, (s + 1) * 3600.0, 3600.0)
        py_best = min(py_best, (time.perf_counter() - t0) / (nrep * 5))
    b.destroy(h)
    del os.environ["PRECIPDIFF_PLUGIN_CLASS"]
    return {"fortran_us": best * 1e6, "python_us": py_best * 1e6}


def bench_model(build: Path, work: Path, repeat: int, bundle: Path | None) -> dict[str, float]:
    from precipdiff.grids import LatLonGrid
    from precipdiff.testing.models import make_tiny_bundle

    if bundle is None:
        coarse = LatLonGrid.regular(1.0, lat_min=20.5, lat_max=51.5, lon_min=0.5, lon_max=63.5)
        fine = LatLonGrid.regular(
            0.25, lat_min=20.125, lat_max=51.875, lon_min=0.125, lon_max=63.875
        )
        model = LatLonGrid.regular(2.0, lat_min=21.0, lat_max=51.0, lon_min=1.0, lon_max=63.0)
        bundle = make_tiny_bundle(work / "bundle", coarse_grid=coarse, fine_grid=fine,
                                  base_channels=16, seed=0, overwrite=True)  # fmt: skip
        base = {"hus850": 0.007, "ua850": 5.0, "va850": -2.0, "psl": 101300.0}
        scale = {"hus850": 0.003, "ua850": 4.0, "va850": 3.0, "psl": 900.0}
    else:
        # A shipped bundle: the ESM grid is the bundle's coarse grid and the fields are
        # drawn around the bundle's own normalisation statistics (plausible values).
        from precipdiff.bundle import read_manifest

        manifest = read_manifest(bundle)
        model = manifest.coarse_grid_obj()
        norm = manifest.normalisation["predictors"]
        base = {n: float(norm[n]["mean"]) for n in manifest.variable_names()}
        scale = {n: float(norm[n]["std"]) for n in manifest.variable_names()}
    nml = work / "model.nml"
    nml.write_text(
        f"&precipdiff_nml\n bundle_path = '{bundle}', device = 'cpu', torch_threads = 1,\n"
        " members = 1, sampler_steps = 8, window_s = 86400.0\n/\n"
    )
    dt = 21600.0
    nstep = 8  # two windows
    rng = np.random.default_rng(1)
    steps = [
        {n: base[n] + scale[n] * rng.standard_normal(model.shape) for n in base}
        for _ in range(nstep)
    ]
    names = list(base)
    np.save(work / "fields.npy", np.array([[s[n] for n in names] for s in steps]))
    spec = {"nml": str(nml), "lon": model.lon.tolist(), "lat": model.lat.tolist(),
            "fields": str(work / "fields.npy"), "names": names, "dt": dt}  # fmt: skip
    (work / "spec.json").write_text(json.dumps(spec))

    f_run, p_run, f_init, p_init = [], [], [], []
    for _ in range(repeat):  # alternate so drifting machine load hits both
        res = run_driver(build, nml, work, model.lon, model.lat, steps, dt, None, 8)
        if res.errflg:
            raise SystemExit(f"driver failed: {res.errmsg}\n{res.stderr}")
        f_run.append(res.value("RUN_S"))
        f_init.append(res.value("INIT_S"))
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        out = subprocess.run([sys.executable, "-c", PY_LOOP, str(work / "spec.json")],
                             capture_output=True, text=True, env=env, check=True)  # fmt: skip
        r = json.loads(out.stdout.strip().splitlines()[-1])
        p_run.append(r["run_s"])
        p_init.append(r["init_s"])
    return {"fortran_run_s": min(f_run), "python_run_s": min(p_run),
            "fortran_init_s": min(f_init), "python_init_s": min(p_init)}  # fmt: skip


def build_ftorch_like() -> Path:
    """Compile bench/ftorch_like_window.cpp against the wheel's libtorch (cached)."""
    import hashlib

    import torch

    from precipdiff.perf.allocator import cache_dir

    src = REPO / "bench" / "ftorch_like_window.cpp"
    root = Path(torch.__file__).resolve().parent
    key = hashlib.sha256(src.read_bytes() + str(root).encode()).hexdigest()[:16]
    exe = cache_dir() / f"ftorch_like_window-{key}"
    if exe.is_file():
        return exe
    exe.parent.mkdir(parents=True, exist_ok=True)
    tmp = exe.with_suffix(".tmp")
    api = root / "include" / "torch" / "csrc" / "api" / "include"
    cmd = [os.environ.get("CXX", "c++"), "-O1", "-std=c++17", f"-I{root / 'include'}",
           f"-I{api}", str(src), f"-L{root / 'lib'}", "-ltorch", "-ltorch_cpu", "-lc10",
           f"-Wl,-rpath,{root / 'lib'}", "-o", str(tmp)]  # fmt: skip
    print("   compiling the FTorch-like libtorch program (minutes on a loaded machine) ...")
    subprocess.run(cmd, check=True)
    os.replace(tmp, exe)
    return exe


def trace_networks(bundle: Path, work: Path) -> tuple[Path, Path]:
    """The bundle's networks as TorchScript, in the formulation before issue #15."""
    import warnings

    import torch

    from precipdiff.bundle import load_bundle

    b = load_bundle(bundle, "cpu")
    for p in [*b.regression.parameters(), *b.denoiser.parameters()]:
        p.requires_grad_(False)
    c_reg = b.manifest.regression_config().in_channels
    c_den = b.manifest.denoiser_config().in_channels
    x = torch.zeros(1, c_reg, *b.coarse_grid.shape)
    y = torch.zeros(1, 1, *b.fine_grid.shape)
    cond = torch.zeros(1, c_den - 1, *b.fine_grid.shape)
    with warnings.catch_warnings(), torch.enable_grad():  # explicit padding, no graph built
        warnings.simplefilter("ignore")
        reg = torch.jit.trace(b.regression, (x,), check_trace=False)
        den = torch.jit.trace(b.denoiser, (y, torch.ones(1), cond), check_trace=False)
    paths = work / "reg.pt", work / "den.pt"
    reg.save(str(paths[0]))
    den.save(str(paths[1]))
    return paths


def bench_ftorch(build: Path, work: Path, bundle: Path, repeat: int, windows: int) -> None:
    """Part 4: precipdiff's whole window from Fortran vs the networks alone in C++."""
    import statistics

    from precipdiff.bundle import read_manifest

    m = read_manifest(bundle)
    exe = build_ftorch_like()
    reg_pt, den_pt = trace_networks(bundle, work)
    model = m.coarse_grid_obj()
    norm = m.normalisation["predictors"]
    rng = np.random.default_rng(1)
    dt = 21600.0
    steps = [
        {n: norm[n]["mean"] + norm[n]["std"] * rng.standard_normal(model.shape)
         for n in m.variable_names()}
        for _ in range(4 * windows)
    ]  # fmt: skip
    nfe = m.sampler_config().nfe
    nmls = {}
    for name, extra in (
        ("precipdiff (defaults)", ""),
        ("precipdiff, torch_allocator='default'", "torch_allocator = 'default',"),
    ):
        nml = work / f"part4_{len(nmls)}.nml"
        nml.write_text(
            f"&precipdiff_nml\n bundle_path = '{bundle}', device = 'cpu', torch_threads = 2,\n"
            f" {extra} members = 1, window_s = 86400.0\n/\n"
        )
        nmls[name] = nml
    cpp = {
        "FTorch-like (libtorch C++)": {},
        "FTorch-like, glibc keeps memory": {
            "MALLOC_MMAP_THRESHOLD_": str(1 << 30),
            "MALLOC_TRIM_THRESHOLD_": str(1 << 30),
        },
    }
    cpp_args = [str(exe), str(reg_pt), str(den_pt), str(len(m.variables))]
    cpp_args += [str(v) for v in (*m.coarse_grid_obj().shape, *m.fine_grid_obj().shape)]
    cpp_args += [str(nfe), str(windows), "2"]
    runs: dict[str, list[float]] = {k: [] for k in [*nmls, *cpp]}
    for r in range(repeat):
        for name, nml in nmls.items():
            res = run_driver(build, nml, work, model.lon, model.lat, steps, dt, None, 8,
                             env={"OMP_NUM_THREADS": "2"}, timeout=7200)  # fmt: skip
            if res.errflg or res.returncode:
                raise SystemExit(f"driver failed: {res.errmsg}\n{res.stderr[-2000:]}")
            runs[name].append(res.value("RUN_S") / windows)
        for name, env in cpp.items():
            out = subprocess.run(cpp_args, capture_output=True, text=True, check=True,
                                 env={**os.environ, "OMP_NUM_THREADS": "2", **env})  # fmt: skip
            runs[name].append(float(out.stdout.split("RUN_S")[1].split()[0]) / windows)
        print(f"   round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in runs.items()),
              flush=True)  # fmt: skip
    ref = statistics.median(runs["FTorch-like (libtorch C++)"])
    print(f"4. glue vs networks: {bundle.name}, {windows} windows of 1 regression + {nfe} "
          "denoiser forwards (first window included), 2 threads, "
          f"median of {repeat} rounds")  # fmt: skip
    for k, v in runs.items():
        med = statistics.median(v)
        print(f"   {k:40s} {med:8.2f} s/window   ratio to FTorch-like {med / ref:6.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_build = Path(os.environ.get("PRECIPDIFF_BUILD_DIR", REPO / "build"))
    ap.add_argument("--build-dir", type=Path, default=default_build)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--bundle",
        type=Path,
        default=None,
        help="model bundle for part 2 (e.g. models/iberia-demo); default: a tiny random bundle",
    )
    ap.add_argument("--only-overhead", action="store_true", help="part 1 only")
    ap.add_argument("--json", action="store_true", help="print part 1 as one JSON line")
    ap.add_argument("--ftorch", action="store_true", help="only part 4 (glue vs networks)")
    ap.add_argument("--windows", type=int, default=3, help="windows per run in part 4")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.ftorch:
            bundle = (args.bundle or REPO / "models" / "era5-global-shape").resolve()
            bench_ftorch(args.build_dir, work, bundle, args.repeat, args.windows)
            return
        if args.json:
            res = {
                f"{nlat}x{nlon}": bench_overhead(args.build_dir, work, args.repeat, nlat, nlon)
                for nlat, nlon in ((4, 8), (181, 360))
            }
            print(json.dumps(res))
            return
        print("1. per-call overhead, no-op plugin, float64 fields (best of repeats)")
        for nlat, nlon in ((4, 8), (181, 360)):
            o = bench_overhead(args.build_dir, work, args.repeat, nlat, nlon)
            print(f"   grid {nlat}x{nlon}:")
            print(f"     Fortran -> C -> Python -> Fortran : {o['fortran_us']:8.2f} us/call")
            print(f"     Python -> capi.Bridge (no C)      : {o['python_us']:8.2f} us/call")
            print(f"     bridge's own cost (difference)    : "
                  f"{o['fortran_us'] - o['python_us']:8.2f} us/call")  # fmt: skip
        if args.only_overhead:
            return
        bundle = args.bundle.resolve() if args.bundle else None  # the namelist lives in a temp dir
        m = bench_model(args.build_dir, work, args.repeat, bundle)
        what = (
            f"bundle {args.bundle} on its own coarse grid"
            if args.bundle
            else "tiny bundle (base 16, 32x64 -> 128x256, 8 sampler steps)"
        )
        print(f"2. {what}, 8 steps = 2 windows")
        print(f"   run loop from Fortran : {m['fortran_run_s']:8.3f} s")
        print(f"   run loop from Python  : {m['python_run_s']:8.3f} s")
        print(f"   ratio Fortran/Python  : {m['fortran_run_s'] / m['python_run_s']:8.3f}"
              "  (target <= 1.05)")  # fmt: skip
        print("3. start-up (fresh process)")
        print(f"   precipdiff_init from Fortran (interpreter + imports + bundle): "
              f"{m['fortran_init_s']:6.2f} s")  # fmt: skip
        print(f"   imports + Plugin.from_namelist from Python:                   "
              f"{m['python_init_s']:6.2f} s")  # fmt: skip


if __name__ == "__main__":
    main()
