#!/usr/bin/env bash
# The README's main job: precipdiff as an online parameterization of a running model.
#
#   scripts/demo.sh [options passed to examples/toy_esm/run_toy_esm.py]
#
# 1. sets up if needed (scripts/setup.sh: system packages, .venv, CMake build; idempotent);
# 2. runs the toy ESM (examples/toy_esm, Fortran, global 1° grid 360x180) coupled online to
#    precipdiff with the shipped global bundle in models/ (u10, v10, msl on ERA5's 1°
#    181x360 grid -> 0.25° 721x1440 precipitation), printing each day's water budget,
#    stability diagnostics and wall time;
# 3. checks the run (budget closure, no NaN, coupling) and plots it.
# Outputs in out/demo/: toy_esm_out.nc (CF netCDF), toy_esm.png, stream/ (the plugin's
# fine-grid output stream). Needs no ../shared data and no network after setup.
#
# Environment: PRECIPDIFF_DEMO_DAYS (default 3), PRECIPDIFF_DEMO_THREADS (default: all cores),
#              PRECIPDIFF_DEMO_BUNDLE (default: auto-detect in models/),
#              PRECIPDIFF_DEMO_OUT (default out/demo),
#              PRECIPDIFF_DEMO_CONSERVE_MASS (default 0; 1: conserve_mass = .true., each
#              generated field keeps the regression's coarse-grid mean).
#              Example: longer run, coarser grid:
#              PRECIPDIFF_DEMO_DAYS=10 scripts/demo.sh --nlon 180 --nlat 90
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DAYS=${PRECIPDIFF_DEMO_DAYS:-3}
THREADS=${PRECIPDIFF_DEMO_THREADS:-$(nproc)}
BUNDLE=${PRECIPDIFF_DEMO_BUNDLE:-auto}
OUT=${PRECIPDIFF_DEMO_OUT:-$ROOT/out/demo}
MASS=()
[[ "${PRECIPDIFF_DEMO_CONSERVE_MASS:-0}" == 1 ]] && MASS=(--conserve-mass)

log() { printf '[demo] %s\n' "$*"; }

bash scripts/setup.sh
EXE=$ROOT/build/bin/toy_esm
if [[ ! -x $EXE ]]; then
  log "build/bin/toy_esm is missing after setup: is netCDF-Fortran installed (libnetcdff-dev)?" >&2
  exit 1
fi
mkdir -p "$OUT"
log "toy ESM, global 1 degree grid, $DAYS days, torch threads $THREADS, output in $OUT"
start=$(date +%s)
OMP_NUM_THREADS=$THREADS "$ROOT/.venv/bin/python" examples/toy_esm/run_toy_esm.py \
  --exe "$EXE" --workdir "$OUT" --bundle "$BUNDLE" --days "$DAYS" \
  --nlon 360 --nlat 180 --steps 0 --threads "$THREADS" --device auto --plot "${MASS[@]}" "$@"
log "finished in $(( $(date +%s) - start )) s"
log "netCDF: $OUT/toy_esm_out.nc  (model-grid pr, prw, evspsbl, uas, vas, psl, pr_fine, budget series)"
log "plot:   $OUT/toy_esm.png"
log "plugin output stream: $OUT/stream/"
