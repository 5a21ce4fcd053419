#!/usr/bin/env bash
# Remove what install.sh installed: stop and disable the edgeslm units and delete their files.
#
#   sudo ./uninstall.sh            # units gone; venv, bundles, settings, buffer and user kept
#   sudo ./uninstall.sh --purge    # also PREFIX (venv + bundles), /etc/edgeslm, /var/lib/edgeslm,
#                                  # /var/cache/edgeslm and the service user
#   --prefix DIR (default /opt/edgeslm)   --user NAME (default edgeslm)
set -euo pipefail
PURGE=0 PREFIX=/opt/edgeslm SVC_USER=edgeslm
die() { echo "uninstall.sh: $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
  case $1 in
    --purge) PURGE=1; shift ;;
    --prefix) PREFIX=${2:?}; shift 2 ;;
    --user) SVC_USER=${2:?}; shift 2 ;;
    -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[ "$(id -u)" = 0 ] || die "run as root (sudo)"
if [ -z "$PREFIX" ] || [ "$PREFIX" = / ]; then die "refusing --prefix '$PREFIX'"; fi

units=(edgeslm-serve.service edgeslm-agent.service)
systemd_up=0
command -v systemctl >/dev/null && [ -d /run/systemd/system ] && systemd_up=1
for unit in "${units[@]}"; do
  if [ -f "/etc/systemd/system/$unit" ]; then
    if [ "$systemd_up" = 1 ]; then systemctl disable --now "$unit" || true; fi
    rm -f "/etc/systemd/system/$unit"
    echo "==> removed $unit"
  fi
done
if [ "$systemd_up" = 1 ]; then systemctl daemon-reload; fi
if [ "$PURGE" = 1 ]; then
  rm -rf "$PREFIX" /etc/edgeslm /var/lib/edgeslm /var/cache/edgeslm
  if id "$SVC_USER" >/dev/null 2>&1; then userdel "$SVC_USER"; fi
  echo "==> purged $PREFIX, /etc/edgeslm, /var/lib/edgeslm, /var/cache/edgeslm and user $SVC_USER"
else
  echo "==> kept $PREFIX, /etc/edgeslm, /var/lib/edgeslm and user $SVC_USER (--purge removes them)"
fi
