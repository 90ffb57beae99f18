"""Unit tests of precipdiff.offline.metrics against hand computations and reference packages."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from precipdiff.errors import InputError
from precipdiff.offline import metrics


def _ens(seed: int = 0, t: int = 6, m: int = 5, ny: int = 4, nx: int = 6):
    rng = np.random.default_rng(seed)
    obs = rng.gamma(0.7, 3.0, size=(t, ny, nx))
    ens = rng.gamma(0.7, 3.0, size=(t, m, ny, nx))
    ens[ens < 0.5] = 0.0  # exact zeros: ties, as in real precipitation
    obs[obs < 0.5] = 0.0
    return ens, obs


def test_bias_and_mean_absolute_bias_hand_values() -> None:
    obs = np.zeros((2, 2, 2))
    pred = np.stack([np.array([[1.0, -1.0], [2.0, 0.0]])] * 3)  # different length is fine
    assert metrics.mean_bias(pred, obs) == pytest.approx(0.5)
    assert metrics.mean_absolute_bias(pred, obs) == pytest.approx(1.0)
    # area weighting with latitudes: the equatorward row counts more
    lat = np.array([0.0, 60.0])
    w0, w1 = 1.0, 0.5
    expected = (w0 * (1 + 1) + w1 * (2 + 0)) / (2 * w0 + 2 * w1)
    assert metrics.mean_absolute_bias(pred, obs, lat) == pytest.approx(expected)


def test_bias_ignores_nan_cells_and_averages_members() -> None:
    obs = np.ones((3, 2, 2))
    obs[:, 0, 0] = np.nan  # a sea cell
    pred = np.full((3, 4, 2, 2), 2.0)
    assert metrics.mean_absolute_bias(pred, obs) == pytest.approx(1.0)
    assert np.isnan(metrics.time_mean_bias(pred, obs)[0, 0])


def test_rmse_and_mae() -> None:
    obs = np.zeros((2, 1, 2))
    pred = np.array([[[3.0, 4.0]], [[0.0, 0.0]]])
    assert metrics.rmse(pred, obs) == pytest.approx(np.sqrt((9 + 16) / 4))
    assert metrics.mae(pred, obs) == pytest.approx(7 / 4)
    with pytest.raises(InputError, match="does not match"):
        metrics.rmse(pred, np.zeros((2, 2, 2)))


def _crps_bruteforce(ens: np.ndarray, obs: np.ndarray, fair: bool) -> np.ndarray:
    """Textbook double sum: mean|x_i - y| - sum_ij |x_i - x_j| / (2 M^2 or 2 M (M-1))."""
    m = ens.shape[1]
    skill = np.mean(np.abs(ens - obs[:, None]), axis=1)
    pairs = np.abs(ens[:, :, None] - ens[:, None, :]).sum(axis=(1, 2))
    return skill - pairs / (2 * m * (m - 1) if fair else 2 * m * m)


def test_crps_matches_properscoring_and_the_definition() -> None:
    properscoring = pytest.importorskip("properscoring")
    ens, obs = _ens()
    ours = metrics.crps_ensemble(ens, obs)
    ref = properscoring.crps_ensemble(obs, np.moveaxis(ens, 1, -1))
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ours, _crps_bruteforce(ens, obs, False), rtol=1e-10, atol=1e-12)
    fair = metrics.crps_ensemble(ens, obs, fair=True)
    np.testing.assert_allclose(fair, _crps_bruteforce(ens, obs, True), rtol=1e-10, atol=1e-12)
    assert np.all(fair <= ours + 1e-12)


def test_crps_single_member_is_absolute_error() -> None:
    ens, obs = _ens(m=1)
    np.testing.assert_allclose(metrics.crps_ensemble(ens, obs), np.abs(ens[:, 0] - obs))
    with pytest.raises(InputError, match="at least 2"):
        metrics.crps_ensemble(ens, obs, fair=True)


def test_spread_skill_calibrated_ensemble_ratio_near_one() -> None:
    rng = np.random.default_rng(1)
    truth_centre = rng.normal(size=(400, 1, 4, 4))
    # obs and members are exchangeable draws around the same centre: calibrated
    ens = truth_centre + rng.normal(size=(400, 8, 4, 4))
    obs = (truth_centre + rng.normal(size=(400, 1, 4, 4)))[:, 0]
    ss = metrics.spread_skill(ens, obs, n_bins=5)
    assert ss.ratio == pytest.approx(1.0, abs=0.05)
    assert ss.bin_spread.shape == (5,) and np.all(np.diff(ss.bin_spread) >= 0)
    under = metrics.spread_skill(truth_centre + 0.3 * rng.normal(size=(400, 8, 4, 4)), obs)
    assert under.ratio < 0.5


def test_rank_histogram_counts_and_ties() -> None:
    ens, obs = _ens(t=50)
    h = metrics.rank_histogram(ens, obs, seed=3)
    assert h.shape == (6,)
    assert h.sum() == obs.size
    # all-tied case (everything dry): ranks spread uniformly, not all in bin 0
    h0 = metrics.rank_histogram(np.zeros((2000, 4, 1, 1)), np.zeros((2000, 1, 1)), seed=0)
    assert h0.min() > 300


def test_wet_day_frequency_and_quantiles() -> None:
    x = np.array([0.0, 0.5, 1.0, 5.0]).reshape(4, 1, 1)
    assert metrics.wet_day_frequency(x)[0, 0] == pytest.approx(0.5)
    vals = np.arange(1001, dtype=float).reshape(1001, 1, 1)
    np.testing.assert_allclose(metrics.quantiles(vals), [950.0, 990.0, 999.0])
    assert metrics.quantiles(vals, per_cell=True).shape == (3, 1, 1)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        metrics.quantiles(vals, q=(95,))


def test_radial_spectrum_peaks_at_the_wave() -> None:
    ny, nx = 32, 32
    _yy, xx = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    field = np.sin(2 * np.pi * 4 * xx / nx)[None]
    k, p = metrics.power_spectrum_radial(field, dx=1.0)
    assert k[np.argmax(p)] == pytest.approx(4 / nx)
    # NaN cells do not break it
    field2 = field.copy()
    field2[0, :3, :3] = np.nan
    _k2, p2 = metrics.power_spectrum_radial(field2)
    assert np.all(np.isfinite(p2))


def test_hann_window_removes_edge_leakage_of_smooth_fields() -> None:
    # A smooth, non-periodic ramp has no small-scale structure, but without a window
    # the jump between its opposite edges puts power into every wavenumber (what
    # flattered smooth baselines in the earlier Iberia report).
    ny, nx = 12, 14
    yy, xx = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    ramp = (0.3 * xx + 0.2 * yy)[None].astype(float)
    k, p_raw = metrics.power_spectrum_radial(ramp, window=None)
    _, p_hann = metrics.power_spectrum_radial(ramp, window="hann")
    high = k >= 0.25
    assert p_hann[high].sum() < 0.05 * p_raw[high].sum()
    # white noise: the window's power is normalised out (same level within noise)
    rng = np.random.default_rng(1)
    noise = rng.standard_normal((400, ny, nx))
    _, pn_raw = metrics.power_spectrum_radial(noise, window=None)
    _, pn_hann = metrics.power_spectrum_radial(noise, window="hann")
    assert pn_hann.mean() == pytest.approx(pn_raw.mean(), rel=0.1)
    with pytest.raises(InputError, match="window"):
        metrics.power_spectrum_radial(noise, window="blackman")


def test_band_power_ratio() -> None:
    rng = np.random.default_rng(2)
    a = rng.standard_normal((50, 12, 14))
    assert metrics.band_power_ratio(a, a, (1.0, 2.0), dx=0.5) == pytest.approx(1.0)
    assert metrics.band_power_ratio(2 * a, a, (1.0, 2.0), dx=0.5) == pytest.approx(4.0)
    with pytest.raises(InputError, match="no spectral bin"):
        metrics.band_power_ratio(a, a, (0.01, 0.02), dx=0.5)


def test_land_box_finds_the_largest_valid_rectangle() -> None:
    m = np.zeros((6, 8), bool)
    m[1:5, 2:7] = True  # 4 x 5 = 20
    m[5, 0:3] = True  # a separate strip
    m[2, 1] = True
    rows, cols = metrics.land_box(m)
    assert (rows, cols) == (slice(1, 5), slice(2, 7))
    assert m[rows, cols].all()
    with pytest.raises(InputError, match="valid cell"):
        metrics.land_box(np.zeros((3, 3), bool))


def test_zonal_spectrum_and_band() -> None:
    nlon = 36
    lon = np.arange(nlon)
    lat = np.array([-30.0, 0.0, 30.0])
    field = np.zeros((2, 3, nlon))
    field[:, 1] = np.cos(2 * np.pi * 3 * lon / nlon)
    k, p = metrics.power_spectrum_zonal(field)
    assert k[np.argmax(p)] == 3
    _, pb = metrics.power_spectrum_zonal(field, lat, lat_band=(20, 40))
    assert np.allclose(pb, 0)
    with pytest.raises(InputError, match="band"):
        metrics.power_spectrum_zonal(field, lat, lat_band=(60, 70))


def test_change_signal_and_error() -> None:
    rng = np.random.default_rng(0)
    h = rng.gamma(1.0, 2.0, size=(500, 2, 2))
    f = 1.2 * h
    np.testing.assert_allclose(metrics.change_signal(h, f, q=(0.5, 0.9)), [0.2, 0.2])
    np.testing.assert_allclose(metrics.change_signal(h, f), np.full((2, 2), 0.2))
    out = metrics.change_signal_error(h, f, 0.5 * h, 0.5 * f, q=(0.5, 0.9))
    np.testing.assert_allclose(out["difference"], 0.0, atol=1e-12)
    out2 = metrics.change_signal_error(h, f, h, h, q=(0.5,))
    np.testing.assert_allclose(out2["difference"], [-0.2])
    np.testing.assert_allclose(metrics.change_signal(h, h + 1, q=(0.5,), kind="absolute"), [1.0])


def test_water_mass_consistency() -> None:
    rng = np.random.default_rng(0)
    coarse = rng.gamma(1.0, 2.0, size=(3, 2, 3))
    fine = np.repeat(np.repeat(coarse, 4, axis=-2), 4, axis=-1)
    out = metrics.water_mass_consistency(coarse, fine[:, None], 4)
    assert out["relative_total_error"] == pytest.approx(0.0, abs=1e-12)
    assert out["block_mae"] == pytest.approx(0.0, abs=1e-12)
    out2 = metrics.water_mass_consistency(coarse, 1.1 * fine, 4)
    assert out2["relative_total_error"] == pytest.approx(0.1)
    with pytest.raises(InputError, match="multiple"):
        metrics.block_mean(fine[..., :7], 4)


def test_area_weights_shape_mismatch_names_shapes() -> None:
    class G:
        def cell_area(self):
            return np.ones((2, 3))

    assert metrics.area_weights(G(), (2, 3)).sum() == pytest.approx(1.0)
    with pytest.raises(InputError, match=r"\(2, 3\)"):
        metrics.area_weights(G(), (3, 3))


def _seasons(seed: int, blocks: int, days: int = 30, factor: float = 1.0, cells: int = 5):
    """Days of ``blocks`` seasons; each season has its own multiplicative anomaly."""
    rng = np.random.default_rng(seed)
    anomaly = np.repeat(rng.lognormal(0.0, 0.3, size=blocks), days)
    x = factor * anomaly[:, None, None] * rng.gamma(0.8, 3.0, size=(blocks * days, cells, cells))
    x[:, 0, 0] = np.nan  # a sea cell
    return x, np.repeat(np.arange(blocks), days)


def test_change_bootstrap_with_one_block_reproduces_the_point_estimates() -> None:
    h, _ = _seasons(0, 3)
    f, _ = _seasons(1, 4, factor=1.2)
    q = (0.9, 0.99)
    d = metrics.change_signal_bootstrap(h, f, np.zeros(len(h)), np.zeros(len(f)), q, n=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the all-NaN sea cell
        tm_h, tm_f = np.nanmean(h, axis=0), np.nanmean(f, axis=0)
    expected = np.nanmean(tm_f) / np.nanmean(tm_h) - 1.0
    np.testing.assert_allclose(d.mean, expected, rtol=1e-12)
    np.testing.assert_allclose(d.quantile, np.stack([metrics.change_signal(h, f, q)] * 3))
    np.testing.assert_allclose(d.maps[1], metrics.change_signal(h, f), rtol=1e-12)
    assert np.isnan(d.maps[:, 0, 0]).all()


def test_change_bootstrap_pairs_products_on_the_same_days() -> None:
    """Same blocks, n and seed: a product that is a constant multiple has the same changes."""
    h, bh = _seasons(2, 8)
    f, bf = _seasons(3, 10, factor=0.9)
    members = np.stack([h, 2.0 * h], axis=1)  # (time, member, lat, lon): scaling only
    a = metrics.change_signal_bootstrap(h, f, bh, bf, n=40, seed=5)
    b = metrics.change_signal_bootstrap(
        3.0 * members, 3.0 * np.stack([f, 2.0 * f], axis=1), bh, bf, n=40, seed=5
    )
    np.testing.assert_allclose(b.mean, a.mean, rtol=1e-10)
    np.testing.assert_allclose(b.maps, a.maps, rtol=1e-10)
    # the mean change is resampled: its draws vary (season anomalies) around the estimate
    assert a.mean.std() > 0.02
    c = metrics.change_signal_bootstrap(h, f, bh, bf, n=40, seed=6)
    assert not np.allclose(c.mean, a.mean)


def test_change_bootstrap_spread_matches_repeated_sampling() -> None:
    """The bootstrap standard deviation of the mean change is that of independent samples."""
    truth = []
    for k in range(300):
        h, _ = _seasons(100 + 2 * k, 12, days=5, cells=3)
        f, _ = _seasons(101 + 2 * k, 12, days=5, cells=3, factor=1.1)
        truth.append(np.nanmean(f) / np.nanmean(h) - 1.0)
    h, bh = _seasons(7, 12, days=5, cells=3)
    f, bf = _seasons(8, 12, days=5, cells=3, factor=1.1)
    d = metrics.change_signal_bootstrap(h, f, bh, bf, q=(0.5,), n=1000, seed=0)
    # 12 seasons: the bootstrap's own error on a standard deviation is about 20 %
    assert d.mean.std() == pytest.approx(np.std(truth), rel=0.3)


def test_change_map_split_half_separates_signal_from_noise() -> None:
    rng = np.random.default_rng(0)
    pattern = np.linspace(0.5, 2.0, 36).reshape(6, 6)
    blocks = np.repeat(np.arange(10), 20)
    h = rng.gamma(2.0, 1.0, size=(200, 6, 6))
    # a strong fixed change pattern: halves agree; no pattern: they do not
    f_sig = pattern * rng.gamma(40.0, 1 / 20.0, size=(200, 6, 6))
    h_sig = rng.gamma(40.0, 1 / 20.0, size=(200, 6, 6))
    r_sig = metrics.change_map_split_half(h_sig, f_sig, blocks, blocks, n=20)
    r_noise = metrics.change_map_split_half(
        h, rng.gamma(2.0, 1.0, size=(200, 6, 6)), blocks, blocks, n=50
    )
    assert r_sig.mean() > 0.95
    assert abs(r_noise.mean()) < 0.15


def test_change_bootstrap_rejects_bad_blocks() -> None:
    h, bh = _seasons(0, 3)
    with pytest.raises(InputError, match="blocks must label"):
        metrics.change_signal_bootstrap(h, h, bh[:-1], bh)
    with pytest.raises(InputError, match="n >= 1"):
        metrics.change_signal_bootstrap(h, h, bh, bh, n=0)
    with pytest.raises(InputError, match="two blocks"):
        metrics.change_map_split_half(h, h, np.zeros(len(h)), bh)
