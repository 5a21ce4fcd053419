#!/usr/bin/env bash
# Build the wheels of the core and of every backend in backends/ into one folder (default dist/),
# so a device installs with plain pip and no checkout:
#
#   bash scripts/build-wheels.sh                       # -> dist/edgeslm-0.1.0-py3-none-any.whl, edgeslm_onnx-...
#   pip install --find-links dist 'edgeslm[onnx]'      # core + edgeslm-onnx + onnxruntime, no torch
#
# All wheels are pure Python (py3-none-any): the same files install on x86-64 and arm64; pip
# takes the runtimes (onnxruntime, openvino, ai-edge-litert) from PyPI for the device's CPU.
# Uses $PYTHON (default: .venv/bin/python, else python3) with its own setuptools (>= 77), without
# build isolation, so it needs no network. Prints the wheel paths.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-dist}
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

projects=(.)
for b in backends/*/; do
  [ -f "$b/pyproject.toml" ] && projects+=("${b%/}")
done
# A stale build/ keeps modules deleted since the last build: start each from scratch.
for p in "${projects[@]}"; do rm -rf "$p/build"; done
rm -f "$OUT"/edgeslm-*.whl "$OUT"/edgeslm_*.whl
"$PY" -m pip wheel -q --no-deps --no-build-isolation --wheel-dir "$OUT" "${projects[@]}"
for p in "${projects[@]}"; do rm -rf "$p/build"; done
ls -1 "$OUT"/edgeslm*.whl
