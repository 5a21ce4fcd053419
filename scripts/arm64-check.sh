#!/usr/bin/env bash
# Proof on arm64: run edgeslm bundles inside an emulated arm64 Debian userland (what a Raspberry
# Pi 4/5 or a Jetson runs), installed from this checkout's wheels plus PyPI's aarch64 wheels of
# the runtimes. No torch inside: the bundles are exported on this (x86) machine.
#
#   sudo bash scripts/arm64-check.sh [BUNDLE ...]
#   sudo bash scripts/arm64-check.sh --rootfs-only        # just build/refresh the cached userland
#
# Without bundle arguments it exports (once, cached) SmolLM2-135M to ONNX int4-gguf and a tiny
# random Llama to LiteRT fp32 with the host's .venv (scripts/setup.sh). Inside the userland it
# installs 'edgeslm[onnx,litert]' from the wheels, checks that torch is absent, and runs
# `edgeslm run`, `verify`, `verify --on-device` and `bench` on each bundle, printing the time of
# each step; then it runs firmware_examples/raspberry-pi/install.sh (and uninstall.sh --purge)
# there on the LiteRT bundle (no systemd runs in a chroot: units are written, not started).
# Everything it builds is cached under $EDGESLM_ARM64_CACHE (default ~/.cache/edgeslm-arm64): a
# second run reuses the rootfs (~3-5 min to build), the pip cache and the exported bundles, and
# only reinstalls edgeslm's own wheels. Exit status 1 when any step failed.
#
# Needs root (binfmt_misc, debootstrap, chroot) and the Debian packages qemu-user-static,
# debootstrap and binfmt-support (installed with apt-get when missing). Speeds inside are
# EMULATED (qemu user mode on x86): they say nothing about a real Pi, only that it runs; the
# numerics are the ARM code paths' own (see docs/devices.md).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

CACHE=${EDGESLM_ARM64_CACHE:-$HOME/.cache/edgeslm-arm64}
SUITE=${EDGESLM_ARM64_SUITE:-bookworm}
MIRROR=${EDGESLM_ARM64_MIRROR:-http://deb.debian.org/debian}
ROOT=$CACHE/rootfs-$SUITE-arm64
HOST_VENV=${EDGESLM_VENV:-$REPO/.venv}
BENCH_ARGS=${EDGESLM_ARM64_BENCH:---prompt-tokens 32 --new-tokens 16 --runs 2 --warmup 1}
LOG=$CACHE/last-run.log

rootfs_only=0
if [ "${1:-}" = "--rootfs-only" ]; then rootfs_only=1; shift; fi
BUNDLES=("$@")

say() { printf '==> %s\n' "$*"; }
die() { printf 'arm64-check: %s\n' "$*" >&2; exit 1; }
timed() {  # timed LABEL CMD...: run, print the wall time, keep going state in $?
  local label=$1 t0 rc
  shift
  t0=$(date +%s.%N)
  set +e
  "$@"
  rc=$?
  set -e
  printf -- '--- %s: %.1f s (exit %d)\n' "$label" "$(echo "$(date +%s.%N) - $t0" | bc)" "$rc"
  return "$rc"
}

[ "$(id -u)" = 0 ] || die "needs root (binfmt_misc, debootstrap, chroot); run it with sudo"
mkdir -p "$CACHE"

host_tools() {
  local missing=()
  command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  command -v update-binfmts >/dev/null || missing+=(binfmt-support)
  command -v bc >/dev/null || missing+=(bc)
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]} (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  fi
  if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    update-binfmts --enable qemu-aarch64
  fi
  grep -q enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 || die "qemu-aarch64 binfmt handler is not enabled"
}

build_rootfs() {
  if [ -f "$ROOT/.edgeslm-rootfs" ]; then
    say "reusing $ROOT"
    return
  fi
  say "debootstrap $SUITE arm64 into $ROOT (a few minutes, once)"
  rm -rf "$ROOT.partial"
  debootstrap --arch=arm64 --variant=minbase \
    --include=python3,python3-venv,python3-pip,ca-certificates "$SUITE" "$ROOT.partial" "$MIRROR" \
    > "$CACHE/debootstrap.log" 2>&1 || { tail -20 "$CACHE/debootstrap.log" >&2; die "debootstrap failed"; }
  date -u +%FT%TZ > "$ROOT.partial/.edgeslm-rootfs"
  rm -rf "$ROOT"
  mv "$ROOT.partial" "$ROOT"
}

# The host's network goes through its CA bundle; pip inside uses the same file (copied), and
# only PyPI (the host's local wheel folders and x86-only constraints are left out).
pip_config() {
  local cert=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
  mkdir -p "$ROOT$(dirname "$cert")"
  cp -f "$cert" "$ROOT$cert"
  printf '[global]\ncert = %s\ndisable-pip-version-check = true\ndefault-timeout = 180\n' "$cert" > "$ROOT/etc/pip.conf"
  cp -f /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
}

mounted=()
mount_chroot() {
  local d
  # No /sys by default: with the host's (x86) /sys visible, cpuinfo inside onnxruntime and
  # LiteRT's XNNPACK crashes under qemu (SIGSEGV at import); without it they warn
  # ("cpuinfo_initialize failed") and take their generic ARM kernels. OpenVINO is the other way
  # round (hwloc crashes without /sys): sys_for FORMAT mounts it around OpenVINO's steps only.
  for d in proc dev; do
    if ! mountpoint -q "$ROOT/$d"; then
      case $d in
        proc) mount -t proc proc "$ROOT/proc" ;;
        dev) mount --bind /dev "$ROOT/dev" ;;
      esac
      mounted+=("$ROOT/$d")
    fi
  done
}
umount_chroot() {
  local m
  mountpoint -q "$ROOT/sys" && umount -l "$ROOT/sys"  # sys_for mounts it in the logged subshell
  for m in "${mounted[@]}"; do umount -l "$m" 2>/dev/null || true; done
}
trap umount_chroot EXIT
sys_for() {
  if [ "$1" = openvino ]; then
    mountpoint -q "$ROOT/sys" || mount --bind /sys "$ROOT/sys"
  elif mountpoint -q "$ROOT/sys"; then
    umount -l "$ROOT/sys"
  fi
}

inside() {  # inside CMD: run a bash command line in the arm64 userland
  chroot "$ROOT" /usr/bin/env -i HOME=/root PATH=/opt/venv/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin \
    LANG=C.UTF-8 PIP_CERT="${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}" /bin/bash -c "$1"
}

host_tools
build_rootfs
pip_config
mount_chroot
say "userland: $(inside 'uname -m; python3 --version' | tr '\n' ' ')"
[ "$(inside 'uname -m')" = aarch64 ] || die "the chroot does not run as aarch64"
if [ "$rootfs_only" = 1 ]; then exit 0; fi

# -- wheels of this checkout (scripts/build-wheels.sh) and the device install ---------------
[ -x "$HOST_VENV/bin/python" ] || die "no $HOST_VENV: run scripts/setup.sh first (it builds the wheels and exports)"
PYTHON="$HOST_VENV/bin/python" bash scripts/build-wheels.sh "$CACHE/dist" >/dev/null
rm -rf "$ROOT/opt/edgeslm-dist"
cp -r "$CACHE/dist" "$ROOT/opt/edgeslm-dist"

# -- bundles (exported on the host, cached) -------------------------------------------------
export_cached() {  # export_cached DIR ARGS...: edgeslm export once into DIR
  local dir=$1
  shift
  if [ ! -f "$dir/manifest.json" ]; then
    say "exporting $* -> $dir (host, once)"
    nice -n 10 "$HOST_VENV/bin/edgeslm" export "$@" -o "$dir" --overwrite
  fi
}
TINY_LITERT=$CACHE/bundles/tiny-litert-fp32
if [ ! -d "$CACHE/bundles/tiny-hf" ]; then
  "$HOST_VENV/bin/python" -c "import sys; from edgeslm.testing import make_tiny_hf_folder as m; m(sys.argv[1])" \
    "$CACHE/bundles/tiny-hf"
fi
export_cached "$TINY_LITERT" "$CACHE/bundles/tiny-hf" -f litert -p fp32 --context-length 128
if [ ${#BUNDLES[@]} -eq 0 ]; then
  export_cached "$CACHE/bundles/smollm2-onnx-int4-gguf" smollm2-135m -f onnx -p int4-gguf
  BUNDLES=("$CACHE/bundles/smollm2-onnx-int4-gguf" "$TINY_LITERT")
fi
rm -rf "$ROOT/opt/bundles"
mkdir -p "$ROOT/opt/bundles"
names=() fmts=()
formats=litert  # the service-file stage uses the tiny LiteRT bundle
for b in "${BUNDLES[@]}"; do
  [ -f "$b/manifest.json" ] || die "$b is not a bundle"
  names+=("$(basename "$b")")
  cp -r "$b" "$ROOT/opt/bundles/${names[-1]}"
  fmt=$(sed -n 's/^ *"format": "\([a-z]*\)".*/\1/p' "$b/manifest.json" | head -1)
  fmts+=("$fmt")
  [[ ",$formats," == *",$fmt,"* ]] || formats="$formats,$fmt"
done
rm -rf "$ROOT/opt/service-test"
cp -r "$TINY_LITERT" "$ROOT/opt/service-test"
rm -rf "$ROOT/opt/edgeslm-firmware"
cp -r firmware_examples/raspberry-pi "$ROOT/opt/edgeslm-firmware"

{
  say "arm64 check $(date -u +%FT%TZ) on $(uname -m) host, emulated aarch64 ($SUITE)"
  say "install: pip install --find-links /opt/edgeslm-dist 'edgeslm[$formats]'"
  timed "venv + device install (pip cache kept in the rootfs)" inside "
    set -e
    [ -x /opt/venv/bin/python ] || python3 -m venv /opt/venv
    pip uninstall -q -y edgeslm edgeslm-onnx edgeslm-litert edgeslm-openvino edgeslm-coreml 2>/dev/null || true
    pip install -q --find-links /opt/edgeslm-dist 'edgeslm[$formats]'
    ! python -c 'import torch' 2>/dev/null || { echo 'torch in a device install' >&2; exit 1; }
    pip list 2>/dev/null | grep -i -E '^(edgeslm|onnxruntime|ai-edge-litert|openvino|numpy|tokenizers) '"
  for i in "${!names[@]}"; do
    name=${names[$i]} b=/opt/bundles/${names[$i]}
    sys_for "${fmts[$i]}"
    say "$name: $(inside "python -c \"import json; m=json.load(open('$b/manifest.json')); print(m['model']['name'], m['format'], m['precision'])\"")"
    timed "$name: edgeslm run" inside "edgeslm run $b --prompt 'The capital of France is' -n 16" || true
    timed "$name: edgeslm verify" inside "edgeslm verify $b" || true
    timed "$name: edgeslm verify --on-device" inside "edgeslm verify $b --on-device" || true
    timed "$name: edgeslm bench (EMULATED speed)" inside "edgeslm bench $b $BENCH_ARGS" || true
  done
  sys_for litert
  # shellcheck disable=SC2016  # expanded inside the userland, not here
  timed "service files: install.sh + uninstall.sh --purge (litert, tiny)" inside '
    set -e
    bash /opt/edgeslm-firmware/install.sh --wheels /opt/edgeslm-dist --bundle /opt/service-test \
      --extra litert --prefix /opt/edgeslm-svc
    id edgeslm
    test "$(stat -c %a /etc/edgeslm/broker.env)" = 600
    grep -q "^ExecStart=/opt/edgeslm-svc/venv/bin/edgeslm agent" /etc/systemd/system/edgeslm-agent.service
    test "$(readlink /opt/edgeslm-svc/bundles/current)" = service-test
    bash /opt/edgeslm-firmware/uninstall.sh --purge --prefix /opt/edgeslm-svc
    ! id edgeslm 2>/dev/null && test ! -e /etc/systemd/system/edgeslm-serve.service' || true
} 2>&1 | tee "$LOG"
say "log: $LOG"
grep -q -- '--- .*(exit [1-9]' "$LOG" && die "a step failed (see above)"
say "arm64 check passed"
