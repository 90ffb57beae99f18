"""Export (torch.export + AOTInductor) round trip; compiling takes ~30-90 s on 2 shared cores."""

import json
import os
import shutil
import stat

import numpy as np
import pytest
import torch

from precipdiff.bundle import read_manifest
from precipdiff.errors import BundleError
from precipdiff.generator import PrecipGenerator
from precipdiff.grids import LatLonGrid, coarsen_grid
from precipdiff.testing.models import DEFAULT_VARIABLES, make_tiny_bundle, random_predictors

pytestmark = pytest.mark.slow

FINE = LatLonGrid.regular(0.5, lat_min=40.25, lat_max=47.75, lon_min=0.25, lon_max=9.75)
COARSE = coarsen_grid(FINE, 4)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from precipdiff.offline.export import export_bundle

    mp = pytest.MonkeyPatch()
    mp.setenv("TORCHINDUCTOR_COMPILE_THREADS", "1")
    path = make_tiny_bundle(
        tmp_path_factory.mktemp("e") / "b", coarse_grid=COARSE, fine_grid=FINE, channel_mult=(1,)
    )
    entries = export_bundle(path, "cpu")
    mp.undo()
    return path, entries


def test_manifest_records_packages(exported):
    path, entries = exported
    m = read_manifest(path)
    assert {e["network"] for e in m.compiled} == {"regression", "denoiser"}
    umask = os.umask(0)
    os.umask(umask)
    for e in m.compiled:
        assert (path / e["file"]).is_file() and e["device"] == "cpu"
        # published with the umask's mode, not tempfile's 0600 (shared bundles on HPC)
        assert stat.S_IMODE((path / e["file"]).stat().st_mode) == 0o666 & ~umask
        assert len(e["sha256"]) == 64 and e["weights_sha256"] in m.files.values()
        # timed against the eager inference network at export, interleaved
        assert e["precision"] == "float32" and e["eager_s"] > 0 and e["compiled_s"] > 0
        assert e["pays"] == (e["compiled_s"] <= 0.95 * e["eager_s"])
    assert [e["file"] for e in entries] == [e["file"] for e in m.compiled]


def test_compiled_matches_eager(exported):
    path, _ = exported
    x = random_predictors(DEFAULT_VARIABLES, COARSE, times=2, seed=0)
    comp = PrecipGenerator.from_bundle(path, device="cpu", use_compiled=True)
    eager = PrecipGenerator.from_bundle(path, device="cpu", use_compiled=False)
    assert comp.compiled and not eager.compiled
    assert set(comp.compiled_networks) == {"regression", "denoiser"}
    rc = comp.generate(x, members=2, seed=1)
    re_ = eager.generate(x, members=2, seed=1)
    assert rc.attrs["compiled_networks"] and not re_.attrs["compiled_networks"]
    np.testing.assert_allclose(rc.coarse, re_.coarse, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(rc.fine, re_.fine, rtol=1e-3, atol=1e-4)


def test_mismatch_falls_back_or_raises(exported, tmp_path):
    path, _ = exported
    d = tmp_path / "b"
    shutil.copytree(path, d)
    mp = d / "manifest.json"
    data = json.loads(mp.read_text())
    for e in data["compiled"]:
        e["torch"] = "1.0.0"
    mp.write_text(json.dumps(data))
    assert not PrecipGenerator.from_bundle(d, device="cpu").compiled  # auto: eager
    with pytest.raises(BundleError, match=r"compiled with torch 1\.0\.0"):
        PrecipGenerator.from_bundle(d, device="cpu", use_compiled=True)


def test_tampered_package_detected(exported, tmp_path):
    path, _ = exported
    d = tmp_path / "b"
    shutil.copytree(path, d)
    pkg = next((d / "compiled").glob("denoiser-*.pt2"))
    data = bytearray(pkg.read_bytes())
    data[-100] ^= 0xFF
    pkg.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="corrupt"):
        PrecipGenerator.from_bundle(d, device="cpu")


def test_required_without_export(tmp_path):
    path = make_tiny_bundle(tmp_path / "plain", coarse_grid=COARSE, fine_grid=FINE)
    with pytest.raises(BundleError, match="precipdiff export"):
        PrecipGenerator.from_bundle(path, device="cpu", use_compiled=True)
    assert not PrecipGenerator.from_bundle(path, device="cpu").compiled


def _with_entries(path, tmp_path, edit):
    d = tmp_path / "b"
    shutil.copytree(path, d)
    mp = d / "manifest.json"
    data = json.loads(mp.read_text())
    for e in data["compiled"]:
        edit(e)
    mp.write_text(json.dumps(data))
    return d


def test_auto_uses_only_packages_that_pay(exported, tmp_path):
    path, _ = exported

    def slow_denoiser(e):
        e["pays"] = e["network"] == "regression"

    d = _with_entries(path, tmp_path, slow_denoiser)
    gen = PrecipGenerator.from_bundle(d, device="cpu")
    assert set(gen.compiled_networks) == {"regression"}
    # "always" (use_compiled=True) takes both regardless of the measurement
    assert set(
        PrecipGenerator.from_bundle(d, device="cpu", use_compiled=True).compiled_networks
    ) == {
        "regression",
        "denoiser",
    }
    # entries written before the measurement existed count as paying
    d2 = _with_entries(
        path,
        tmp_path / "old",
        lambda e: [e.pop(k) for k in ("pays", "eager_s", "compiled_s", "precision")],
    )
    assert set(PrecipGenerator.from_bundle(d2, device="cpu").compiled_networks) == {
        "regression",
        "denoiser",
    }


def test_denoiser_package_must_match_precision(exported):
    path, _ = exported
    gen = PrecipGenerator.from_bundle(path, device="cpu", precision="bf16", use_compiled="auto")
    assert "denoiser" not in gen.compiled_networks
    with pytest.raises(BundleError, match="precision float32, running at bf16"):
        PrecipGenerator.from_bundle(path, device="cpu", precision="bf16", use_compiled=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_export_with_precision(tmp_path):
    from precipdiff.offline.export import export_bundle

    path = make_tiny_bundle(tmp_path / "g", coarse_grid=COARSE, fine_grid=FINE, channel_mult=(1,))
    export_bundle(path, "cuda", precision="bf16", rounds=2)
    den = [e for e in read_manifest(path).compiled if e["network"] == "denoiser"]
    assert den[0]["device"] == "cuda" and den[0]["precision"] == "bf16"
    assert den[0]["eager_s"] > 0 and isinstance(den[0]["pays"], bool)
    x = random_predictors(DEFAULT_VARIABLES, COARSE, times=1, seed=0)
    comp = PrecipGenerator.from_bundle(path, device="cuda", precision="bf16", use_compiled=True)
    eager = PrecipGenerator.from_bundle(path, device="cuda", precision="bf16", use_compiled=False)
    assert set(comp.compiled_networks) == {"regression", "denoiser"}
    a = comp.generate(x, members=2, seed=1).fine
    b = eager.generate(x, members=2, seed=1).fine
    assert np.isfinite(a).all()
    np.testing.assert_allclose(np.log1p(a), np.log1p(b), atol=0.05)
