#!/usr/bin/env bash
# Reproduce the demo bundle models/iberia-demo from scratch (docs/training.md):
# NCEP reanalysis (hus850, psl, ta850) -> E-OBS precipitation over Iberia, 2 deg -> 0.5 deg.
# Needs the shared data (../shared/data or $PRECIPDIFF_SHARED_DATA). CPU is fine; the
# time on the 2-core development machine is stated in models/iberia-demo/MODEL_CARD.md.
#
#   scripts/train_demo.sh [extra args for `precipdiff train all`, e.g. --out /tmp/demo]
#
# Runs the documented sequence in one go: regression, diffusion, bundle + evaluation, then
# (bundle.output_calibration) the output calibration on the training winters + evaluation.
# Interrupted? Rerun without --restart to resume from the last checkpoints:
#   .venv/bin/precipdiff train all configs/iberia_demo.yaml
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
start=$(date +%s)
.venv/bin/precipdiff train all configs/iberia_demo.yaml --restart --threads "${OMP_NUM_THREADS}" "$@"
echo "[train_demo] finished in $(( $(date +%s) - start )) s"
