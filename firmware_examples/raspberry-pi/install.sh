#!/usr/bin/env bash
# Install edgeslm as systemd services on this device (Raspberry Pi OS, Jetson Linux, any systemd
# Linux): a dedicated system user, a venv under the prefix, the bundle, /etc/edgeslm settings and
# the units in this folder (edgeslm-serve, edgeslm-agent).
#
#   sudo ./install.sh --wheels ~/dist --bundle ~/out/smollm2-int4 [--extra onnx] [--units serve,agent] [--enable]
#
# --wheels DIR   the wheels of scripts/build-wheels.sh (edgeslm + backends), copied from the workstation
# --bundle DIR   a bundle (edgeslm export ... -o DIR); installed as PREFIX/bundles/NAME, linked as .../current
# --extra NAME   the backend runtime to install: onnx (default), litert or openvino
# --units LIST   which units: serve, agent or serve,agent (default)
# --prefix DIR   where the venv and bundles go (default /opt/edgeslm; the units are rewritten to match)
# --user NAME    the service user (default edgeslm; created as a system user without login)
# --enable       enable and start the units now (systemctl enable --now)
#
# Idempotent: re-running upgrades the wheels, adds the bundle and re-points `current`; it never
# overwrites /etc/edgeslm/*.env. Before any unit is installed, the bundle is verified as the service
# user, on this CPU (edgeslm verify --on-device): a bundle this device computes wrongly is refused.
# Undo with ./uninstall.sh. Units live in the folder this script is called from (so the jetson/
# folder's link to this script installs the Jetson units).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)

WHEELS='' BUNDLE='' EXTRA=onnx UNITS=serve,agent PREFIX=/opt/edgeslm SVC_USER=edgeslm ENABLE=0
PYTHON=${PYTHON:-python3}
usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "install.sh: $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
  case $1 in
    --wheels) WHEELS=${2:?}; shift 2 ;;
    --bundle) BUNDLE=${2:?}; shift 2 ;;
    --extra) EXTRA=${2:?}; shift 2 ;;
    --units) UNITS=${2:?}; shift 2 ;;
    --prefix) PREFIX=${2:?}; shift 2 ;;
    --user) SVC_USER=${2:?}; shift 2 ;;
    --enable) ENABLE=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
if [ -z "$WHEELS" ] || [ -z "$BUNDLE" ]; then usage >&2; die "--wheels and --bundle are required"; fi
[ "$(id -u)" = 0 ] || die "run as root (sudo): it creates a user and writes /etc and $PREFIX"
compgen -G "$WHEELS/edgeslm-*.whl" >/dev/null || die "$WHEELS holds no edgeslm wheel (scripts/build-wheels.sh)"
[ -f "$BUNDLE/manifest.json" ] || die "$BUNDLE is not a bundle (no manifest.json)"
case $EXTRA in onnx|litert|openvino) ;; *) die "--extra must be onnx, litert or openvino" ;; esac
units=()
for u in ${UNITS//,/ }; do
  [ -f "$HERE/edgeslm-$u.service" ] || die "no unit edgeslm-$u.service in $HERE"
  units+=("edgeslm-$u.service")
done

say() { printf '==> %s\n' "$*"; }

if ! id "$SVC_USER" >/dev/null 2>&1; then
  say "creating system user $SVC_USER"
  useradd --system --user-group --home-dir /var/lib/edgeslm --no-create-home --shell /usr/sbin/nologin "$SVC_USER"
fi

extras=$EXTRA
[[ " ${units[*]} " == *" edgeslm-serve.service "* ]] && extras="$EXTRA,serve"  # starlette + uvicorn
say "installing edgeslm[$extras] into $PREFIX/venv"
install -d -m 0755 "$PREFIX" "$PREFIX/bundles"
[ -x "$PREFIX/venv/bin/python" ] || "$PYTHON" -m venv "$PREFIX/venv"
# same version number, new build: drop the old edgeslm distributions so the new wheels are taken
"$PREFIX/venv/bin/python" -m pip uninstall -q -y edgeslm edgeslm-onnx edgeslm-litert edgeslm-openvino \
  edgeslm-coreml >/dev/null 2>&1 || true
"$PREFIX/venv/bin/python" -m pip install -q --find-links "$WHEELS" "edgeslm[$extras]"

name=$(basename "$(cd "$BUNDLE" && pwd)")
say "installing bundle $name"
rm -rf "$PREFIX/bundles/.$name.new"
cp -r "$BUNDLE" "$PREFIX/bundles/.$name.new"
chown -R "root:$SVC_USER" "$PREFIX/bundles/.$name.new"
chmod -R u=rwX,g=rX,o= "$PREFIX/bundles/.$name.new"
rm -rf "$PREFIX/bundles/$name"
mv "$PREFIX/bundles/.$name.new" "$PREFIX/bundles/$name"
say "verifying it as $SVC_USER on this CPU (edgeslm verify --on-device)"
runuser -u "$SVC_USER" -- env HOME=/tmp "$PREFIX/venv/bin/edgeslm" verify "$PREFIX/bundles/$name" --on-device \
  || die "the bundle does not verify on this device; units left unchanged"
ln -sfn "$name" "$PREFIX/bundles/current"

install -d -m 0755 /etc/edgeslm
if [ ! -f /etc/edgeslm/edgeslm.env ]; then
  sed "s#/opt/edgeslm#$PREFIX#g" "$HERE/edgeslm.env" > /etc/edgeslm/edgeslm.env
  chmod 0644 /etc/edgeslm/edgeslm.env
fi
if [[ " ${units[*]} " == *" edgeslm-agent.service "* ]] && [ ! -f /etc/edgeslm/broker.env ]; then
  install -m 0600 -o root -g root "$HERE/broker.env.example" /etc/edgeslm/broker.env
  say "EDIT /etc/edgeslm/broker.env (broker URL, username, password) before starting edgeslm-agent"
fi

install -d -m 0755 /etc/systemd/system
if [[ " ${units[*]} " == *" edgeslm-serve.service "* ]] && [ ! -f /etc/edgeslm/serve.env ]; then
  install -m 0600 -o root -g root "$HERE/serve.env.example" /etc/edgeslm/serve.env
fi
for unit in "${units[@]}"; do
  sed "s#/opt/edgeslm#$PREFIX#g" "$HERE/$unit" > "/etc/systemd/system/$unit"
  chmod 0644 "/etc/systemd/system/$unit"
  say "installed /etc/systemd/system/$unit"
done
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  if [ "$ENABLE" = 1 ]; then
    systemctl enable --now "${units[@]}"
    systemctl --no-pager --lines=0 status "${units[@]}" || true
  else
    say "start with: systemctl enable --now ${units[*]}"
  fi
else
  say "systemd is not running here (container/chroot): units written, not started"
fi
