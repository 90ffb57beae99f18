"""Figures read correctly: map axes labelled, log ticks on decades only, % where maps use %,
and a model's caveat in the title of its evaluation figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from precipdiff.offline.evaluate import plots


@pytest.fixture
def saved(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every matplotlib figure saved during the test (inspected before it is closed)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figures: list[Any] = []
    original = Figure.savefig

    def capture(self: Any, *args: Any, **kwargs: Any) -> Any:
        self.canvas.draw()
        figures.append(
            {
                "suptitle": self._suptitle.get_text() if self._suptitle else "",
                "axes": [
                    {
                        "xlabel": ax.get_xlabel(),
                        "ylabel": ax.get_ylabel(),
                        "xscale": ax.get_xscale(),
                        "minor_xlabels": [
                            t.get_text() for t in ax.xaxis.get_minorticklabels() if t.get_text()
                        ],
                        "ydata": [ln.get_ydata() for ln in ax.get_lines()],
                    }
                    for ax in self.axes
                ],
            }
        )
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", capture)
    return figures


def test_maps_have_lon_lat_labels(saved: list[Any], tmp_path: Path) -> None:
    lat, lon = np.arange(36.0, 43.0, 0.5), np.arange(-9.0, 3.0, 0.5)
    maps = {"a": np.zeros((lat.size, lon.size)), "b": np.ones((lat.size, lon.size))}
    plots.plot_bias_maps(maps, lat, lon, tmp_path / "m.png")
    panels = [a for a in saved[0]["axes"] if a["xlabel"]]  # the colour bar has none
    assert [a["xlabel"] for a in panels] == ["longitude (°E)"] * 2
    assert panels[0]["ylabel"] == "latitude (°N)"


def test_log_spectra_label_decades_only(saved: list[Any], tmp_path: Path) -> None:
    k = np.linspace(0.12, 0.9, 20)  # less than one decade: matplotlib would label minor ticks
    plots.plot_spectra({"x": (k, 1 / k**2), "y": (k, 2 / k**2)}, tmp_path / "s.png")
    (ax,) = saved[0]["axes"]
    assert ax["xscale"] == "log" and ax["minor_xlabels"] == []


def test_change_per_quantile_in_percent(saved: list[Any], tmp_path: Path) -> None:
    q = [0.5, 0.9]
    plots.plot_change_signal(q, {"x": np.array([-0.07, 0.1])}, tmp_path / "c.png", percent=True)
    (ax,) = saved[0]["axes"]
    np.testing.assert_allclose(ax["ydata"][0], [-7.0, 10.0])  # % like the change maps
    assert ax["ylabel"].endswith("(%)")


def test_evaluation_figures_carry_the_caveat(saved: list[Any], tmp_path: Path) -> None:
    from precipdiff.grids import LatLonGrid
    from precipdiff.offline.train.evaluation import plot_evaluation

    rng = np.random.default_rng(0)
    grid = LatLonGrid.regular(0.5, lat_min=40.25, lat_max=43.75, lon_min=0.25, lon_max=3.75)
    obs = rng.gamma(0.5, 3.0, (4, *grid.shape))
    fine = {"obs": obs, "ens": obs[:, None].repeat(2, axis=1), "det": obs}
    reg = {k: rng.gamma(0.5, 3.0, (4, 2, 2)) for k in ("pred", "obs", "clim", "linear")}
    plot_evaluation(tmp_path, reg, fine, grid, "shape-model", caveat="NOT SKILFUL: demo only")
    assert len(saved) == 2
    for fig in saved:
        assert "shape-model: validation split" in fig["suptitle"]
        assert "NOT SKILFUL: demo only" in fig["suptitle"]
    assert any(a["xlabel"] == "longitude (°E)" for a in saved[0]["axes"])
