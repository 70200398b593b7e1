#!/usr/bin/env bash
# Install what is needed, then run cnnlab's main job on the built-in demo data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/cnnlab demo "$@"
