#!/usr/bin/env bash
# Install what is needed, then check style (ruff), types (mypy), the docs site (mkdocs) and run the whole test suite
# (offline, CPU only).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests benchmarks scripts
.venv/bin/mypy
.venv/bin/mkdocs build --strict --quiet --site-dir "$(mktemp -d)"
# two test processes share the two cores: the suite is many short CPU-bound tests and some that wait on
# subprocesses, so two at a time finish sooner than one (docs/dependencies.md)
exec .venv/bin/python -m pytest -q -n 2 --dist worksteal "$@"
