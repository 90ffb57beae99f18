#!/usr/bin/env bash
# Set up precipdiff on a fresh Debian 12 machine, idempotently:
#   1. system packages (gfortran, Open MPI, netCDF-Fortran, cmake) via apt, if missing;
#   2. a virtual environment in .venv with torch==2.13.0 and precipdiff (editable, dev extras);
#   3. the native bridge (C ABI + Fortran module + examples) with CMake in build/.
# A second run only checks and rebuilds what changed.
#
# Environment:
#   PRECIPDIFF_TORCH_INDEX_URL  pip index for torch (e.g. a CUDA wheel index); default: pip's own.
#                               Plain `pip install torch==2.13.0` on a machine with PyPI access
#                               and no local wheel gives the CUDA build on Linux x86-64.
#   PRECIPDIFF_BUILD_TYPE       CMake build type (default: Release; Debug turns on -Wall -fcheck=all)
#   PRECIPDIFF_SKIP_APT=1       do not touch system packages (e.g. no root)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
TORCH_VERSION=2.13.0
BUILD_TYPE=${PRECIPDIFF_BUILD_TYPE:-Release}

log() { printf '[setup] %s\n' "$*"; }

# --- 1. system packages -------------------------------------------------------------
# libudunits2-0: units library of the CF checker (cfchecker) the tests run on every output file
APT_PKGS=(gfortran cmake openmpi-bin libopenmpi-dev libnetcdff-dev pkg-config libudunits2-0)
if [[ "${PRECIPDIFF_SKIP_APT:-0}" != 1 ]]; then
  missing=()
  for p in "${APT_PKGS[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if ((${#missing[@]})); then
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO=sudo
    log "installing system packages: ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    log "system packages present"
  fi
fi

# --- 2. Python environment ----------------------------------------------------------
if [[ ! -x .venv/bin/python ]]; then
  log "creating .venv"
  "$PY" -m venv .venv
fi
VPY=$ROOT/.venv/bin/python
if ! "$VPY" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
  log "installing torch==$TORCH_VERSION"
  idx=()
  [[ -n "${PRECIPDIFF_TORCH_INDEX_URL:-}" ]] && idx=(--index-url "$PRECIPDIFF_TORCH_INDEX_URL")
  "$VPY" -m pip install -q "${idx[@]}" "torch==$TORCH_VERSION"
fi
# Re-install the package only when its metadata changed (pyproject.toml is the input).
stamp=.venv/.precipdiff-installed
if [[ ! -f $stamp || pyproject.toml -nt $stamp ]] || ! "$VPY" -c "import precipdiff" 2>/dev/null; then
  log "installing precipdiff (editable, dev extras)"
  # Keep torch at the pinned version: the constraint stops any resolver upgrade.
  echo "torch==$TORCH_VERSION" > .venv/torch-constraint.txt
  "$VPY" -m pip install -q -c .venv/torch-constraint.txt -e ".[dev]"
  touch "$stamp"
else
  log "precipdiff already installed"
fi

# The caching CPU allocator for torch's tensors (precipdiff.perf.allocator): built once per
# torch version into ~/.cache/precipdiff (or $PRECIPDIFF_CACHE_DIR), so that no run compiles it.
if lib=$("$VPY" -m precipdiff.perf.allocator 2>&1); then
  log "caching CPU allocator: $lib"
else
  log "caching CPU allocator not built (runs use torch's default allocator): $lib"
fi

# --- 3. native build ----------------------------------------------------------------
if [[ ! -f build/CMakeCache.txt ]]; then
  log "configuring CMake (build type $BUILD_TYPE)"
  cmake -S . -B build -DCMAKE_BUILD_TYPE="$BUILD_TYPE" -DPython3_EXECUTABLE="$VPY" >/dev/null
fi
log "building native bridge"
cmake --build build -j "$(nproc)" >/dev/null
log "done: activate with 'source .venv/bin/activate'; tests: scripts/test.sh"
