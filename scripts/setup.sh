#!/usr/bin/env bash
# Create .venv and install cnnlab with every extra, pinned by constraints.txt. Idempotent: a second
# run only reinstalls when pyproject.toml or constraints.txt changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "cnnlab setup: creating .venv with $($PYTHON --version)" >&2
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.cnnlab-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "cnnlab setup: installing dependencies (torch is large: a minute or more)" >&2
  # PyPI's torch for Linux x86_64 is a CUDA build: the environment takes about 7.5 GB
  # a warning only: a df that fails or prints something odd changes nothing
  free_kb=$(df -Pk . 2>/dev/null | awk 'NR==2 && $4 ~ /^[0-9]+$/ {print $4}') || free_kb=
  if [ -n "$free_kb" ] && [ "$free_kb" -lt 9000000 ]; then
    echo "cnnlab setup: only $((free_kb / 1024)) MB free on this disk; the install needs about 9 GB (7.5 GB stays)" >&2
  fi
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >&2
  .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[all,test]" >&2
  echo "$want" > "$stamp"
fi
