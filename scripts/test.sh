#!/usr/bin/env bash
# Install what is needed, then check style (ruff), types (mypy), the docs site (mkdocs) and run the whole test suite
# (offline, CPU only).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests benchmarks scripts
.venv/bin/mypy
.venv/bin/mkdocs build --strict --quiet --site-dir "$(mktemp -d)"
exec .venv/bin/python -m pytest -q "$@"
