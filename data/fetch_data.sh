#!/usr/bin/env bash
# Download brain_tumor_data/ into this folder (data/brain_tumor_data); see data/README.md.
# Thin wrapper around `python -m braintumor fetch-data`; extra arguments are passed on.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
exec "$PY" -m braintumor fetch-data --dest data "$@"
