"""Tests of precipdiff.qdm: xsdba agreement, trend preservation, errors, storage, online."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from precipdiff.errors import BundleError, ConfigError, InputError
from precipdiff.offline.qdm_fit import apply_qdm, fit_qdm
from precipdiff.qdm import OnlineQDM, QDMConfig, QDMTables

cftime = pytest.importorskip("cftime")

NY, NX = 2, 3


def _days(start: str, end: str) -> np.ndarray:
    return np.arange(np.datetime64(start), np.datetime64(end) + 1, dtype="datetime64[D]")


def _gamma(rng: np.random.Generator, n: int, shape: float, scale: float) -> np.ndarray:
    return rng.gamma(shape, scale, size=(n, NY, NX)) + 0.01


@pytest.fixture(scope="module")
def series():
    rng = np.random.default_rng(0)
    th = _days("1981-01-01", "2000-12-31")
    tf = _days("2071-01-01", "2090-12-31")
    ref = _gamma(rng, th.size, 0.8, 2.0)
    hist = _gamma(rng, th.size, 0.6, 3.0)
    fut = _gamma(rng, tf.size, 0.6, 3.6)
    return th, tf, ref, hist, fut


def _xsdba_adjust(ref, hist, fut, th, tf, kind: str, n: int) -> np.ndarray:
    xr = pytest.importorskip("xarray")
    xsdba = pytest.importorskip("xsdba")

    def da(a, t):
        return xr.DataArray(
            a, dims=("time", "lat", "lon"), coords={"time": t}, attrs={"units": "mm/d"}
        )

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = xsdba.QuantileDeltaMapping.train(
            da(ref, th), da(hist, th), nquantiles=n, kind=kind, group="time"
        )
        out = q.adjust(da(fut, tf), interp="linear", extrapolation="constant")
    return out.transpose("time", "lat", "lon").values


@pytest.mark.parametrize(("kind", "xk"), [("multiplicative", "*"), ("additive", "+")])
def test_agrees_with_xsdba_quantile_delta_mapping(series, kind: str, xk: str) -> None:
    """Same inputs, 20 quantiles, no grouping, linear interpolation: equal to float32 rounding."""
    th, tf, ref, hist, fut = series
    cfg = QDMConfig(n_quantiles=20, group="none", kinds={"pr": kind})
    tables = fit_qdm({"pr": ref}, {"pr": hist}, th, th, cfg)
    ours = apply_qdm(tables, "pr", fut, tf)
    theirs = _xsdba_adjust(ref, hist, fut, th, tf, xk, 20)
    # tolerance: tables are stored as float32 (relative rounding ~6e-8 per factor)
    np.testing.assert_allclose(ours, theirs, rtol=2e-6, atol=1e-6)


def test_month_groups_agree_with_xsdba_per_month(series) -> None:
    """Monthly grouping equals xsdba fitted and applied on each month's subset."""
    th, tf, ref, hist, fut = series
    cfg = QDMConfig(n_quantiles=20, group="month")
    tables = fit_qdm({"pr": ref}, {"pr": hist}, th, th, cfg)
    ours = apply_qdm(tables, "pr", fut, tf)
    mh = th.astype("datetime64[M]").astype(int) % 12 + 1
    mf = tf.astype("datetime64[M]").astype(int) % 12 + 1
    for month in (1, 7):
        sh, sf = mh == month, mf == month
        theirs = _xsdba_adjust(ref[sh], hist[sh], fut[sf], th[sh], tf[sf], "*", 20)
        np.testing.assert_allclose(ours[sf], theirs, rtol=2e-6, atol=1e-6)


def test_removes_bias_and_preserves_quantile_changes(series) -> None:
    th, tf, ref, hist, _ = series
    fut = hist * 1.3  # a known change of every quantile: +30 %
    cfg = QDMConfig(n_quantiles=50, group="month")
    tables = fit_qdm({"pr": ref}, {"pr": hist}, th, th, cfg)
    ch = apply_qdm(tables, "pr", hist, th)
    cf = apply_qdm(tables, "pr", fut, tf[: th.size] if tf.size >= th.size else tf)
    qs = np.array([0.1, 0.5, 0.9, 0.99])
    np.testing.assert_allclose(np.quantile(ch, qs), np.quantile(ref, qs), rtol=0.03)
    np.testing.assert_allclose(np.quantile(cf, qs) / np.quantile(ch, qs), 1.3, rtol=0.02)


def test_additive_shift_and_calendars() -> None:
    """An ESM in a 360-day calendar against a Gregorian reference; moving windows."""
    rng = np.random.default_rng(2)
    t_ref = _days("1990-01-01", "1999-12-31")
    t_esm = cftime.num2date(np.arange(3600), "days since 1990-01-01", calendar="360_day")
    t_fut = cftime.num2date(np.arange(3600), "days since 2090-01-01", calendar="360_day")
    ref = rng.normal(280.0, 3.0, size=(t_ref.size, NY, NX))
    hist = rng.normal(277.0, 3.0, size=(3600, NY, NX))
    fut = hist + 4.0
    for group in ("month", "window"):
        cfg = QDMConfig(n_quantiles=30, group=group, n_windows=12, window_days=45)
        tables = fit_qdm({"ta": ref}, {"ta": hist}, t_ref, t_esm, cfg)
        assert tables.provenance["hist_calendar"] == "360_day"
        ch = apply_qdm(tables, "ta", hist, t_esm)
        cf = apply_qdm(tables, "ta", fut, t_fut)
        assert ch.mean() == pytest.approx(ref.mean(), abs=0.05)
        assert cf.mean() - ch.mean() == pytest.approx(4.0, abs=0.01)


def test_trace_threshold_fixes_drizzle() -> None:
    rng = np.random.default_rng(3)
    t = _days("1981-01-01", "1990-12-31")
    ref = rng.gamma(0.7, 4.0, size=(t.size, NY, NX)) * (rng.random((t.size, NY, NX)) < 0.4)
    hist = rng.gamma(0.7, 3.0, size=(t.size, NY, NX)) + 0.05  # drizzle every day
    cfg = QDMConfig(n_quantiles=50, trace={"pr": 0.1})
    tables = fit_qdm({"pr": ref}, {"pr": hist}, t, t, cfg)
    ch = apply_qdm(tables, "pr", hist, t)
    assert np.mean(ch > 0) == pytest.approx(np.mean(ref > 0.1), abs=0.03)
    assert ch.min() == 0.0


def test_missing_values_pass_through_and_masked_cells(series) -> None:
    th, _, ref, hist, _ = series
    ref = ref.copy()
    hist = hist.copy()
    ref[:, 0, 0] = np.nan  # e.g. a sea cell of a land-only product
    hist[:, 0, 0] = np.nan
    hist[5, 1, 1] = np.nan
    tables = fit_qdm({"pr": ref}, {"pr": hist}, th, th, QDMConfig(n_quantiles=10))
    out = apply_qdm(tables, "pr", hist, th)
    assert np.isnan(out[:, 0, 0]).all()
    assert np.isnan(out[5, 1, 1]) and np.isfinite(out[6, 1, 1])


def test_errors_name_the_problem(series) -> None:
    th, _, ref, hist, _ = series
    with pytest.raises(InputError, match="regrid"):
        fit_qdm({"pr": ref}, {"pr": hist[:, :1]}, th, th)
    with pytest.raises(InputError, match="unit mismatch"):
        fit_qdm({"pr": ref}, {"pr": hist / 86400.0}, th, th)
    with pytest.raises(InputError, match="negative"):
        fit_qdm({"pr": ref}, {"pr": hist - 1.0}, th, th)
    with pytest.raises(InputError, match="only one"):
        fit_qdm({"pr": ref}, {"hus": hist}, th, th)
    with pytest.raises(InputError, match="min_samples"):
        fit_qdm({"pr": ref[:40]}, {"pr": hist[:40]}, th[:40], th[:40], QDMConfig(min_samples=41))
    with pytest.raises(InputError, match="time steps"):
        fit_qdm({"pr": ref}, {"pr": hist[:-1]}, th, th)
    with pytest.raises(ConfigError, match="unknown QDM config key"):
        QDMConfig.from_dict({"n_quantile": 5})
    with pytest.raises(ConfigError, match="additively"):
        QDMConfig(trace={"psl": 1.0})
    with pytest.raises(ConfigError, match="calendar"):
        fit_qdm({"pr": ref}, {"pr": hist}, th, th, hist_calendar="martian")
    # a December-January-February-only fit cannot correct July
    djf = np.isin(th.astype("datetime64[M]").astype(int) % 12, [11, 0, 1])
    tables = fit_qdm({"pr": ref[djf]}, {"pr": hist[djf]}, th[djf], th[djf])
    with pytest.raises(InputError, match="month 3"):
        apply_qdm(tables, "pr", hist, th)
    with pytest.raises(InputError, match="no QDM table"):
        apply_qdm(tables, "hus", hist, th)


def test_tables_roundtrip_and_manifest(series, tmp_path) -> None:
    th, tf, ref, hist, fut = series
    cfg = QDMConfig(n_quantiles=16, group="month", trace={"pr": 0.1})
    tables = fit_qdm(
        {"pr": ref, "psl": ref * 100 + 1e5},
        {"pr": hist, "psl": hist * 100 + 1e5},
        th,
        th,
        cfg,
        units={"pr": "mm/day"},
    )
    entry = tables.to_manifest(tmp_path)
    assert entry["file"] == "qdm_tables.safetensors" and len(entry["sha256"]) == 64
    assert (tmp_path / entry["file"]).stat().st_size < 2 * 2 * 12 * 16 * NY * NX * 4 + 4096
    back = QDMTables.from_manifest(entry, tmp_path)
    assert back.config == tables.config
    assert back.variables["pr"].units == "mm/day"
    np.testing.assert_array_equal(apply_qdm(back, "pr", fut, tf), apply_qdm(tables, "pr", fut, tf))
    (tmp_path / entry["file"]).write_bytes(b"garbage")
    with pytest.raises(BundleError, match="sha256"):
        QDMTables.from_manifest(entry, tmp_path)


def test_online_static_equals_offline_quantile_mapping(series) -> None:
    th, tf, ref, hist, fut = series
    tables = fit_qdm({"pr": ref}, {"pr": hist}, th, th, QDMConfig(n_quantiles=20))
    offline = apply_qdm(tables, "pr", fut[:40], tf[:40], projection="static")
    online = OnlineQDM(tables, mode="static")
    for i in range(40):
        got = online.apply({"pr": fut[i], "other": np.ones((NY, NX))}, tf[i])
        np.testing.assert_allclose(got["pr"], offline[i], rtol=1e-6)
        assert got["other"].dtype == np.float32
    with pytest.raises(InputError, match="non-finite"):
        online.apply({"pr": np.full((NY, NX), np.nan)}, tf[0])
    with pytest.raises(InputError, match="shape"):
        online.apply({"pr": np.ones((3, 3))}, tf[0])


def test_online_trailing_is_restart_safe(series) -> None:
    th, tf, ref, hist, fut = series
    tables = fit_qdm({"pr": ref}, {"pr": hist}, th, th, QDMConfig(n_quantiles=20))
    a = OnlineQDM(tables, trailing_years=2.0)
    n = 200  # crosses several month boundaries
    for i in range(n // 2):
        a.apply({"pr": fut[i]}, tf[i])
    state = {k: v.copy() for k, v in a.state_dict().items()}
    b = OnlineQDM(tables, trailing_years=2.0)
    b.load_state_dict(state)
    for i in range(n // 2, n):
        ra = a.apply({"pr": fut[i]}, tf[i])["pr"]
        rb = b.apply({"pr": fut[i]}, tf[i])["pr"]
        np.testing.assert_array_equal(ra, rb)
    bad = dict(state)
    bad["pr/proj_q"] = bad["pr/proj_q"][:, :3]
    with pytest.raises(InputError, match="shape"):
        b.load_state_dict(bad)
    with pytest.raises(InputError, match="missing"):
        b.load_state_dict({"buffer_count": np.zeros(1)})


def test_online_trailing_converges_to_offline_qdm() -> None:
    """After a few trailing windows of a changed climate, online ~ offline QDM (trend kept)."""
    rng = np.random.default_rng(5)
    th = _days("1981-01-01", "1990-12-31")
    tf = _days("2081-01-01", "2090-12-31")
    ref = rng.normal(10.0, 2.0, size=(th.size, 1, 1))
    hist = rng.normal(8.0, 1.0, size=(th.size, 1, 1))
    fut = rng.normal(11.0, 1.0, size=(tf.size, 1, 1))  # +3 warming in the ESM
    cfg = QDMConfig(n_quantiles=20, group="none", kinds={"ta": "additive"})
    tables = fit_qdm({"ta": ref}, {"ta": hist}, th, th, cfg)
    static = OnlineQDM(tables, mode="static")
    trailing = OnlineQDM(tables, trailing_years=1.0)
    out_s, out_t = [], []
    for i in range(tf.size):
        out_s.append(static.apply({"ta": fut[i]}, tf[i])["ta"])
        out_t.append(trailing.apply({"ta": fut[i]}, tf[i])["ta"])
    last = slice(-3 * 365, None)
    offline = apply_qdm(tables, "ta", fut, tf)
    # QDM: corrected future mean = ref mean + ESM change (10 + 3); static QM inflates the spread
    assert float(np.mean(offline[last])) == pytest.approx(13.0, abs=0.15)
    assert float(np.mean(np.array(out_t)[last])) == pytest.approx(13.0, abs=0.3)
    assert float(np.std(np.array(out_t)[last])) == pytest.approx(2.0, rel=0.1)
    # the static mapping extrapolates with a constant correction and loses the variance
    assert float(np.std(np.array(out_s)[last])) < 1.5


def test_only_groups_with_data_are_stored(series, tmp_path) -> None:
    th, _, ref, hist, _ = series
    djf = np.isin(th.astype("datetime64[M]").astype(int) % 12, [11, 0, 1])
    tables = fit_qdm(
        {"pr": ref[djf]}, {"pr": hist[djf]}, th[djf], th[djf], QDMConfig(n_quantiles=8)
    )
    assert tables.stored_groups() == [0, 1, 11]
    tables.save(tmp_path / "t.safetensors")
    back = QDMTables.load(tmp_path / "t.safetensors")
    np.testing.assert_array_equal(back.variables["pr"].ref_q, tables.variables["pr"].ref_q)
    assert np.isnan(back.variables["pr"].ref_q[5]).all()


def test_ranks_equal_xsdba_rank_with_ties() -> None:
    """projection='self' ranks exactly as xsdba.utils.rank(pct=True), tied zeros included."""
    xr = pytest.importorskip("xarray")
    xsdba = pytest.importorskip("xsdba")
    from precipdiff.offline.qdm_fit import _ranks_pct

    rng = np.random.default_rng(7)
    x = rng.gamma(0.5, 2.0, size=(40, 3))
    x[rng.random((40, 3)) < 0.4] = 0.0  # tied zeros (dry days) at the bottom
    x[:3, 2] = x[:, 2].max()  # ties at the top too
    x[5, 1] = np.nan
    rnk = xsdba.utils.rank(xr.DataArray(x, dims=("time", "c")), dim="time", pct=True)
    theirs = rnk.transpose("time", "c").values
    np.testing.assert_allclose(_ranks_pct(x), theirs, rtol=0, atol=1e-12)


def test_self_projection_with_tied_zeros_agrees_with_xsdba(series) -> None:
    th, tf, ref, hist, fut = series
    rng = np.random.default_rng(8)
    fut0 = np.where(rng.random(fut.shape) < 0.3, 0.0, fut)  # exact zeros, no trace
    cfg = QDMConfig(n_quantiles=20, group="none", kinds={"ta": "additive"})
    tables = fit_qdm({"ta": ref}, {"ta": hist}, th, th, cfg)
    ours = apply_qdm(tables, "ta", fut0, tf)
    theirs = _xsdba_adjust(ref, hist, fut0, th, tf, "+", 20)
    np.testing.assert_allclose(ours, theirs, rtol=2e-6, atol=1e-6)


def test_all_nan_fit_is_refused_by_name() -> None:
    t = _days("2000-01-01", "2001-12-31")
    ok = np.random.default_rng(1).normal(280.0, 2.0, size=(t.size, NY, NX))
    for ref, hist, which in (
        (np.full_like(ok, np.nan), ok, "reference"),
        (ok, np.full_like(ok, np.nan), "ESM historical"),
    ):
        with pytest.raises(InputError, match=rf"{which} series of 'ta' has no finite value"):
            fit_qdm({"ta": ref}, {"ta": hist}, t, t, QDMConfig(n_quantiles=5))


def test_calendar_of_application_must_match_the_fit() -> None:
    t_esm = cftime.num2date(np.arange(720), "days since 1990-01-01", calendar="360_day")
    t_greg = _days("2050-01-01", "2051-12-31")
    rng = np.random.default_rng(4)
    ref = rng.normal(280.0, 3.0, size=(720, NY, NX))
    hist = ref - 2.0
    tables = fit_qdm({"ta": ref}, {"ta": hist}, t_esm, t_esm, QDMConfig(n_quantiles=10))
    with pytest.raises(
        InputError, match=r"fitted on an ESM in the '360_day' calendar.*'proleptic_gregorian'"
    ):
        apply_qdm(tables, "ta", rng.normal(280.0, 3.0, size=(t_greg.size, NY, NX)), t_greg)
    with pytest.raises(ConfigError, match=r"'360_day' calendar.*'noleap'"):
        OnlineQDM(tables, calendar="noleap")
    OnlineQDM(tables, calendar="360_day")  # the fit's calendar is accepted
    # Gregorian, standard and proleptic_gregorian agree on every date after 1582.
    t_std = cftime.num2date(np.arange(730), "days since 1990-01-01", calendar="standard")
    greg = fit_qdm(
        {"ta": ref[:720]}, {"ta": hist[:720]}, t_std[:720], t_std[:720], QDMConfig(n_quantiles=10)
    )
    apply_qdm(greg, "ta", ref[:720], t_greg[:720])


def test_negative_values_of_multiplicative_variables_are_refused_with_a_trace() -> None:
    t = _days("1981-01-01", "1990-12-31")
    rng = np.random.default_rng(5)
    ref = rng.gamma(0.7, 4.0, size=(t.size, NY, NX))
    hist = rng.gamma(0.7, 3.0, size=(t.size, NY, NX))
    cfg = QDMConfig(n_quantiles=20, trace={"pr": 0.1})
    tables = fit_qdm({"pr": ref}, {"pr": hist}, t, t, cfg)
    bad = hist.copy()
    bad[10, 0, 0] = -2.0
    with pytest.raises(InputError, match=r"'pr' has 1 negative value.*min -2"):
        apply_qdm(tables, "pr", bad, t)
    with pytest.raises(InputError, match=r"'pr' has 1 negative value"):
        fit_qdm({"pr": ref}, {"pr": bad}, t, t, cfg)
    online = OnlineQDM(tables, calendar="proleptic_gregorian")
    with pytest.raises(InputError, match=r"'pr' has 1 negative value"):
        online.apply({"pr": bad[10]}, t[10])


def test_self_projection_needs_a_distribution() -> None:
    """A series too short to have a distribution is not corrected as if at the median."""
    t = _days("1981-01-01", "1990-12-31")
    rng = np.random.default_rng(6)
    ref = rng.normal(280.0, 3.0, size=(t.size, NY, NX))
    tables = fit_qdm({"ta": ref}, {"ta": ref - 1.0}, t, t, QDMConfig(n_quantiles=20, group="none"))
    with pytest.raises(InputError, match=r"projection='self'.*1 value.*min_samples = 10.*'static'"):
        apply_qdm(tables, "ta", ref[:1], t[:1])
    out = apply_qdm(tables, "ta", ref[:1], t[:1], projection="static")
    assert out.shape == (1, NY, NX)
