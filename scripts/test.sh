#!/usr/bin/env bash
# Run the test suites: pytest (Python, golden, integration) then ctest (Fortran, examples).
# Extra arguments go to pytest (e.g. `scripts/test.sh -m soak` for the opt-in soak tests).
set -uo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
status=0
.venv/bin/python -m pytest "$@"
rc=$?
if [[ $rc -eq 5 ]]; then
  echo "[test] pytest collected no tests for this selection"
elif [[ $rc -ne 0 ]]; then
  status=$rc
fi
if [[ -f build/CTestTestfile.cmake ]]; then
  (cd build && ctest --output-on-failure --timeout 900)
  rc=$?
  [[ $rc -ne 0 ]] && status=$rc
else
  echo "[test] build/ missing: run scripts/setup.sh first" >&2
  status=1
fi
exit $status
