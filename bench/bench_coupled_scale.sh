#!/usr/bin/env bash
# Coupled-at-scale benchmarks (bench/bench_coupled_scale.py), one after the other so
# they do not compete for cores: 365-day soak on the toy's 4-degree grid, plugin cost
# per simulated day (uncoupled / sync / lagged), and MPI 1 vs 4 ranks.
# Logs, JSON and the water-budget PNG go to out/bench_coupled_scale/.
# Usage: bench/bench_coupled_scale.sh [build-dir]   (default build/)
set -uo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
OUT=out/bench_coupled_scale
mkdir -p "$OUT"
export OMP_NUM_THREADS=1
PY=.venv/bin/python
status=0
for part in soak cost mpi overlap; do
  echo "== $part"
  # A failing part (e.g. a soak check) is reported and the others still run.
  extra=(); [[ $part == overlap ]] && extra=(--work 100)
  $PY bench/bench_coupled_scale.py "$part" --build-dir "$BUILD" --workdir "$OUT" "${extra[@]}" 2>&1 | tee "$OUT/$part.log"
  rc=${PIPESTATUS[0]}
  [[ $rc -ne 0 ]] && { echo "== $part exited with status $rc"; status=$rc; }
done
exit $status
