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
# 3. checks the run (budget closure, no NaN, coupling) and plots it;
# 4. the real job on real data: the Fortran offline replay (examples/offline_replay) feeds
#    one winter of real CNRM-CM5 output (hus850, psl, ta850, ... as the bundle asks; the
#    sample in examples/offline_replay/sample/, see ATTRIBUTION.md there) through the Iberia
#    bundle (models/iberia-demo) with QDM of the ESM's inputs, every timestep as an ESM
#    would, and writes the generated precipitation next to CNRM-CM5's own and E-OBS.
# Outputs in out/demo/: toy_esm_out.nc (CF netCDF), toy_esm.png, stream/ (the plugin's
# fine-grid output stream); replay/offline_replay_out.nc (pr_fine, pr, pr_esm, pr_eobs)
# and replay/offline_replay.png. Needs no ../shared data and no network after setup.
#
# Environment: PRECIPDIFF_DEMO_DAYS (default 3), PRECIPDIFF_DEMO_THREADS (default: all cores),
#              PRECIPDIFF_DEMO_BUNDLE (default: auto-detect in models/),
#              PRECIPDIFF_DEMO_OUT (default out/demo),
#              PRECIPDIFF_DEMO_CONSERVE_MASS (default 0; 1: conserve_mass = .true., each
#              generated field keeps the regression's coarse-grid mean),
#              PRECIPDIFF_DEMO_REPLAY_BUNDLE (default iberia-demo),
#              PRECIPDIFF_DEMO_REPLAY_DAYS (default: the whole winter, 91).
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
log "toy ESM finished in $(( $(date +%s) - start )) s"

# --- the real job: real ESM output through the Iberia bundle, with QDM, next to E-OBS ----------
REPLAY_EXE=$ROOT/build/bin/offline_replay
SAMPLE=$ROOT/examples/offline_replay/sample
REPLAY_BUNDLE=${PRECIPDIFF_DEMO_REPLAY_BUNDLE:-iberia-demo}
log "offline replay: one winter of CNRM-CM5 (examples/offline_replay/sample) through $REPLAY_BUNDLE with QDM"
rstart=$(date +%s)
OMP_NUM_THREADS=$THREADS "$ROOT/.venv/bin/python" examples/offline_replay/run_offline_replay.py \
  --exe "$REPLAY_EXE" --workdir "$OUT/replay" --data-dir "$SAMPLE" --bundle "$REPLAY_BUNDLE" \
  --qdm-tables "$SAMPLE/qdm_tables.safetensors" --bias-correction on \
  --days "${PRECIPDIFF_DEMO_REPLAY_DAYS:-91}" --plot
log "offline replay finished in $(( $(date +%s) - rstart )) s"
log "toy ESM netCDF: $OUT/toy_esm_out.nc  (model-grid pr, prw, evspsbl, uas, vas, psl, pr_fine, budget series)"
log "toy ESM plot:   $OUT/toy_esm.png; plugin output stream: $OUT/stream/"
log "replay netCDF:  $OUT/replay/offline_replay_out.nc  (generated pr_fine and pr, CNRM-CM5 pr_esm, E-OBS pr_eobs)"
log "replay plot:    $OUT/replay/offline_replay.png"
