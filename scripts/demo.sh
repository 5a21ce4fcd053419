#!/usr/bin/env bash
# The main job end to end on a fresh machine: install, export SmolLM2-135M-Instruct from its
# GGUF file to a verified ONNX bundle, then stream a chat answer from the bundle.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
EDGESLM=.venv/bin/edgeslm
OUT=${OUT:-out/smollm2-onnx}
if $EDGESLM verify "$OUT" >/dev/null 2>&1; then
  echo "==> $OUT already exported and verified"
  $EDGESLM info "$OUT"
else
  $EDGESLM export smollm2-135m --format onnx -o "$OUT" --overwrite   # prints the bundle summary
fi
echo
echo "==> chat"
$EDGESLM run "$OUT" --prompt "${PROMPT:-What is an edge device? Answer in two sentences.}" -n 96
