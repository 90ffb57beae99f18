"""The Plugin with a real (tiny, random-weight) model bundle, built from a namelist."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from precipdiff.errors import BundleError, ConfigError, DeviceError
from precipdiff.grids import LatLonGrid, Regridder
from precipdiff.server import Plugin
from precipdiff.testing.models import make_tiny_bundle

MODEL = LatLonGrid.regular(2.0, lat_min=31.0, lat_max=49.0, lon_min=1.0, lon_max=19.0)
COARSE = LatLonGrid.regular(4.0, lat_min=32.0, lat_max=48.0, lon_min=2.0, lon_max=18.0)
FINE = LatLonGrid.regular(1.0, lat_min=30.5, lat_max=49.5, lon_min=0.5, lon_max=19.5)
DT = 21600.0


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bundle") / "tiny"
    return make_tiny_bundle(path, coarse_grid=COARSE, fine_grid=FINE, seed=1)


def nml(tmp_path: Path, bundle: Path, extra: str = "", name: str = "input.nml") -> str:
    p = tmp_path / name
    p.write_text(f"&precipdiff_nml\n bundle_path = '{bundle}', device = 'cpu'\n {extra}\n/\n")
    return str(p)


def fields_at(step: int) -> dict[str, np.ndarray]:
    lat2, lon2 = np.meshgrid(MODEL.lat, MODEL.lon, indexing="ij")
    ph = 0.4 * step
    return {
        "hus850": 0.007 + 0.003 * np.sin(np.deg2rad(lon2 * 12) + ph),
        "ua850": 5.0 + 4.0 * np.cos(np.deg2rad(lat2 * 9) - ph),
        "va850": -2.0 + 3.0 * np.sin(np.deg2rad(lat2 * 5 + lon2 * 7) + ph),
        "psl": (101300.0 + 900.0 * np.cos(np.deg2rad(lon2 * 6) + ph)).astype(np.float32),
    }


def drive(plugin: Plugin, steps: range) -> list[tuple[int, np.ndarray]]:
    out = []
    for s in steps:
        for name, val in fields_at(s).items():
            plugin.set_field(name, val)
        if plugin.step((s + 1) * DT, DT):
            out.append((plugin.ready_window, plugin.output_members()))
    return out


def test_plugin_from_namelist_matches_offline_generation(tmp_path: Path, bundle: Path) -> None:
    path = nml(tmp_path, bundle, "members = 2, seed = 5, output_units = 'mm/day'")
    plugin = Plugin.from_namelist(path, MODEL.lon, MODEL.lat, rank=0)
    assert plugin.required_fields == ["hus850", "ua850", "va850", "psl"]
    assert plugin.fine_shape == FINE.shape
    assert "hus" in plugin.fields_3d
    got = drive(plugin, range(8))
    assert [w for w, _ in got] == [0, 1]
    out = plugin.output_fine()
    assert np.all(np.isfinite(out)) and np.all(out >= 0.0)
    np.testing.assert_array_equal(out, got[1][1][0])
    plugin.close()

    # Offline: the same window means through PrecipGenerator with the window
    # index as the time index give the same members.
    from precipdiff.generator import PrecipGenerator

    gen = PrecipGenerator.from_bundle(bundle, device="cpu")
    rg = Regridder(MODEL, COARSE, method="conservative")
    for n in (0, 1):
        means = {
            k: rg(np.mean([fields_at(s)[k].astype(np.float64) for s in range(4 * n, 4 * n + 4)], 0))
            for k in fields_at(0)
        }
        res = gen.generate(
            {k: v[None].astype(np.float32) for k, v in means.items()},
            members=2,
            seed=5,
            time_offset=n,
        )
        np.testing.assert_allclose(got[n][1], res.fine[0], rtol=1e-6, atol=1e-6)


def test_lagged_equals_sync_one_window_later(tmp_path: Path, bundle: Path) -> None:
    sync = Plugin.from_namelist(nml(tmp_path, bundle, "members = 2"), MODEL.lon, MODEL.lat)
    lag = Plugin.from_namelist(
        nml(tmp_path, bundle, "members = 2, inference = 'lagged'", "lag.nml"), MODEL.lon, MODEL.lat
    )
    a = drive(sync, range(12))
    b = drive(lag, range(12))
    assert [w for w, _ in b] == [0, 1]
    for (wa, ma), (wb, mb) in zip(a[:2], b, strict=True):
        assert wa == wb
        np.testing.assert_array_equal(ma, mb)
    sync.close()
    lag.close()


def test_restart_10_windows_equals_5_restart_5(tmp_path: Path, bundle: Path) -> None:
    path = nml(tmp_path, bundle, "members = 2, return_mode = 'mean', inference = 'lagged'")
    full = Plugin.from_namelist(path, MODEL.lon, MODEL.lat)
    ref = drive(full, range(40))
    ref_out = np.array(full.output_model())
    full.close()
    first = Plugin.from_namelist(path, MODEL.lon, MODEL.lat)
    a = drive(first, range(20))
    first.write_restart(str(tmp_path / "r.nc"))
    first.close()
    second = Plugin.from_namelist(path, MODEL.lon, MODEL.lat)
    second.read_restart(str(tmp_path / "r.nc"))
    b = drive(second, range(20, 40))
    assert [w for w, _ in a + b] == [w for w, _ in ref]
    for (_, m1), (_, m2) in zip(a + b, ref, strict=True):
        np.testing.assert_array_equal(m1, m2)
    np.testing.assert_array_equal(second.output_model(), ref_out)
    second.close()


def test_missing_and_corrupt_bundle(tmp_path: Path, bundle: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        Plugin.from_namelist(nml(tmp_path, tmp_path / "nobundle"), MODEL.lon, MODEL.lat)
    bad = tmp_path / "corrupt"
    shutil.copytree(bundle, bad)
    weights = sorted(bad.glob("*.safetensors"))
    assert weights
    raw = bytearray(weights[0].read_bytes())
    raw[-10] ^= 0xFF
    weights[0].write_bytes(bytes(raw))
    with pytest.raises(BundleError, match=weights[0].name):
        Plugin.from_namelist(nml(tmp_path, bad, name="bad.nml"), MODEL.lon, MODEL.lat)


def test_bias_correction_without_tables_is_a_config_error(tmp_path: Path, bundle: Path) -> None:
    with pytest.raises(ConfigError, match="holds no QDM tables"):
        Plugin.from_namelist(
            nml(tmp_path, bundle, "bias_correction = .true."), MODEL.lon, MODEL.lat
        )


def test_online_qdm_changes_inputs_and_restarts_exactly(tmp_path: Path, bundle: Path) -> None:
    from precipdiff.offline.qdm_fit import fit_qdm
    from precipdiff.qdm import QDMConfig

    qb = tmp_path / "qdm_bundle"
    shutil.copytree(bundle, qb)
    rng = np.random.default_rng(0)
    nt = 60
    times = np.datetime64("2000-01-01") + np.arange(nt).astype("timedelta64[D]")
    ref = {"psl": 101300.0 + 500.0 * rng.standard_normal((nt, *COARSE.shape))}
    hist = {"psl": ref["psl"] + 400.0}  # the "ESM" is 4 hPa too high
    tables = fit_qdm(ref, hist, times, times, QDMConfig(n_quantiles=5, group="none"))
    tables.attach_to_bundle(qb)
    on = nml(tmp_path, qb, "bias_correction = .true., qdm_trailing_years = 0.05", "on.nml")
    off = nml(tmp_path, qb, "", "off.nml")
    p_on = Plugin.from_namelist(on, MODEL.lon, MODEL.lat)
    p_off = Plugin.from_namelist(off, MODEL.lon, MODEL.lat)
    r_on, r_off = drive(p_on, range(8)), drive(p_off, range(8))
    assert not np.allclose(r_on[0][1], r_off[0][1])
    p_on.close()
    p_off.close()
    # Trailing QDM has state: restart after 3 windows continues exactly.
    full = Plugin.from_namelist(on, MODEL.lon, MODEL.lat)
    ref_r = drive(full, range(24))
    first = Plugin.from_namelist(on, MODEL.lon, MODEL.lat)
    a = drive(first, range(12))
    first.write_restart(str(tmp_path / "q.nc"))
    second = Plugin.from_namelist(on, MODEL.lon, MODEL.lat)
    second.read_restart(str(tmp_path / "q.nc"))
    b = drive(second, range(12, 24))
    for (_, m1), (_, m2) in zip(a + b, ref_r, strict=True):
        np.testing.assert_array_equal(m1, m2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU fallback")
def test_cuda_without_gpu(tmp_path: Path, bundle: Path, caplog: pytest.LogCaptureFixture) -> None:
    strict = nml(tmp_path, bundle, "", "x.nml").replace("x.nml", "strict.nml")
    Path(strict).write_text(
        f"&precipdiff_nml\n bundle_path = '{bundle}', device = 'cuda', strict_device = .true.\n/\n"
    )
    with pytest.raises(DeviceError, match="strict_device"):
        Plugin.from_namelist(strict, MODEL.lon, MODEL.lat)
    loose = tmp_path / "loose.nml"
    loose.write_text(f"&precipdiff_nml\n bundle_path = '{bundle}', device = 'cuda'\n/\n")
    with caplog.at_level(logging.WARNING, logger="precipdiff.device"):
        plugin = Plugin.from_namelist(str(loose), MODEL.lon, MODEL.lat)
    assert "running on the CPU" in caplog.text
    assert len(drive(plugin, range(4))) == 1


def _cpu_vs_device(tmp_path: Path, bundle: Path, device: str) -> None:
    """CPU and ``device`` share the regression; the members' noise streams differ.

    ``torch.Generator`` draws different numbers on CPU and CUDA for the same seed, so
    members are equal only in distribution, never value by value. What must agree:
    the deterministic regression of the same window means (to float32 kernel
    differences), every member valid, and each device reproducible with itself.
    """
    cpu = Plugin.from_namelist(nml(tmp_path, bundle, "members = 2"), MODEL.lon, MODEL.lat)
    dev_nml = tmp_path / "dev.nml"
    dev_nml.write_text(
        f"&precipdiff_nml\n bundle_path = '{bundle}', device = '{device}', members = 2\n/\n"
    )
    dev = Plugin.from_namelist(str(dev_nml), MODEL.lon, MODEL.lat)
    again = Plugin.from_namelist(str(dev_nml), MODEL.lon, MODEL.lat)
    a, b, c = drive(cpu, range(8)), drive(dev, range(8)), drive(again, range(8))
    assert [w for w, _ in a] == [w for w, _ in b] == [0, 1]
    for (_, m_cpu), (_, m_dev), (_, m_again) in zip(a, b, c, strict=True):
        assert m_dev.shape == m_cpu.shape and np.isfinite(m_dev).all() and (m_dev >= 0).all()
        np.testing.assert_allclose(m_again, m_dev, rtol=1e-5, atol=1e-6)
    rg = Regridder(MODEL, COARSE, method="conservative")
    means = {k: rg(np.mean([fields_at(s)[k] for s in range(4)], 0))[None] for k in fields_at(0)}
    reg = [p.engine.generator.regress(means) for p in (cpu, dev)]  # type: ignore[attr-defined]
    np.testing.assert_allclose(reg[1], reg[0], rtol=1e-3, atol=1e-4)
    for p in (cpu, dev, again):
        p.close()


def test_cpu_vs_device_expectations_hold_on_cpu(tmp_path: Path, bundle: Path) -> None:
    """The GPU test's expectations, checked on the CPU (where they hold trivially)."""
    _cpu_vs_device(tmp_path, bundle, "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_shares_the_regression_not_the_noise(tmp_path: Path, bundle: Path) -> None:
    _cpu_vs_device(tmp_path, bundle, "cuda")
