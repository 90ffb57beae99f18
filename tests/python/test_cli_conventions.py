"""Conventions command-line users expect: date selection as CDO, one-line errors, logging
with -v/-q, progress bars only on terminals, a closed pipe is not an error."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from precipdiff.grids import LatLonGrid, coarsen_grid
from precipdiff.io import import_netcdf4
from precipdiff.logs import _SEEN
from precipdiff.offline.cli.main import configure_logging, main
from precipdiff.testing.files import write_predictor_files
from precipdiff.testing.models import make_tiny_bundle

nc4 = import_netcdf4()
FINE = LatLonGrid.regular(0.5, lat_min=40.25, lat_max=43.75, lon_min=0.25, lon_max=3.75)
COARSE = coarsen_grid(FINE, 4)
VARS = ("hus850", "psl", "ta850")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("conv")
    return make_tiny_bundle(d / "b", coarse_grid=COARSE, fine_grid=FINE, variables=VARS)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_predictor_files(tmp_path_factory.mktemp("in"), VARS, COARSE, days=10)


@pytest.fixture(autouse=True)
def _fresh_logging() -> None:
    _SEEN.clear()  # messages logged once per process: each test sees its own
    yield
    configure_logging(0, 0)


def generate(bundle: Path, inputs: list[Path], out: Path, *extra: str) -> int:
    argv = ["generate", str(bundle), "--input", *map(str, inputs), "--out", str(out)]
    return main([*argv, "--steps", "1", "--members", "2", "--no-progress", "-q", *extra])


def days_of(path: Path) -> list[str]:
    with nc4.Dataset(path) as ds:
        t = ds["time"]
        return [f"{d:%Y-%m-%d}" for d in nc4.num2date(t[:], t.units, t.calendar)]


def test_select_period_and_single_dates(bundle: Path, inputs: list[Path], tmp_path: Path) -> None:
    full, part, one = tmp_path / "full.nc", tmp_path / "part.nc", tmp_path / "one.nc"
    assert generate(bundle, inputs, full) == 0
    assert generate(bundle, inputs, part, "--start", "2000-01-03", "--end", "2000-01-05") == 0
    assert generate(bundle, inputs, one, "--time", "2000-01-04") == 0
    assert len(days_of(full)) == 10
    assert days_of(part) == ["2000-01-03", "2000-01-04", "2000-01-05"]
    assert days_of(one) == ["2000-01-04"]
    # a day's members do not depend on the period it was generated in
    with nc4.Dataset(full) as a, nc4.Dataset(part) as b, nc4.Dataset(one) as c:
        np.testing.assert_array_equal(a["pr"][3], b["pr"][1])
        np.testing.assert_array_equal(a["pr"][3], c["pr"][0])
    month = tmp_path / "month.nc"
    assert generate(bundle, inputs, month, "--start", "2000-01", "--end", "2000-01-02") == 0
    assert days_of(month) == ["2000-01-01", "2000-01-02"]
    with nc4.Dataset(part) as ds:
        assert "--start 2000-01-03 --end 2000-01-05" in ds.history.splitlines()[0]


def test_select_in_a_noleap_calendar(bundle: Path, tmp_path: Path) -> None:
    files = write_predictor_files(
        tmp_path / "in", VARS, COARSE, days=5, start="2001-02-26", calendar="noleap"
    )
    out = tmp_path / "o.nc"
    assert generate(bundle, files, out, "--time", "2001-03-01", "2001-02-28") == 0
    with nc4.Dataset(out) as ds:
        assert ds["time"].calendar == "noleap"
    assert days_of(out) == ["2001-02-28", "2001-03-01"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--start", "2000-01-05", "--end", "2000-01-03"], "--start 2000-01-05 is after --end"),
        (
            ["--start", "2001-01-01"],
            "no time step selected by --start 2001-01-01: the input has "
            "10 steps from 2000-01-01 to 2000-01-10",
        ),
        (["--time", "2000-13-01"], "month 13 is out of range"),
        (["--time", "yesterday"], "is not a date"),
        (["--time", "2000-01-01", "--start", "2000-01-01"], "not both"),
    ],
)
def test_selection_errors_are_one_line(
    bundle: Path, inputs: list[Path], tmp_path: Path, capsys, extra: list[str], message: str
) -> None:
    out = tmp_path / "x.nc"
    assert generate(bundle, inputs, out, *extra) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_user_errors_are_one_line(bundle: Path, inputs: list[Path], tmp_path: Path, capsys):
    junk = tmp_path / "junk.nc"
    junk.write_text("this is not netCDF\n")
    assert generate(bundle, [junk], tmp_path / "o.nc") == 2
    err = capsys.readouterr().err
    assert "junk.nc cannot be read as netCDF" in err and len(err.strip().splitlines()) == 1
    assert generate(bundle, inputs, tmp_path) == 2  # --out names a directory
    err = capsys.readouterr().err
    assert "is a directory" in err and len(err.strip().splitlines()) == 1
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert generate(bundle, inputs, blocker / "o.nc") == 2
    assert "is a file, not a directory" in capsys.readouterr().err


@pytest.mark.needs_data
def test_model_levels_are_named(shared_data: Path, bundle: Path, tmp_path: Path, capsys) -> None:
    ml = shared_data / "wam2layers_era5_025deg" / "model_levels_2022-08-31"
    if not ml.is_dir():
        pytest.skip(f"{ml} not found")
    assert generate(bundle, [ml / "ERA5_2022-08-31_ml_q.nc"], tmp_path / "o.nc") == 2
    err = capsys.readouterr().err
    assert "is on model levels (level = level numbers 20..137), not pressure levels" in err
    assert "hPa" not in err and len(err.strip().splitlines()) == 1


def test_closed_stdout_is_quiet(bundle: Path) -> None:
    """`precipdiff inspect B | head -1`: no BrokenPipeError traceback."""
    cmd = f"{sys.executable} -m precipdiff inspect {bundle} | head -1"
    r = subprocess.run(["bash", "-c", f"set -o pipefail; {cmd}"], capture_output=True, text=True)
    assert r.stdout.strip() and "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr
    assert r.returncode in (0, 141), r.stderr


def test_unit_conversions_and_remap_are_logged(bundle: Path, tmp_path: Path, capsys) -> None:
    src = LatLonGrid.regular(1.0, lat_min=39.0, lat_max=45.0, lon_min=-1.0, lon_max=5.0)
    files = write_predictor_files(
        tmp_path / "in", VARS, src, days=2, units={"psl": "hPa", "ta850": "degC"}
    )
    argv = ["generate", str(bundle), "--input", *map(str, files), "--steps", "1", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "a.nc")]) == 0
    err = capsys.readouterr().err
    assert "converting psl: hPa -> Pa (x 100)" in err
    assert "converting ta850: degC -> K (+ 273.15)" in err
    assert "remapping predictors on LatLonGrid(7x7" in err and "(bilinear)" in err
    _SEEN.clear()
    assert main([*argv, "--out", str(tmp_path / "b.nc"), "-q"]) == 0
    assert "converting" not in capsys.readouterr().err  # -q: warnings and errors only
    _SEEN.clear()
    assert main(["-v", *argv, "--out", str(tmp_path / "c.nc")]) == 0  # -v before the command
    assert logging.getLogger("precipdiff").level == logging.DEBUG
    assert "converting psl" in capsys.readouterr().err


def test_progress_only_on_a_terminal(bundle: Path, inputs: list[Path], tmp_path: Path, capsys):
    argv = ["generate", str(bundle), "--input", *map(str, inputs), "--steps", "1"]
    assert main([*argv, "--out", str(tmp_path / "a.nc")]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "%|" not in err  # no bar into a redirected stderr
    assert "generated 10/10 time steps" in err  # a plain log line instead
    assert main([*argv, "--out", str(tmp_path / "b.nc"), "--progress"]) == 0
    assert "generating: 100%|" in capsys.readouterr().err  # forced
