#!/usr/bin/env bash
# Lint everything we ship: ruff (style + numpy docstrings) and mypy on the package.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
