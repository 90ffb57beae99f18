#!/usr/bin/env bash
# Reproduce everything in docs/speedy.md and docs/results/speedy from scratch, one step
# after the other (each step resumes where it stopped when rerun; nice'd, 1 thread):
#
#   scripts/speedy/reproduce.sh [STEP ...]      STEP: data train experiments coupled
#                                               evaluate bench (default: all, in order)
#
#   data         spin-up + 12-year control run (the perfect-model truth)
#   train        models/speedy-t30 = precipdiff train all configs/speedy_t30.yaml
#   experiments  the biased-SST and SST+2K/+4K runs (6 years each)
#   coupled      10 years diagnostic and 10 years interactive with models/speedy-t30
#   evaluate     precipdiff evaluate speedy --out docs/results/speedy (all parts)
#   bench        bench/bench_speedy_coupling.py (cost per simulated day, ratio to SPEEDY alone)
#
# Wall times on the 2-core development machine shared with other jobs are in
# docs/speedy.md ("Reproduce"); the runs write their own timing logs
# (out/speedy/<run>/run.log). Needs build/bin/speedy_precipdiff (scripts/setup.sh with the
# SPEEDY source at ../shared/clients/speedy.f90 or -DSPEEDY_SOURCE_DIR).
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
PY=".venv/bin/python"
steps=("$@")
[[ ${#steps[@]} -eq 0 ]] && steps=(data train experiments coupled evaluate bench)
for step in "${steps[@]}"; do
  start=$(date +%s)
  case "$step" in
    data) nice -n 10 "$PY" scripts/speedy/run_experiment.py spinup control ;;
    train) nice -n 10 .venv/bin/precipdiff train all configs/speedy_t30.yaml \
             --threads "$OMP_NUM_THREADS" --no-progress ;;
    experiments) nice -n 10 "$PY" scripts/speedy/run_experiment.py biased sst+4k sst+2k ;;
    coupled) nice -n 10 "$PY" scripts/speedy/run_experiment.py interactive diagnostic ;;
    evaluate) nice -n 10 .venv/bin/precipdiff evaluate speedy --bundle models/speedy-t30 \
                --out docs/results/speedy --threads "$OMP_NUM_THREADS" ;;
    bench) nice -n 10 "$PY" bench/bench_speedy_coupling.py --bundle models/speedy-t30 ;;
    *) echo "unknown step $step (data train experiments coupled evaluate bench)" >&2; exit 2 ;;
  esac
  echo "[speedy] $step finished in $(( $(date +%s) - start )) s"
done
