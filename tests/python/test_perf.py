"""precipdiff.perf: caching allocator, floating-point environment, precision, process set-up.

Allocator tests run in subprocesses: installing it changes torch's CPU allocator for the
rest of a process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from precipdiff.errors import BundleError, ConfigError
from precipdiff.perf import fpenv, precision
from precipdiff.perf.process import ProcessSettings


def _run(code: str, env: dict[str, str] | None = None, timeout: int = 300) -> dict:
    full_env = {**os.environ, "OMP_NUM_THREADS": "2", **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------ allocator
def test_caching_allocator_reuses_blocks_and_uninstalls() -> None:
    out = _run(
        """
        import json, resource, torch
        from precipdiff.perf import allocator
        conv = torch.nn.Conv2d(8, 8, 3, padding=1)
        x = torch.randn(1, 8, 768, 1536)         # 36 MiB activations: above glibc's mmap cap

        def faults(n):
            with torch.inference_mode():
                r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                for _ in range(n):
                    y = conv(conv(x))             # oneDNN (raw_allocate path) and ATen
                return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0, y

        with torch.inference_mode():
            ref = conv(conv(x))
        plain, _ = faults(4)
        assert allocator.install() is True and allocator.install() is False
        faults(1)
        cached, y = faults(4)
        s = allocator.stats()
        small = torch.ones(10) * 2                # below min_block: passes through
        freed = allocator.release()
        after_release = allocator.stats()
        assert allocator.uninstall() is True
        z = torch.randn(1, 8, 256, 512) + 1       # torch's own allocator again
        print(json.dumps({
            "equal": bool(torch.equal(y, ref)), "hits": s.hits, "misses": s.misses,
            "installed": s.installed, "cached": s.cached_bytes, "faults": cached,
            "faults_plain": plain,
            "freed": freed, "cached_after_release": after_release.cached_bytes,
            "installed_after": allocator.installed(), "small_ok": float(small.sum()) == 20.0,
            "z_ok": bool(torch.isfinite(z).all()),
        }))
        """
    )
    assert out["installed"] and out["equal"] and out["small_ok"] and out["z_ok"]
    assert out["hits"] >= 10 and out["hits"] > out["misses"]
    assert out["cached"] >= 36 << 20 and out["freed"] == out["cached"]
    assert out["cached_after_release"] == 0 and not out["installed_after"]
    # re-used blocks are not page-faulted again: torch's own allocator re-faults every
    # 36 MiB activation (mmap/munmap), about 9000 faults per block
    assert out["faults_plain"] > 20000
    assert out["faults"] < out["faults_plain"] / 10


def test_allocator_unavailable_is_reported_or_fatal(tmp_path: Path) -> None:
    env = {"PRECIPDIFF_CACHE_DIR": str(tmp_path), "CXX": "no-such-compiler-xyz"}
    out = _run(
        """
        import json
        from precipdiff.errors import ConfigError
        from precipdiff.perf.process import ProcessSettings, configure
        rep = configure(ProcessSettings(allocator="auto"))
        try:
            configure(ProcessSettings(allocator="caching"))
            fatal = ""
        except ConfigError as exc:
            fatal = str(exc)
        print(json.dumps({"used": rep.allocator, "notes": rep.notes, "fatal": fatal}))
        """,
        env=env,
    )
    assert out["used"] == "default"
    assert "no-such-compiler-xyz" in out["notes"][0]
    assert "torch_allocator = 'caching'" in out["fatal"] and "compiler" in out["fatal"]


def test_allocator_library_path_follows_environment(tmp_path: Path, monkeypatch) -> None:
    from precipdiff.perf import allocator

    monkeypatch.setenv("PRECIPDIFF_CACHE_DIR", str(tmp_path))
    p = allocator.library_path()
    assert p.parent == tmp_path and torch.__version__.split("+")[0] in p.name
    monkeypatch.setenv("PRECIPDIFF_TORCH_CACHE_LIB", str(tmp_path / "given.so"))
    assert allocator.library_path() == tmp_path / "given.so"
    with pytest.raises(ConfigError, match="does not exist"):
        allocator.build_library()


# ---------------------------------------------------------------------------- fpenv
def test_flush_denormals_is_scoped_and_restores_the_environment() -> None:
    assert not fpenv.denormals_flushed()
    before = fpenv.get_fenv()
    with fpenv.flush_denormals():
        assert fpenv.denormals_flushed()
    assert not fpenv.denormals_flushed()
    with pytest.raises(RuntimeError), fpenv.flush_denormals():
        raise RuntimeError("inside")
    assert not fpenv.denormals_flushed()
    # a caller that flushes itself gets exactly that back
    torch.set_flush_denormal(True)
    try:
        with fpenv.flush_denormals(enabled=False):
            torch.set_flush_denormal(False)
        assert fpenv.denormals_flushed()
    finally:
        fpenv.set_fenv(before)
    assert not fpenv.denormals_flushed()


def test_configure_starts_worker_threads_that_flush() -> None:
    out = _run(
        """
        import json, torch
        from precipdiff.perf.fpenv import flush_denormals, denormals_flushed
        from precipdiff.perf.process import ProcessSettings, configure
        rep = configure(ProcessSettings(threads=2, allocator="default", flush_denormals=True))
        x = torch.full((1 << 22,), 1e-39)
        with flush_denormals():
            inside = int(((x * 0.5) != 0).sum())
        print(json.dumps({"inside": inside, "main_after": denormals_flushed(),
                          "threads": rep.threads, "notes": rep.notes}))
        """
    )
    assert out["threads"] == 2 and out["notes"] == []
    assert out["inside"] == 0  # both threads flushed
    assert out["main_after"] is False


def test_process_settings_validation() -> None:
    with pytest.raises(ConfigError, match="allocator"):
        ProcessSettings(allocator="jemalloc")
    with pytest.raises(ConfigError, match="threads"):
        ProcessSettings(threads=-1)


# ------------------------------------------------------------------------ precision
def test_precision_names_and_device_rules() -> None:
    assert precision.resolve_precision("bundle", {"cpu": "bf16"}, "cpu") == "bf16"
    assert precision.resolve_precision("float32", {"cpu": "bf16"}, "cpu") == "float32"
    with pytest.raises(ConfigError, match=r"fp16.*CUDA"):
        precision.resolve_precision("fp16", {}, "cpu")
    with pytest.raises(ConfigError, match="not one of"):
        precision.check_precision("int8", "cpu")
    assert precision.dtype_of("bf16") is torch.bfloat16
    assert precision.validate_manifest_precision({"cuda": "fp16"}) == {
        "cpu": "float32",
        "cuda": "fp16",
    }
    with pytest.raises(ConfigError, match="unknown device"):
        precision.validate_manifest_precision({"tpu": "bf16"})


def test_inference_copy_is_frozen_and_leaves_the_original() -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), torch.nn.GroupNorm(2, 4))
    cp = precision.inference_copy(net, "bf16", "channels_last")
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in cp.parameters())
    assert cp[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert all(p.dtype == torch.float32 and p.requires_grad for p in net.parameters())
    assert not cp.training


def test_manifest_precision_is_validated(tmp_path: Path) -> None:
    from precipdiff.bundle import read_manifest
    from precipdiff.grids import LatLonGrid
    from precipdiff.testing.models import make_tiny_bundle

    fine = LatLonGrid.regular(1.0, lat_min=30.5, lat_max=45.5, lon_min=0.5, lon_max=15.5)
    coarse = LatLonGrid.regular(4.0, lat_min=32.0, lat_max=44.0, lon_min=2.0, lon_max=14.0)
    b = make_tiny_bundle(tmp_path / "b", coarse_grid=coarse, fine_grid=fine)
    data = json.loads((b / "manifest.json").read_text())
    assert data["precision"] == {"cpu": "float32", "cuda": "float32"}
    data["precision"] = {"cpu": "fp16"}
    (b / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="fp16"):
        read_manifest(b)
    # a manifest written before the field existed reads as float32
    del data["precision"]
    (b / "manifest.json").write_text(json.dumps(data))
    assert read_manifest(b).precision == {"cpu": "float32", "cuda": "float32"}


def test_generator_bf16_is_close_to_float32_and_selected_by_the_bundle(tmp_path: Path) -> None:
    from precipdiff.bundle import read_manifest, write_manifest
    from precipdiff.generator import PrecipGenerator
    from precipdiff.grids import LatLonGrid
    from precipdiff.testing.models import DEFAULT_VARIABLES, make_tiny_bundle, random_predictors

    fine = LatLonGrid.regular(1.0, lat_min=30.5, lat_max=45.5, lon_min=0.5, lon_max=15.5)
    coarse = LatLonGrid.regular(4.0, lat_min=32.0, lat_max=44.0, lon_min=2.0, lon_max=14.0)
    b = make_tiny_bundle(tmp_path / "b", coarse_grid=coarse, fine_grid=fine, seed=2)
    x = random_predictors(DEFAULT_VARIABLES, coarse, times=1, seed=3)
    f32 = PrecipGenerator.from_bundle(b, device="cpu")
    assert f32.precision == "float32"
    r32 = f32.generate(x, members=2, seed=4)
    bf = PrecipGenerator.from_bundle(b, device="cpu", precision="bf16")
    r16 = bf.generate(x, members=2, seed=4)
    assert r16.attrs["precision"] == "bf16" and r32.attrs["precision"] == "float32"
    np.testing.assert_array_equal(r16.coarse, r32.coarse)  # the regression stays float32
    assert np.isfinite(r16.fine).all() and not np.array_equal(r16.fine, r32.fine)
    z32, z16 = np.log1p(r32.fine), np.log1p(r16.fine)
    assert float(np.abs(z16 - z32).mean()) < 0.05 * float(z32.std())
    m = read_manifest(b)
    m.precision = {"cpu": "bf16", "cuda": "bf16"}
    write_manifest(b, m)
    assert PrecipGenerator.from_bundle(b, device="cpu").precision == "bf16"
    with pytest.raises(ConfigError, match="fp16"):
        PrecipGenerator.from_bundle(b, device="cpu", precision="fp16")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_generator_fp16_and_bf16_on_cuda(tmp_path: Path) -> None:
    from precipdiff.generator import PrecipGenerator
    from precipdiff.grids import LatLonGrid
    from precipdiff.testing.models import DEFAULT_VARIABLES, make_tiny_bundle, random_predictors

    fine = LatLonGrid.regular(1.0, lat_min=30.5, lat_max=45.5, lon_min=0.5, lon_max=15.5)
    coarse = LatLonGrid.regular(4.0, lat_min=32.0, lat_max=44.0, lon_min=2.0, lon_max=14.0)
    b = make_tiny_bundle(tmp_path / "b", coarse_grid=coarse, fine_grid=fine, seed=2)
    x = random_predictors(DEFAULT_VARIABLES, coarse, times=1, seed=3)
    ref = PrecipGenerator.from_bundle(b, device="cuda").generate(x, members=2, seed=4)
    for prec in ("bf16", "fp16"):
        g = PrecipGenerator.from_bundle(b, device="cuda", precision=prec)
        r = g.generate(x, members=2, seed=4)
        assert r.attrs["precision"] == prec and np.isfinite(r.fine).all()
        z, z32 = np.log1p(r.fine), np.log1p(ref.fine)
        assert float(np.abs(z - z32).mean()) < 0.05 * float(z32.std())
