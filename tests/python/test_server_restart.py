"""Restarts (bit-for-bit continuation) and the fine-grid output stream."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_server_plugin import NumpyEngine, fields_at, make_plugin

from precipdiff.errors import InputError
from precipdiff.io import import_netcdf4
from precipdiff.server import Plugin

DT = 21600.0  # 4 steps a day


def drive(plugin: Plugin, steps: range) -> list[tuple[int, np.ndarray, np.ndarray]]:
    out = []
    for s in steps:
        for name, val in fields_at(s).items():
            plugin.set_field(name, val)
        if plugin.step((s + 1) * DT, DT):
            out.append(
                (plugin.ready_window, np.array(plugin.output_fine()), plugin.output_members())
            )
    return out


@pytest.mark.parametrize("inference", ["sync", "lagged"])
@pytest.mark.parametrize("split_step", [20, 22])  # at a window boundary, mid-window
def test_restart_bit_for_bit(tmp_path: Path, inference: str, split_step: int) -> None:
    kw = {"members": 3, "return_mode": "cycle", "inference": inference, "bias_correction": True}
    full, _ = make_plugin(tmp_path, **kw)
    ref = drive(full, range(40))  # 10 windows
    full.close()

    first, _ = make_plugin(tmp_path, **kw)
    a = drive(first, range(split_step))
    rst = tmp_path / "precipdiff.res.nc"
    first.write_restart(str(rst))
    before = np.array(first.output_fine())
    first.close()

    second, _ = make_plugin(tmp_path, **kw)
    second.read_restart(str(rst))
    np.testing.assert_array_equal(second.output_fine(), before)
    b = drive(second, range(split_step, 40))
    second.close()
    got = a + b
    assert [w for w, _, _ in got] == [w for w, _, _ in ref]
    for (w1, f1, m1), (w2, f2, m2) in zip(got, ref, strict=True):
        assert w1 == w2
        np.testing.assert_array_equal(f1, f2)
        np.testing.assert_array_equal(m1, m2)


def test_restart_errors_name_the_problem(tmp_path: Path) -> None:
    plugin, _ = make_plugin(tmp_path, seed=3)
    with pytest.raises(InputError, match=r"restart file .*nope.nc.* does not exist"):
        plugin.read_restart(str(tmp_path / "nope.nc"))
    junk = tmp_path / "junk.nc"
    junk.write_bytes(b"not a netcdf file")
    with pytest.raises(InputError, match="not a readable netCDF"):
        plugin.read_restart(str(junk))
    drive(plugin, range(3))
    rst = tmp_path / "r.nc"
    plugin.write_restart(str(rst))
    other, _ = make_plugin(tmp_path, seed=4)
    with pytest.raises(InputError, match=r"seed = 3.*this run has seed = 4"):
        other.read_restart(str(rst))
    more, _ = make_plugin(tmp_path, seed=3, members=2, return_member=1)
    with pytest.raises(InputError, match="members"):
        more.read_restart(str(rst))


def test_lagged_restart_needs_lagged_mode(tmp_path: Path) -> None:
    lag, _ = make_plugin(tmp_path, inference="lagged")
    drive(lag, range(6))  # window 0 pending
    lag.write_restart(str(tmp_path / "l.nc"))
    sync, _ = make_plugin(tmp_path, inference="sync")
    with pytest.raises(InputError, match=r"pending result of window 0.*inference = 'lagged'"):
        sync.read_restart(str(tmp_path / "l.nc"))


def test_restart_continues_time_check(tmp_path: Path) -> None:
    plugin, _ = make_plugin(tmp_path)
    drive(plugin, range(3))
    rst = tmp_path / "r.nc"
    plugin.write_restart(str(rst))
    again, _ = make_plugin(tmp_path)
    again.read_restart(str(rst))
    with pytest.raises(InputError, match=r"expected model_time_s = 86400"):
        again.step(DT, DT)


def read_stream(path: Path) -> dict[str, object]:
    nc4 = import_netcdf4()
    with nc4.Dataset(str(path)) as ds:
        return {
            "time": np.array(ds["time"][:]),
            "bnds": np.array(ds["time_bnds"][:]),
            "pr": np.array(ds["pr"][:]),
            "units": ds["pr"].units,
            "time_units": ds["time"].units,
            "calendar": ds["time"].calendar,
            "attrs": {k: ds.getncattr(k) for k in ds.ncattrs()},
        }


def test_output_stream_monthly_files_all_members(tmp_path: Path) -> None:
    out = tmp_path / "out"
    kw = {
        "members": 2,
        "output_dir": str(out),
        "reference_time": "2001-01-30 00:00:00",
        "calendar": "noleap",
        "seed": 11,
    }
    plugin, _ = make_plugin(tmp_path, **kw)
    got = drive(plugin, range(16))  # 4 days: Jan 30, 31, Feb 1, 2
    plugin.close()
    files = sorted(p.name for p in out.iterdir())
    assert files == ["precipdiff_2001-01.nc", "precipdiff_2001-02.nc"]
    jan = read_stream(out / "precipdiff_2001-01.nc")
    feb = read_stream(out / "precipdiff_2001-02.nc")
    assert jan["pr"].shape == (2, 2, 20, 20)  # type: ignore[union-attr]
    np.testing.assert_array_equal(jan["time"], [43200.0, 129600.0])
    np.testing.assert_array_equal(feb["bnds"], [[172800.0, 259200.0], [259200.0, 345600.0]])
    assert jan["units"] == "kg m-2 s-1"
    assert jan["time_units"] == "seconds since 2001-01-30 00:00:00"
    assert jan["calendar"] == "noleap"
    attrs = jan["attrs"]
    assert isinstance(attrs, dict)
    assert "bundle_id" not in attrs and int(attrs["seed"]) == 11  # one name: bundle_hash
    assert "precipdiff_nml" in attrs["namelist"] and attrs["Conventions"] == "CF-1.8"
    stream = np.concatenate([jan["pr"], feb["pr"]])  # type: ignore[list-item]
    members = np.stack([m for _, _, m in got])
    np.testing.assert_allclose(stream, members, rtol=1e-6)
    assert attrs["bundle_hash"] == "numpy-engine-1"


def test_output_stream_rank_and_restart_rewrite(tmp_path: Path) -> None:
    out = tmp_path / "out"
    kw = {"output_dir": str(out), "output_frequency": "year", "output_rank": 1}
    rank0, _ = make_plugin(tmp_path, **kw)
    drive(rank0, range(4))
    rank0.close()
    assert not out.exists() or not any(out.iterdir())  # only rank 1 writes

    from precipdiff.server import PluginConfig

    cfg = PluginConfig(bundle_path="unused", **kw)  # type: ignore[arg-type]
    from test_server_plugin import MODEL

    p1 = Plugin(cfg, MODEL.lon, MODEL.lat, NumpyEngine(), rank=1)
    first = drive(p1, range(8))
    p1.write_restart(str(tmp_path / "r.nc"))
    drive(p1, range(8, 12))
    # Until the year ends or the plugin closes, only a hidden temporary file exists.
    assert [p.name for p in out.iterdir() if not p.name.startswith(".")] == []
    p1.close()
    assert [p.name for p in out.iterdir()] == ["precipdiff_2000.nc"]
    # A restarted run redoes window 2: no duplicate time in the yearly file.
    p2 = Plugin(cfg, MODEL.lon, MODEL.lat, NumpyEngine(), rank=1)
    p2.read_restart(str(tmp_path / "r.nc"))
    drive(p2, range(8, 16))
    p2.close()
    data = read_stream(out / "precipdiff_2000.nc")
    np.testing.assert_array_equal(data["bnds"][:, 0], np.arange(4) * 86400.0)  # type: ignore[index]
    # The windows before the restart were carried over from the published file.
    carried = data["pr"][:2]  # type: ignore[index]
    np.testing.assert_allclose(carried, np.stack([m for _, _, m in first]), rtol=1e-6)


def test_lagged_close_writes_pending_window(tmp_path: Path) -> None:
    out = tmp_path / "out"
    plugin, _ = make_plugin(tmp_path, inference="lagged", output_dir=str(out))
    got = drive(plugin, range(8))  # windows 0, 1 closed; only 0 handed back
    assert [w for w, _, _ in got] == [0]
    plugin.close()
    data = read_stream(out / "precipdiff_2000-01.nc")
    assert data["pr"].shape[0] == 2  # type: ignore[union-attr]


def test_default_output_rank_is_the_plugin_process(tmp_path: Path) -> None:
    from test_server_plugin import MODEL

    from precipdiff.server import PluginConfig

    cfg = PluginConfig(bundle_path="unused", output_dir=str(tmp_path / "o"))
    assert cfg.output_rank == -1
    plugin = Plugin(cfg, MODEL.lon, MODEL.lat, NumpyEngine(), rank=3)  # e.g. inference rank 3
    drive(plugin, range(4))
    plugin.close()
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["precipdiff_2000-01.nc"]


@pytest.mark.parametrize(
    ("key", "first", "second"),
    [
        ("sampler_steps", 0, 4),
        ("conserve_mass", False, True),
        ("return_mode", "member", "mean"),
        ("reference_time", "2000-01-01 00:00:00", "2001-01-01 00:00:00"),
        ("calendar", "proleptic_gregorian", "noleap"),
        ("remap_method", "conservative", "bilinear"),
    ],
)
def test_restart_identity_covers_settings(
    tmp_path: Path, key: str, first: object, second: object
) -> None:
    """Every setting that changes what a run produces is part of the restart identity."""
    a, _ = make_plugin(tmp_path, **{key: first})
    drive(a, range(6))
    a.write_restart(str(tmp_path / "r.nc"))
    b, _ = make_plugin(tmp_path, **{key: second})
    with pytest.raises(InputError, match=rf"written with {key} = .*this run has {key} ="):
        b.read_restart(str(tmp_path / "r.nc"))
    c, _ = make_plugin(tmp_path, **{key: first})
    c.read_restart(str(tmp_path / "r.nc"))  # the same settings restore


def test_restart_identity_covers_online_qdm(tmp_path: Path) -> None:
    a, _ = make_plugin(tmp_path, bias_correction=True, qdm_mode="trailing")
    drive(a, range(6))
    a.write_restart(str(tmp_path / "r.nc"))
    b, _ = make_plugin(tmp_path, bias_correction=True, qdm_mode="static")
    with pytest.raises(InputError, match="qdm_mode"):
        b.read_restart(str(tmp_path / "r.nc"))


def test_restart_refuses_another_grid_of_the_same_shape(tmp_path: Path) -> None:
    from test_server_plugin import MODEL

    from precipdiff.server import PluginConfig

    a, _ = make_plugin(tmp_path)
    drive(a, range(6))
    a.write_restart(str(tmp_path / "r.nc"))
    cfg = PluginConfig(bundle_path=str(tmp_path / "unused"))
    flipped = Plugin(cfg, MODEL.lon, MODEL.lat[::-1], NumpyEngine(), rank=0)
    with pytest.raises(InputError, match=r"another ESM grid of the same shape: lat\[0\]"):
        flipped.read_restart(str(tmp_path / "r.nc"))


def test_restart_before_any_window_restores_no_output(tmp_path: Path) -> None:
    a, _ = make_plugin(tmp_path)
    drive(a, range(2))
    a.write_restart(str(tmp_path / "r.nc"))
    b, _ = make_plugin(tmp_path)
    b.read_restart(str(tmp_path / "r.nc"))
    assert b.ready_window == -1
    with pytest.raises(InputError, match="no window has closed"):
        b.output_members()


def test_older_restart_format_is_refused_with_a_reason(tmp_path: Path) -> None:
    nc4 = import_netcdf4()
    old = tmp_path / "old.nc"
    with nc4.Dataset(str(old), "w") as ds:
        ds.restart_format = "precipdiff-restart-1"
    plugin, _ = make_plugin(tmp_path)
    with pytest.raises(InputError, match="older format precipdiff-restart-1"):
        plugin.read_restart(str(old))
