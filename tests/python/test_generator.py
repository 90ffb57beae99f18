import numpy as np
import pytest
import torch

from precipdiff.errors import ConfigError, GridError, InputError
from precipdiff.generator import SECONDS_PER_DAY, PrecipGenerator
from precipdiff.grids import LatLonGrid, Regridder, coarsen_grid
from precipdiff.testing.models import DEFAULT_VARIABLES, make_tiny_bundle, random_predictors

FINE = LatLonGrid.regular(0.5, lat_min=40.25, lat_max=47.75, lon_min=0.25, lon_max=9.75)
COARSE = coarsen_grid(FINE, 4)


@pytest.fixture(scope="module")
def gen(tmp_path_factory) -> PrecipGenerator:
    path = make_tiny_bundle(
        tmp_path_factory.mktemp("g") / "regional", coarse_grid=COARSE, fine_grid=FINE
    )
    return PrecipGenerator.from_bundle(path, device="cpu")


@pytest.fixture(scope="module")
def x() -> dict[str, np.ndarray]:
    return random_predictors(DEFAULT_VARIABLES, COARSE, times=2, seed=1)


def test_shapes_regional(gen, x):
    r = gen.generate(x, members=3, seed=0)
    assert r.fine.shape == (2, 3, *FINE.shape) and r.fine.dtype == np.float32
    assert r.coarse.shape == (2, *COARSE.shape)
    assert (r.fine >= 0).all() and np.isfinite(r.fine).all()
    assert r.units == "mm/day" and r.attrs["nfe_per_member"] == gen.sampler.nfe
    assert not np.array_equal(r.fine[0, 0], r.fine[0, 1])  # members differ


def test_shapes_global_periodic(tmp_path):
    fine = LatLonGrid.regular(1.0, descending=True)  # 181 x 360, as ERA5 at 1°
    coarse = LatLonGrid.regular(4.0, lat_min=-88.0, lat_max=88.0)  # 45 x 90, not fine/4
    path = make_tiny_bundle(tmp_path / "global", coarse_grid=coarse, fine_grid=fine)
    g = PrecipGenerator.from_bundle(path, device="cpu")
    assert g.bundle.denoiser.net.config.periodic_lon
    r = g.generate(random_predictors(DEFAULT_VARIABLES, coarse), members=1)
    assert r.fine.shape == (1, 1, 181, 360)
    # no seam: the jump across 0/360 is like any other column-to-column jump
    f = r.fine[0, 0]
    jumps = np.abs(np.diff(f, axis=1)).mean(axis=0)
    seam = np.abs(f[:, 0] - f[:, -1]).mean()
    assert seam < 3 * np.median(jumps)


def test_member_reproducible_across_ensemble_sizes(gen, x):
    big = gen.generate(x, members=4, seed=42)
    alone = gen.generate(x, members=1, seed=42, member_offset=2)
    np.testing.assert_array_equal(big.fine[:, 2], alone.fine[:, 0])
    one_time = gen.generate({k: v[1:] for k, v in x.items()}, members=2, seed=42, time_offset=1)
    np.testing.assert_array_equal(big.fine[1, :2], one_time.fine[0])
    other_seed = gen.generate(x, members=1, seed=43)
    assert not np.array_equal(other_seed.fine[:, 0], big.fine[:, 0])


def test_units_and_steps(gen, x):
    mm = gen.generate(x, members=1, seed=1)
    si = gen.generate(x, members=1, seed=1, units="kg m-2 s-1")
    np.testing.assert_allclose(si.fine * SECONDS_PER_DAY, mm.fine, rtol=1e-6)
    np.testing.assert_allclose(si.coarse * SECONDS_PER_DAY, mm.coarse, rtol=1e-6)
    r = gen.generate(x, members=1, steps=3)
    assert r.sampler.steps == 3 and r.sampler.nfe == 5
    with pytest.raises(ConfigError, match="units"):
        gen.generate(x, units="mm")
    with pytest.raises(ConfigError, match="members"):
        gen.generate(x, members=0)


def test_mass_conservation_switch(gen, x):
    plain = gen.generate(x, members=2, seed=3)
    cons = gen.generate(x, members=2, seed=3, conserve_mass=True)
    down = Regridder(FINE, COARSE, "conservative")
    err_plain = np.abs(down(plain.fine) - plain.coarse[:, None]).max()
    err_cons = np.abs(down(cons.fine) - cons.coarse[:, None]).max()
    assert err_cons < 1e-4 * max(1.0, float(cons.coarse.max()))
    assert err_plain > 100 * err_cons
    assert (cons.fine >= 0).all()
    np.testing.assert_array_equal(plain.coarse, cons.coarse)


def test_predictors_regridded_from_other_grid(gen):
    src = LatLonGrid.regular(1.0, lat_min=39.0, lat_max=49.0, lon_min=-1.0, lon_max=11.0)
    x_src = random_predictors(DEFAULT_VARIABLES, src, seed=2)
    r = gen.generate(x_src, grid=src, members=1)
    assert r.coarse.shape == (1, *COARSE.shape)
    with pytest.raises(GridError, match="pass grid="):
        gen.generate(x_src, members=1)
    far = LatLonGrid.regular(1.0, lat_min=-10.0, lat_max=0.0, lon_min=100.0, lon_max=110.0)
    with pytest.raises(GridError, match="cannot be remapped"):
        gen.generate(random_predictors(DEFAULT_VARIABLES, far), grid=far)


def test_era5_and_cmip6_names_accepted(gen, x):
    ref = gen.generate(x, members=1, seed=9)
    era5 = {"q850": x["hus850"], "u850": x["ua850"], "v850": x["va850"], "msl": x["psl"]}
    np.testing.assert_array_equal(gen.generate(era5, members=1, seed=9).fine, ref.fine)


def test_missing_variable_lists_available(gen, x):
    bad = {k: v for k, v in x.items() if k != "psl"}
    with pytest.raises(InputError, match=r"psl.*hus850"):
        gen.generate(bad)


def test_nan_and_range_errors(gen, x):
    nan = dict(x)
    nan["ua850"] = x["ua850"].copy()
    nan["ua850"][1, 2, 3] = np.nan
    with pytest.raises(InputError, match="ua850"):
        gen.generate(nan)
    hpa = dict(x)
    hpa["psl"] = x["psl"] / 100.0  # hPa instead of Pa
    with pytest.raises(InputError, match="psl"):
        gen.generate(hpa)
    shape = dict(x)
    shape["va850"] = x["va850"][:1]
    with pytest.raises(InputError, match="different shapes"):
        gen.generate(shape)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_statistics(gen, x):
    g = PrecipGenerator.from_bundle(gen.bundle.path, device="cuda")
    r_gpu = g.generate(x, members=2, seed=0)
    r_cpu = gen.generate(x, members=2, seed=0)
    np.testing.assert_allclose(r_gpu.coarse, r_cpu.coarse, rtol=1e-3, atol=1e-4)
    assert r_gpu.fine.shape == r_cpu.fine.shape and (r_gpu.fine >= 0).all()


def test_residual_bundle_adds_the_clean_condition(tmp_path, x):
    # A bundle whose denoiser generates the residual (manifest condition "residual":
    # true) returns the same draws plus the clean upsampled condition; a manifest with
    # a non-boolean flag is refused with a named error.
    import json
    import shutil

    from precipdiff.diffusion import SamplerConfig
    from precipdiff.errors import BundleError

    plain = make_tiny_bundle(tmp_path / "plain", coarse_grid=COARSE, fine_grid=FINE)
    resid = tmp_path / "resid"
    shutil.copytree(plain, resid)
    man = json.loads((resid / "manifest.json").read_text())
    assert "residual" not in man["condition"]  # not written unless set
    man["condition"]["residual"] = True
    (resid / "manifest.json").write_text(json.dumps(man))
    g0 = PrecipGenerator.from_bundle(plain, device="cpu", use_compiled=False)
    g1 = PrecipGenerator.from_bundle(resid, device="cpu", use_compiled=False)
    y_c = g0.regress(x)
    cfg = SamplerConfig(name="heun", steps=2, start="noise", sigma_max=2.0)
    z0 = g0.sample_fine(y_c, members=2, seed=3, sampler=cfg)
    z1 = g1.sample_fine(y_c, members=2, seed=3, sampler=cfg)
    np.testing.assert_allclose(z1, z0 + g0._upsample(y_c)[:, None], rtol=1e-5, atol=1e-5)
    man["condition"]["residual"] = "yes"
    (resid / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(BundleError, match="residual"):
        PrecipGenerator.from_bundle(resid, device="cpu", use_compiled=False)


def _condition_features_bundle(tmp_path, condition, den_features: int = 3):
    # variables hus850, psl, ta850; the regression reads rh850 and psl; the denoiser
    # reads ``den_features`` upsampled feature channels
    from precipdiff.bundle import manifest_from_networks, save_bundle
    from precipdiff.diffusion import EDMPrecond
    from precipdiff.nn import UNet, UNetConfig
    from precipdiff.variables import get_variable

    specs = [get_variable(n) for n in ("hus850", "psl", "ta850")]
    torch.manual_seed(0)
    reg = UNet(UNetConfig(in_channels=2, base_channels=8, channel_mult=(1,), num_blocks=1))
    den = EDMPrecond(
        UNet(
            UNetConfig(
                in_channels=2 + den_features,
                base_channels=8,
                channel_mult=(1,),
                num_blocks=1,
                noise_channels=8,
            )
        )
    )
    m = manifest_from_networks(
        variables=[s.to_dict() for s in specs],
        coarse_grid=COARSE,
        fine_grid=FINE,
        predictor_stats={
            "rh850": (0.7, 0.2),
            "psl": (101300.0, 1200.0),
            "hus850": (0.004, 0.002),
        },
        precip_stats=(1.0, 1.5),
        regression=reg,
        denoiser=den,
        sigma_c=0.3,
        features=[
            {
                "name": "rh850",
                "op": "relative_humidity",
                "inputs": ["hus850", "ta850"],
                "pressure_pa": 85000.0,
            },
            {"name": "psl", "op": "identity", "inputs": ["psl"]},
        ],
        condition=condition,
        provenance={"data": "test"},
    )
    return save_bundle(tmp_path / "b", m, reg, den)


def test_denoiser_reads_its_own_features(tmp_path):
    # A bundle whose denoiser reads absolute humidity next to the regression's relative
    # humidity (manifest condition "features"): the generator computes both feature
    # sets from the same predictors and normalises each with the manifest's statistics.
    from precipdiff.diffusion import SamplerConfig

    cond = {"source": "regression", "predictors": True, "features": ["rh850", "psl", "hus850"]}
    g = PrecipGenerator.from_bundle(
        _condition_features_bundle(tmp_path, cond), device="cpu", use_compiled=False
    )
    assert [f.name for f in g.features] == ["rh850", "psl"]
    assert [f.name for f in g.condition_features] == ["rh850", "psl", "hus850"]
    x = random_predictors(["hus850", "psl", "ta850"], COARSE, times=2, seed=5)
    reg = g.features_normalised(x)
    den = g.condition_features_normalised(x)
    assert reg.shape == (2, 2, *COARSE.shape) and den.shape == (2, 3, *COARSE.shape)
    np.testing.assert_allclose(den[:, :2], reg, rtol=1e-6)
    np.testing.assert_allclose(den[:, 2], (x["hus850"] - 0.004) / 0.002, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(
        g.features_from_coarse({k: v for k, v in x.items()}, "condition"), den
    )
    # generate() feeds the denoiser its own channels: the same draws as stage 2 alone
    cfg = SamplerConfig(name="heun", steps=2, start="noise", sigma_max=2.0)
    res = g.generate(x, members=2, seed=3, sampler=cfg)
    z = g.sample_fine(g.regress(x), den, members=2, seed=3, sampler=cfg)
    np.testing.assert_allclose(res.fine, g.to_precip(z), rtol=1e-6)
    # the regression's two channels are refused by name
    with pytest.raises(ConfigError, match=r"x_feat must be \(time, 3.*hus850"):
        g.sample_fine(g.regress(x), reg, members=1, sampler=cfg)
    with pytest.raises(ConfigError, match="which"):
        g.features_from_coarse(x, "denoiser")


@pytest.mark.parametrize(
    ("condition", "den_features", "match"),
    [
        # features without predictors
        ({"source": "regression", "predictors": False, "features": ["hus850"]}, 0, "'predictors'"),
        # a variable the bundle does not have
        ({"source": "regression", "predictors": True, "features": ["ua850"]}, 1, "ua850"),
        # a name the regression uses for another quantity (statistics are keyed by name)
        (
            {
                "source": "regression",
                "predictors": True,
                "features": [{"name": "rh850", "op": "identity", "inputs": ["hus850"]}],
            },
            1,
            "rh850",
        ),
        # no statistics for the channel
        ({"source": "regression", "predictors": True, "features": ["ta850"]}, 1, "ta850"),
        # the denoiser's channel count disagrees
        ({"source": "regression", "predictors": True, "features": ["hus850"]}, 3, "1 upsampled"),
        ({"source": "regression", "predictors": True, "features": []}, 0, "empty"),
        ({"source": "regression", "predictors": True, "features": "hus850"}, 1, "features"),
    ],
)
def test_condition_features_are_checked(tmp_path, condition, den_features, match):
    from precipdiff.errors import BundleError

    with pytest.raises(BundleError, match=match):
        _condition_features_bundle(tmp_path, condition, den_features)
