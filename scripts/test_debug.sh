#!/usr/bin/env bash
# Debug build of the native code (gfortran -Wall -Wextra -fcheck=all -ffpe-trap=...,
# gcc -Wall -Wextra -Wpedantic; flags in CMakeLists.txt) in build-debug/, then the
# Fortran/C tests under ctest: the bridge's boundary tests, the MPI layer with the fake
# plugin, the examples. Fails on any compiler warning in fortran_bridge/ or tests/, and
# on any runtime check (bounds, shapes) that fires. Part of .ci/run; about 3 minutes.
# Usage: scripts/test_debug.sh [extra ctest arguments]
set -uo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
VPY=$PWD/.venv/bin/python
log() { echo "[test_debug] $*"; }
if [[ ! -f build-debug/CMakeCache.txt ]]; then
  log "configuring build-debug (CMAKE_BUILD_TYPE=Debug)"
  cmake -S . -B build-debug -DCMAKE_BUILD_TYPE=Debug -DPython3_EXECUTABLE="$VPY" >/dev/null || exit 1
fi
log "building"
# Rebuild what changed; keep the compiler output to check it for warnings.
if ! cmake --build build-debug -j "$(nproc)" > build-debug/build.log 2>&1; then
  tail -50 build-debug/build.log
  log "build failed"
  exit 1
fi
# Our own sources must compile without warnings (third-party code built by examples is
# not ours to fix).
warnings=$(grep -E -A4 "^(/[^:]*/)?(fortran_bridge|tests|examples/toy_esm|examples/offline_replay)/[^:]+:[0-9]+:[0-9]+:" build-debug/build.log | grep -E -i "warning" || true)
if [[ -n "$warnings" ]]; then
  grep -E -B4 -A4 -i "warning" build-debug/build.log | head -80
  log "compiler warnings in the Debug build"
  exit 1
fi
log "running the Fortran/C tests (Debug)"
(cd build-debug && ctest --output-on-failure --timeout 600 \
  -R '^(bridge_|mpi_fake_|mpi_robustness|toy_esm_|offline_replay|package_)' "$@")
