"""Plugin behaviour: accumulation, remap, 3-D fields, ensemble selection, lag, errors.

These tests drive the Plugin with a small deterministic numpy engine that
implements the InferenceEngine protocol (so they check the plugin's own logic
exactly); tests/python/test_server_bundle.py runs the same paths with a real
tiny model bundle.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from precipdiff.errors import ConfigError, DeviceError, InputError, PrecipDiffError
from precipdiff.grids import LatLonGrid
from precipdiff.server import (
    Plugin,
    PluginConfig,
    PredictorSpec,
    window_seed_sequence,
)

# Region 30-50N, 0-20E: ESM grid 2 deg, bundle coarse grid 4 deg, fine grid 1 deg.
MODEL = LatLonGrid.regular(2.0, lat_min=31.0, lat_max=49.0, lon_min=1.0, lon_max=19.0)
COARSE = LatLonGrid.regular(4.0, lat_min=32.0, lat_max=48.0, lon_min=2.0, lon_max=18.0)
FINE = LatLonGrid.regular(1.0, lat_min=30.5, lat_max=49.5, lon_min=0.5, lon_max=19.5)


class NumpyEngine:
    """Deterministic stand-in for the generator: coarse signal + seeded member noise."""

    def __init__(self) -> None:
        self.predictors = [
            PredictorSpec("hus850", 850.0, ("q850",), ("hus", "q")),
            PredictorSpec("hus500", 500.0, ("q500",), ("hus", "q")),
            PredictorSpec("psl", None, ("msl",), ()),
        ]
        self.coarse_lat, self.coarse_lon = COARSE.lat, COARSE.lon
        self.fine_lat, self.fine_lon = FINE.lat, FINE.lon
        self.bundle_id = "numpy-engine-1"
        self.calls: list[tuple[int, str]] = []
        self.last_predictors: dict[str, np.ndarray] = {}
        self.bias_corrected = 0
        self.dates: list[object] = []
        self.state = np.zeros(1)

    def generate(
        self,
        predictors: Mapping[str, np.ndarray],
        members: int,
        seed: int,
        window: int,
        steps: int | None,
        conserve_mass: bool,
    ) -> np.ndarray:
        self.calls.append((seed, window, threading.current_thread().name))
        self.last_predictors = {k: np.array(v) for k, v in predictors.items()}
        base = 1000.0 * predictors["hus850"][0] + (predictors["psl"][0] - 101000.0) / 1000.0
        fine = np.kron(base, np.ones((4, 4)))
        out = np.empty((members, *fine.shape))
        for k in range(members):
            rng = np.random.default_rng(window_seed_sequence(seed, window, k))
            out[k] = np.maximum(fine + rng.gamma(1.0, 1.0, size=fine.shape), 0.0)
        return out

    def bias_correct(
        self, predictors: dict[str, np.ndarray], date: object
    ) -> dict[str, np.ndarray]:
        """A stateful correction, like trailing online QDM: scale drifts with use."""
        self.bias_corrected += 1
        self.dates.append(date)
        out = dict(predictors)
        out["hus850"] = predictors["hus850"] * (1.1 + 0.01 * self.state[0])
        self.state[0] += 1.0
        return out

    def bias_state(self) -> dict[str, np.ndarray]:
        return {"count": self.state.copy()}

    def load_bias_state(self, state: Mapping[str, np.ndarray]) -> None:
        self.state = np.array(state["count"], dtype=np.float64)


def make_plugin(
    tmp_path: Path, engine: NumpyEngine | None = None, **overrides: object
) -> tuple[Plugin, NumpyEngine]:
    eng = engine or NumpyEngine()
    cfg = PluginConfig(bundle_path=str(tmp_path / "unused"), **overrides)  # type: ignore[arg-type]
    return Plugin(cfg, MODEL.lon, MODEL.lat, eng, rank=0), eng


def fields_at(step: int) -> dict[str, np.ndarray]:
    """Smooth, time-varying synthetic ESM fields on the model grid."""
    lat2, lon2 = np.meshgrid(MODEL.lat, MODEL.lon, indexing="ij")
    ph = 0.3 * step
    return {
        "hus850": (0.006 + 0.002 * np.sin(np.deg2rad(lon2 * 9) + ph)).astype(np.float32),
        "hus500": 0.002 + 0.0005 * np.cos(np.deg2rad(lat2 * 7) - ph),
        "psl": 101000.0 + 800.0 * np.sin(np.deg2rad(lat2 * 5 + lon2 * 3) + ph),
    }


def run(plugin: Plugin, start_step: int, nsteps: int, dt: float) -> list[tuple[int, np.ndarray]]:
    """Drive nsteps steps; return (window, output_fine copy) for each ready step."""
    ready = []
    for s in range(start_step, start_step + nsteps):
        for name, val in fields_at(s).items():
            plugin.set_field(name, val)
        if plugin.step((s + 1) * dt, dt):
            ready.append((plugin.ready_window, np.array(plugin.output_fine())))
    return ready


def test_contract_attributes(tmp_path: Path) -> None:
    plugin, _ = make_plugin(tmp_path)
    assert plugin.required_fields == ["hus850", "hus500", "psl"]
    assert plugin.model_shape == (10, 10)
    assert plugin.fine_shape == (20, 20)
    np.testing.assert_array_equal(plugin.fine_lat, FINE.lat)
    np.testing.assert_array_equal(plugin.fine_lon, FINE.lon)
    assert plugin.fields_3d == {"hus": [850.0, 500.0], "q": [850.0, 500.0]}
    assert plugin.output_fine().shape == (20, 20)
    assert plugin.output_model().shape == (10, 10)
    assert plugin.output_fine().dtype == np.float64
    plugin.close()
    plugin.close()  # idempotent


def test_window_accumulation_equals_mean_and_remap_once(tmp_path: Path) -> None:
    dt = 10800.0  # 8 steps a day
    plugin, eng = make_plugin(tmp_path, remap_method="conservative", window_s=86400.0)
    ready = run(plugin, 0, 8, dt)
    assert [w for w, _ in ready] == [0]
    means = {k: np.mean([fields_at(s)[k] for s in range(8)], axis=0) for k in fields_at(0)}
    from precipdiff.grids import Regridder

    rg = Regridder(MODEL, COARSE, method="conservative")
    for name, mean in means.items():
        np.testing.assert_allclose(
            eng.last_predictors[name][0], rg(mean).astype(np.float32), rtol=1e-6
        )
    # Mean of remapped == remap of mean (the plugin remaps once per window).
    remapped_mean = np.mean([rg(fields_at(s)["psl"]) for s in range(8)], axis=0)
    np.testing.assert_allclose(eng.last_predictors["psl"][0], remapped_mean, rtol=1e-6)
    assert [c[:2] for c in eng.calls] == [(0, 0)]


def test_no_result_before_window_closes_and_partial_steps(tmp_path: Path) -> None:
    plugin, eng = make_plugin(tmp_path, window_s=21600.0)
    assert run(plugin, 0, 5, 3600.0) == []  # 5 h of a 6 h window
    assert eng.calls == []
    ready = run(plugin, 5, 1, 3600.0)
    assert [w for w, _ in ready] == [0]


def test_conservative_return_remap_preserves_area_mean(tmp_path: Path) -> None:
    plugin, _ = make_plugin(tmp_path, members=2, output_units="mm/day")
    run(plugin, 0, 4, 21600.0)
    fine = plugin.output_fine()
    model = plugin.output_model()
    a_f, a_m = FINE.cell_area(), MODEL.cell_area()
    assert np.sum(model * a_m) == pytest.approx(np.sum(fine * a_f), rel=1e-10)


def test_units_kg_m2_s(tmp_path: Path) -> None:
    p1, _ = make_plugin(tmp_path, output_units="mm/day")
    p2, _ = make_plugin(tmp_path, output_units="kg m-2 s-1")
    run(p1, 0, 4, 21600.0)
    run(p2, 0, 4, 21600.0)
    np.testing.assert_allclose(p2.output_fine() * 86400.0, p1.output_fine(), rtol=1e-12)


def test_3d_fields_on_model_levels(tmp_path: Path) -> None:
    """A 3-D field linear in ln p gives exactly the 2-D pressure-level values."""
    plugin, _ = make_plugin(tmp_path)
    ref, _ = make_plugin(tmp_path)
    sig = np.linspace(0.1, 0.995, 15)[:, None, None]
    psurf = np.full(MODEL.shape, 101000.0)
    psurf[:2, :3] = 80000.0  # "mountains": 850 hPa is below ground there
    p = sig * psurf[None]
    for s in range(4):
        f = fields_at(s)
        a = f["hus850"].astype(np.float64)
        b = (f["hus500"] - a) / np.log(50000.0 / 85000.0)
        q3d = a[None] + b[None] * (np.log(p) - np.log(85000.0))
        plugin.set_field("hus", q3d, p)
        plugin.set_field("psl", f["psl"])
        plugin.step((s + 1) * 21600.0, 21600.0)
        # Reference: 2-D fields, with the below-ground value = lowest model level.
        low = q3d[-1]
        ref.set_field("hus850", np.where(psurf < 85000.0 / 0.995, low, a))
        ref.set_field("hus500", f["hus500"])
        ref.set_field("psl", f["psl"])
        ref.step((s + 1) * 21600.0, 21600.0)
    np.testing.assert_allclose(plugin.output_fine(), ref.output_fine(), rtol=1e-9)


def test_return_modes(tmp_path: Path) -> None:
    results = {}
    for mode, member in (("member", 1), ("member", 3), ("mean", 1), ("cycle", 1)):
        plugin, _ = make_plugin(tmp_path, members=3, return_mode=mode, return_member=member)
        ready = run(plugin, 0, 12, 21600.0)  # 3 windows
        results[(mode, member)] = ready
        members = plugin.output_members()
        assert members.shape == (3, 20, 20)
    m1 = results[("member", 1)]
    m3 = results[("member", 3)]
    mean = results[("mean", 1)]
    cyc = results[("cycle", 1)]
    assert not np.allclose(m1[0][1], m3[0][1])
    # All modes see the same ensemble: mean = average of members, cycle = member n mod 3.
    plugin, _ = make_plugin(tmp_path, members=3, return_mode="member")
    per_window = []
    for s in range(12):
        for name, val in fields_at(s).items():
            plugin.set_field(name, val)
        if plugin.step((s + 1) * 21600.0, 21600.0):
            per_window.append(plugin.output_members())
    for n in range(3):
        np.testing.assert_allclose(mean[n][1], per_window[n].mean(axis=0), rtol=1e-12)
        np.testing.assert_array_equal(cyc[n][1], per_window[n][n % 3])
        np.testing.assert_array_equal(m3[n][1], per_window[n][2])


def test_bias_correction_is_applied(tmp_path: Path) -> None:
    on, eng_on = make_plugin(tmp_path, bias_correction=True)
    off, eng_off = make_plugin(tmp_path, bias_correction=False)
    run(on, 0, 4, 21600.0)
    run(off, 0, 4, 21600.0)
    assert eng_on.bias_corrected == 1 and eng_off.bias_corrected == 0
    # The QDM season comes from the middle of the window in the ESM calendar.
    assert str(eng_on.dates[0]).startswith("2000-01-01 12:00")
    np.testing.assert_allclose(
        eng_on.last_predictors["hus850"], 1.1 * eng_off.last_predictors["hus850"], rtol=1e-6
    )


def test_lagged_mode_same_numbers_one_window_later(tmp_path: Path) -> None:
    sync, _ = make_plugin(tmp_path, members=2, return_mode="cycle")
    lag, eng = make_plugin(tmp_path, members=2, return_mode="cycle", inference="lagged")
    r_sync = run(sync, 0, 16, 21600.0)  # 4 windows
    r_lag = []
    for s in range(16):
        for name, val in fields_at(s).items():
            lag.set_field(name, val)
        if lag.step((s + 1) * 21600.0, 21600.0):
            r_lag.append((s, lag.ready_window, np.array(lag.output_fine())))
    # Ready at the close of windows 1, 2, 3, handing back windows 0, 1, 2.
    assert [(s, w) for s, w, _ in r_lag] == [(7, 0), (11, 1), (15, 2)]
    for (_, w, out), (ws, ref) in zip(r_lag, r_sync[:3], strict=True):
        assert w == ws
        np.testing.assert_array_equal(out, ref)
    assert all(name.startswith("precipdiff") for _, _, name in eng.calls)
    lag.close()
    sync.close()


def test_seed_depends_on_window_not_start(tmp_path: Path) -> None:
    """A run started at window 2 produces the same window-2 result as one from 0."""
    full, _ = make_plugin(tmp_path)
    late, _ = make_plugin(tmp_path)
    r_full = run(full, 0, 12, 21600.0)
    r_late = run(late, 8, 4, 21600.0)
    assert r_late[0][0] == 2
    np.testing.assert_array_equal(r_late[0][1], r_full[2][1])
    other, _ = make_plugin(tmp_path, seed=5)
    r_other = run(other, 0, 4, 21600.0)
    assert not np.array_equal(r_other[0][1], r_full[0][1])


def test_time_errors_name_times(tmp_path: Path) -> None:
    plugin, _ = make_plugin(tmp_path)
    run(plugin, 0, 2, 3600.0)
    with pytest.raises(InputError, match=r"skipped ahead.*10800.000000.*got 14400.000000"):
        plugin.step(14400.0, 3600.0)
    with pytest.raises(InputError, match="went backwards"):
        plugin.step(3600.0, 3600.0)
    with pytest.raises(InputError, match="does not divide"):
        plugin.step(10800.0, 7000.0)
    with pytest.raises(InputError, match="END of the step"):
        plugin.step(-5.0, 3600.0)
    plugin.step(10800.0, 3600.0)  # the expected time is still accepted
    fresh, _ = make_plugin(tmp_path)
    with pytest.raises(InputError, match="straddles"):
        fresh.step(1800.0 + 86400.0, 86400.0)


def test_missing_field_at_window_close_is_named(tmp_path: Path) -> None:
    plugin, _ = make_plugin(tmp_path, window_s=7200.0)
    f = fields_at(0)
    for s in range(2):
        plugin.set_field("hus850", f["hus850"])
        plugin.set_field("hus500", f["hus500"])
        if s == 0:
            plugin.step(3600.0, 3600.0)
    with pytest.raises(InputError, match=r"without field.*psl"):
        plugin.step(7200.0, 3600.0)


def test_field_errors(tmp_path: Path) -> None:
    plugin, _ = make_plugin(tmp_path)
    with pytest.raises(InputError, match=r"unknown field 'pr'.*hus850, hus500, psl.*hus"):
        plugin.set_field("pr", np.zeros(MODEL.shape))
    with pytest.raises(InputError, match=r"shape \(10, 9\)"):
        plugin.set_field("psl", np.zeros((10, 9)))
    plugin.set_field("psl", np.zeros(MODEL.shape))
    with pytest.raises(InputError, match="'psl' was set twice"):
        plugin.set_field("msl", np.zeros(MODEL.shape))  # an alias of psl
    with pytest.raises(InputError, match="2-D field"):
        plugin.set_field("psl", np.zeros((3, 10, 10)), np.ones((3, 10, 10)))
    nan = fields_at(0)
    nan["psl"][3, 4] = np.nan
    p2, _ = make_plugin(tmp_path, window_s=3600.0)
    for k, v in nan.items():
        p2.set_field(k, v)
    with pytest.raises(InputError, match=r"'psl' has 1 non-finite.*lat index 3, lon index 4"):
        p2.step(3600.0, 3600.0)


def test_closed_plugin_refuses_calls(tmp_path: Path) -> None:
    plugin, _ = make_plugin(tmp_path)
    plugin.close()
    with pytest.raises(InputError, match="closed"):
        plugin.step(3600.0, 3600.0)


def test_missing_weight_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"weights_to_bundle.*does not exist"):
        make_plugin(tmp_path, weights_to_bundle=str(tmp_path / "w.nc"))


def test_scrip_weights_for_unstructured_grid(tmp_path: Path) -> None:
    """ESM columns as a (1, ncol) array, remapped with SCRIP files both ways."""
    from precipdiff.grids import Regridder
    from precipdiff.io.scrip import write_scrip_weights

    write_scrip_weights(Regridder(MODEL, COARSE, method="conservative"), tmp_path / "to_bundle.nc")
    write_scrip_weights(Regridder(FINE, MODEL, method="conservative"), tmp_path / "to_model.nc")
    ncol = MODEL.size
    eng = NumpyEngine()
    cfg = PluginConfig(
        bundle_path="unused",
        weights_to_bundle=str(tmp_path / "to_bundle.nc"),
        weights_to_model=str(tmp_path / "to_model.nc"),
    )
    flat = Plugin(cfg, np.arange(ncol, dtype=float), np.zeros(1), eng, rank=0)
    ref, _ = make_plugin(tmp_path)
    for s in range(4):
        for name, val in fields_at(s).items():
            flat.set_field(name, val.reshape(1, ncol))
            ref.set_field(name, val)
        flat.step((s + 1) * 21600.0, 21600.0)
        ref.step((s + 1) * 21600.0, 21600.0)
    np.testing.assert_allclose(flat.output_fine(), ref.output_fine(), rtol=1e-12)
    np.testing.assert_allclose(flat.output_model().reshape(MODEL.shape), ref.output_model())


def test_from_namelist_with_engine(tmp_path: Path) -> None:
    nml = tmp_path / "input.nml"
    nml.write_text("&precipdiff_nml\n bundle_path = 'b', members = 2, torch_threads = 1\n/\n")
    plugin = Plugin.from_namelist(str(nml), MODEL.lon, MODEL.lat, engine=NumpyEngine())
    assert plugin.config.members == 2
    assert plugin.rank == 0


class FailingEngine(NumpyEngine):
    """Raises a chosen exception from generate()."""

    def __init__(self, exc: Exception) -> None:
        super().__init__()
        self.exc = exc

    def generate(self, *args: object, **kwargs: object) -> np.ndarray:
        raise self.exc


class OutOfMemoryError(RuntimeError):
    """Same name as torch.cuda.OutOfMemoryError."""


@pytest.mark.parametrize(
    ("exc", "cls", "needle"),
    [
        (OutOfMemoryError("CUDA out of memory"), DeviceError, r"GPU out of memory.*window 0"),
        (ValueError("boom"), PrecipDiffError, r"inference failed for window 0: ValueError: boom"),
        (InputError("psl out of range"), InputError, "psl out of range"),
    ],
)
def test_inference_failures_become_named_errors(
    tmp_path: Path, exc: Exception, cls: type[Exception], needle: str
) -> None:
    plugin, _ = make_plugin(tmp_path, engine=FailingEngine(exc))
    with pytest.raises(cls, match=needle):
        run(plugin, 0, 4, 21600.0)


def test_lagged_failure_surfaces_at_next_window_close(tmp_path: Path) -> None:
    plugin, _ = make_plugin(tmp_path, engine=FailingEngine(ValueError("bad")), inference="lagged")
    assert run(plugin, 0, 4, 21600.0) == []  # window 0 submitted, nothing ready yet
    with pytest.raises(PrecipDiffError, match="window 0"):
        run(plugin, 4, 4, 21600.0)
    plugin2, _ = make_plugin(tmp_path, engine=FailingEngine(ValueError("bad")), inference="lagged")
    run(plugin2, 0, 4, 21600.0)
    with pytest.raises(PrecipDiffError, match="window 0"):
        plugin2.close()  # a pending failure is reported, not swallowed


@pytest.mark.parametrize("inference", ["sync", "lagged"])
@pytest.mark.parametrize("failure", ["missing_field", "non_finite"])
def test_failed_window_close_is_discarded_as_a_whole(
    tmp_path: Path, inference: str, failure: str
) -> None:
    """A window whose close fails leaves nothing behind: the next windows equal a clean run's."""
    dt = 21600.0
    broken, eng = make_plugin(tmp_path, members=2, inference=inference, bias_correction=True)
    for s in range(4):  # window 0 fails to close
        for name, val in fields_at(s).items():
            if failure == "missing_field" and name == "psl":
                continue
            if failure == "non_finite" and name == "psl" and s == 1:
                val = np.full_like(val, np.nan)
            broken.set_field(name, val)
        if s < 3:
            assert not broken.step((s + 1) * dt, dt)
    with pytest.raises(InputError, match=r"window 0 is discarded, the next window \(1\)"):
        broken.step(4 * dt, dt)
    assert eng.bias_corrected == 0  # the failed window never reached the QDM state
    got = run(broken, 4, 12, dt)  # windows 1..3 (lagged: 1 and 2 handed back)
    clean, _ = make_plugin(tmp_path, members=2, inference=inference, bias_correction=True)
    ref = run(clean, 4, 12, dt)  # a run that starts at window 1
    assert [w for w, _ in got] == [w for w, _ in ref] and got
    for (_, a), (_, b) in zip(got, ref, strict=True):
        np.testing.assert_array_equal(a, b)
    assert broken.ready_window == clean.ready_window


class DenormalProbeEngine(NumpyEngine):
    """Records whether denormals are flushed on the thread that runs inference."""

    def __init__(self) -> None:
        super().__init__()
        self.flushed: list[bool] = []

    def generate(self, *args: object, **kwargs: object) -> np.ndarray:
        from precipdiff.perf.fpenv import denormals_flushed

        self.flushed.append(denormals_flushed())
        return super().generate(*args, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("inference", ["sync", "lagged"])
def test_flush_denormals_only_inside_inference(tmp_path: Path, inference: str) -> None:
    from precipdiff.perf.fpenv import denormals_flushed

    for flush in (True, False):
        engine = DenormalProbeEngine()
        plugin, _ = make_plugin(tmp_path, engine, flush_denormals=flush, inference=inference)
        run(plugin, 0, 8, 21600.0)
        plugin.close()
        assert engine.flushed and all(f is flush for f in engine.flushed)
        assert not denormals_flushed()  # the caller's thread is restored


def test_performance_keys_are_validated(tmp_path: Path) -> None:
    from precipdiff.bundle.compiled import POLICIES
    from precipdiff.perf.precision import PRECISIONS
    from precipdiff.server.config import COMPILED_POLICIES, PRECISION_CHOICES

    assert PRECISION_CHOICES == ("bundle", *PRECISIONS) and COMPILED_POLICIES == POLICIES
    base = {"bundle_path": "b"}
    with pytest.raises(ConfigError, match="precision = 'half'"):
        PluginConfig(**base, precision="half")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"fp16.*CUDA"):
        PluginConfig(**base, precision="fp16", device="cpu")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="torch_allocator"):
        PluginConfig(**base, torch_allocator="jemalloc")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="compiled_networks"):
        PluginConfig(**base, compiled_networks="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="flush_denormals"):
        PluginConfig(**base, flush_denormals=1)  # type: ignore[arg-type]
    cfg = PluginConfig(**base, precision="BF16")  # type: ignore[arg-type]
    assert cfg.precision == "bf16"
