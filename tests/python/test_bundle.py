import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from precipdiff.bundle import (
    FORMAT_VERSION,
    Manifest,
    load_bundle,
    read_manifest,
    save_bundle,
)
from precipdiff.errors import BundleError
from precipdiff.generator import PrecipGenerator
from precipdiff.grids import LatLonGrid, coarsen_grid
from precipdiff.testing.models import DEFAULT_VARIABLES, make_tiny_bundle, random_predictors

FIXTURE_V1 = Path(__file__).parent / "fixtures" / "bundle_v1"
FINE = LatLonGrid.regular(0.5, lat_min=40.25, lat_max=47.75, lon_min=0.25, lon_max=9.75)
COARSE = coarsen_grid(FINE, 4)


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    return make_tiny_bundle(
        tmp_path_factory.mktemp("b") / "tiny",
        coarse_grid=COARSE,
        fine_grid=FINE,
        static_fields=("sin_lat", "cos_lat"),
    )


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    return dst


def test_round_trip(bundle_dir, tmp_path):
    b = load_bundle(bundle_dir)
    m = b.manifest
    assert m.format_version == FORMAT_VERSION
    assert m.variable_names() == list(DEFAULT_VARIABLES)
    assert b.coarse_grid == COARSE and b.fine_grid == FINE
    assert set(m.files) == {"regression.safetensors", "denoiser.safetensors"}
    for key in ("torch", "numpy", "precipdiff", "git_commit", "data"):
        assert key in m.provenance
    assert b.statics_fine.shape == (2, *FINE.shape)
    # save again from the loaded networks: identical weights and generation
    again = save_bundle(tmp_path / "again", m, b.regression, b.denoiser)
    b2 = load_bundle(again)
    for (k1, v1), (k2, v2) in zip(
        b.denoiser.state_dict().items(), b2.denoiser.state_dict().items(), strict=True
    ):
        assert k1 == k2 and torch.equal(v1, v2)
    x = random_predictors(DEFAULT_VARIABLES, COARSE, times=1, seed=3)
    r1 = PrecipGenerator(b).generate(x, members=2, seed=5)
    r2 = PrecipGenerator(b2).generate(x, members=2, seed=5)
    np.testing.assert_array_equal(r1.fine, r2.fine)
    assert Manifest.from_dict(json.loads((again / "manifest.json").read_text())) == b2.manifest


def test_manifest_without_weights(bundle_dir):
    m = read_manifest(bundle_dir)
    assert m.sigma_c == 0.5
    assert m.sampler_config().nfe <= 8
    assert m.regression_config().in_channels == len(DEFAULT_VARIABLES) + 2
    assert m.bias_correction is None


def test_flipped_byte_detected(bundle_dir, tmp_path):
    d = _copy(bundle_dir, tmp_path)
    w = d / "denoiser.safetensors"
    data = bytearray(w.read_bytes())
    data[len(data) // 2] ^= 0x01
    w.write_bytes(bytes(data))
    read_manifest(d)  # the manifest itself is still fine
    with pytest.raises(BundleError, match=r"denoiser\.safetensors is corrupt"):
        load_bundle(d)


def test_missing_weight_file(bundle_dir, tmp_path):
    d = _copy(bundle_dir, tmp_path)
    (d / "regression.safetensors").unlink()
    with pytest.raises(BundleError, match=r"missing regression\.safetensors"):
        load_bundle(d)


def _edit(d: Path, fn) -> None:
    mp = d / "manifest.json"
    data = json.loads(mp.read_text())
    fn(data)
    mp.write_text(json.dumps(data))


def test_newer_version_rejected(bundle_dir, tmp_path):
    d = _copy(bundle_dir, tmp_path)
    _edit(d, lambda m: m.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(BundleError, match="newer than this precipdiff supports"):
        read_manifest(d)


def test_unknown_key_rejected(bundle_dir, tmp_path):
    d = _copy(bundle_dir, tmp_path)
    _edit(d, lambda m: m.update(colour="blue"))
    with pytest.raises(BundleError, match="colour"):
        read_manifest(d)


def test_architecture_mismatch_named(bundle_dir, tmp_path):
    d = _copy(bundle_dir, tmp_path)

    def widen(m):
        m["denoiser"]["base_channels"] = 16

    _edit(d, widen)
    with pytest.raises(BundleError, match="denoiser"):
        load_bundle(d)


def test_channel_count_mismatch_named(bundle_dir, tmp_path):
    d = _copy(bundle_dir, tmp_path)
    _edit(d, lambda m: m["variables"].pop())
    with pytest.raises(BundleError, match="regression network takes 6 input channel"):
        read_manifest(d)


def test_missing_normalisation_named(bundle_dir, tmp_path):
    d = _copy(bundle_dir, tmp_path)
    _edit(d, lambda m: m["normalisation"]["predictors"].pop("psl"))
    with pytest.raises(BundleError, match=r"no statistics for feature\(s\) \[.psl.\]"):
        read_manifest(d)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        read_manifest(tmp_path / "nope")
    with pytest.raises(BundleError, match=r"manifest\.json not found"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="cannot parse"):
        read_manifest(tmp_path)


def test_save_refuses_overwrite_and_is_atomic(bundle_dir, tmp_path):
    b = load_bundle(bundle_dir)
    with pytest.raises(BundleError, match="already exists"):
        save_bundle(bundle_dir, b.manifest, b.regression, b.denoiser)
    # a network that does not match the manifest is refused before anything is written
    from precipdiff.nn import UNet, UNetConfig

    other = UNet(UNetConfig(in_channels=6, base_channels=16, channel_mult=(1,)))
    with pytest.raises(BundleError, match="regression network's config"):
        save_bundle(tmp_path / "x", b.manifest, other, b.denoiser)
    assert not (tmp_path / "x").exists()
    assert not list(tmp_path.glob(".x.tmp*"))


def test_old_format_fixture_loads():
    m = read_manifest(FIXTURE_V1)
    assert m.format_version == FORMAT_VERSION
    assert m.provenance["migrated_from_format"] == 1
    assert m.variable_names() == ["hus850", "psl"]
    assert m.transform_obj().eps == 0.1
    assert m.sampler_config().steps == 3
    b = load_bundle(FIXTURE_V1)
    gen = PrecipGenerator(b)
    shape = b.coarse_grid.shape
    res = gen.generate(
        {"q850": np.full((1, *shape), 0.005, np.float32), "msl": np.full((1, *shape), 1.0e5)},
        members=2,
    )
    assert res.fine.shape == (1, 2, 12, 16)
    assert np.isfinite(res.fine).all() and (res.fine >= 0).all()


def test_stored_static_fields(tmp_path):
    from precipdiff.bundle import manifest_from_networks
    from precipdiff.diffusion import EDMPrecond
    from precipdiff.nn import UNet, UNetConfig
    from precipdiff.variables import get_variable

    specs = [get_variable(n) for n in ("hus850", "psl")]
    reg = UNet(UNetConfig(in_channels=3, base_channels=8, channel_mult=(1,), num_blocks=1))
    den = EDMPrecond(
        UNet(
            UNetConfig(
                in_channels=4, base_channels=8, channel_mult=(1,), num_blocks=1, noise_channels=8
            )
        )
    )
    static = {"coarse": ["lsm"], "fine": ["lsm", "sin_lat"]}
    m = manifest_from_networks(
        variables=[s.to_dict() for s in specs],
        coarse_grid=COARSE,
        fine_grid=FINE,
        predictor_stats={"hus850": (0.006, 0.004), "psl": (101300.0, 1200.0)},
        precip_stats=(1.0, 1.5),
        regression=reg,
        denoiser=den,
        sigma_c=0.3,
        static_fields=static,
        provenance={"data": "test"},
    )
    lsm_c = (np.arange(COARSE.size).reshape(COARSE.shape) % 2).astype(np.float32)
    lsm_f = np.ones(FINE.shape, np.float32)
    with pytest.raises(BundleError, match="static fields given"):
        save_bundle(tmp_path / "s", m, reg, den, {"coarse/lsm": lsm_c})
    with pytest.raises(BundleError, match="shape"):
        save_bundle(tmp_path / "s", m, reg, den, {"coarse/lsm": lsm_f, "fine/lsm": lsm_f})
    path = save_bundle(tmp_path / "s", m, reg, den, {"coarse/lsm": lsm_c, "fine/lsm": lsm_f})
    b = load_bundle(path)
    assert "statics.safetensors" in b.manifest.files
    np.testing.assert_array_equal(b.statics_coarse[0], lsm_c)
    np.testing.assert_allclose(b.statics_fine[1], np.sin(np.deg2rad(FINE.lat))[:, None] + 0 * lsm_f)
    x = random_predictors(["hus850", "psl"], COARSE)
    assert PrecipGenerator(b).generate(x, members=1).fine.shape == (1, 1, *FINE.shape)
