#!/usr/bin/env bash
# Wheels the GPU machine lacks (Python 3.12, no registry there), for scripts/gpu_run.sh:
#   bash scripts/gpu_wheels.sh     -> gpu-wheels/ (ignored by git; carry it: carry ["gpu-wheels"])
set -euo pipefail
PY="${PYTHON:-python3}"
"$PY" -m pip download --only-binary=:all: --python-version 3.12 \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform any \
  -d gpu-wheels dask==2026.8.0 distributed==2026.8.0 "setuptools>=68"
du -sh gpu-wheels
