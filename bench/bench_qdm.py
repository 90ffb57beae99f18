"""Online QDM cost per averaging window: vectorised OnlineQDM.apply vs a per-cell loop.

Measures, in one run and side by side, the time to correct one window of one
variable on a global 1° grid (181x360) with 50 quantiles and monthly tables:

* ``OnlineQDM.apply`` (static and trailing modes; the latter includes the
  buffer append and, once per group change, the quantile fold);
* a reference per-cell loop with ``numpy.interp`` (what a straightforward
  implementation does), on a 1/20 subset of the cells, scaled up.

Prints the times and the ratio. Usage: ``.venv/bin/python bench/bench_qdm.py``.
"""

from __future__ import annotations

import time

import numpy as np

from precipdiff.qdm import OnlineQDM, QDMConfig, QDMTables, VariableTable


def make_tables(ny: int, nx: int, nq: int) -> QDMTables:
    rng = np.random.default_rng(0)
    cfg = QDMConfig(n_quantiles=nq, group="month", kinds={"hus": "multiplicative"})
    base = np.sort(rng.gamma(2.0, 2e-3, size=(12, nq, ny * nx)), axis=1)
    ref = (base * rng.uniform(0.9, 1.1, size=(12, 1, ny * nx))).reshape(12, nq, ny, nx)
    hist = base.reshape(12, nq, ny, nx)
    table = VariableTable("multiplicative", 0.0, ref.astype(np.float32), hist.astype(np.float32))
    return QDMTables(cfg, {"hus": table})


def per_cell_loop(tables: QDMTables, x: np.ndarray, g: int, cells: np.ndarray) -> np.ndarray:
    t = tables.variables["hus"]
    nodes = tables.config.nodes
    hq = t.hist_q[g].reshape(nodes.size, -1)
    rq = t.ref_q[g].reshape(nodes.size, -1)
    xf = x.reshape(-1)
    out = np.empty(cells.size)
    for i, c in enumerate(cells):
        tau = np.interp(xf[c], hq[:, c], nodes)
        af = np.interp(tau, nodes, rq[:, c] / hq[:, c])
        out[i] = xf[c] * af
    return out


def timeit(fn, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ny, nx, nq = 181, 360, 50
    tables = make_tables(ny, nx, nq)
    rng = np.random.default_rng(1)
    x = rng.gamma(2.0, 2e-3, size=(ny, nx)).astype(np.float32)
    when = np.datetime64("2000-01-15")
    static = OnlineQDM(tables, mode="static")
    trailing = OnlineQDM(tables, mode="trailing", buffer_days=31)
    t_static = timeit(lambda: static.apply({"hus": x}, when))
    t_trail = timeit(lambda: trailing.apply({"hus": x}, when))
    # the fold at a month change (once per month per variable)
    for _ in range(30):
        trailing.apply({"hus": x}, when)
    t0 = time.perf_counter()
    trailing.apply({"hus": x}, np.datetime64("2000-02-01"))
    t_fold = time.perf_counter() - t0
    cells = np.arange(0, ny * nx, 20)
    t_loop = timeit(lambda: per_cell_loop(tables, x, 0, cells), repeat=2) * (ny * nx / cells.size)
    # same answer as the loop on the subset (static mode)
    got = static.apply({"hus": x}, when)["hus"].reshape(-1)[cells]
    ref = per_cell_loop(tables, x, 0, cells)
    err = float(np.max(np.abs(got - ref) / np.abs(ref)))
    state_mb = sum(v.nbytes for v in trailing.state_dict().values()) / 2**20
    print(f"grid {ny}x{nx}, {nq} quantiles, 12 monthly tables, one variable, one window")
    print(f"OnlineQDM.apply static    : {1e3 * t_static:8.2f} ms")
    print(f"OnlineQDM.apply trailing  : {1e3 * t_trail:8.2f} ms")
    print(f"trailing fold at month end: {1e3 * t_fold:8.2f} ms (once per month)")
    print(f"per-cell numpy.interp loop: {1e3 * t_loop:8.2f} ms (extrapolated from 1/20 cells)")
    print(f"ratio loop / static       : {t_loop / t_static:8.1f}x")
    print(f"max relative difference   : {err:.2e}")
    print(f"trailing state per variable: {state_mb:.1f} MiB")


if __name__ == "__main__":
    main()
