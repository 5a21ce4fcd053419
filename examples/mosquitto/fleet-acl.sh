#!/bin/sh
# Access rules of an edgeslm fleet on Mosquitto 2.0's dynamic-security plugin (mosquitto_ctrl).
#
#   fleet-acl.sh init FILE ADMIN                 offline: a new rules file with an admin user (asks a password)
#   fleet-acl.sh defaults                        deny everything not granted (publish, receive, subscribe)
#   fleet-acl.sh collector FLEET USER            a collector: reads the fleet, writes alert events and acks
#   fleet-acl.sh device FLEET DEVICE             a device: writes its own telemetry/status/events, reads
#                                                only its own commands and acks
#   fleet-acl.sh operator FLEET USER             an operator (edgeslm fleet rollout): writes the fleet's
#                                                signed deployment commands, nothing else
#
# The online commands talk to the running broker as the admin: put its options in MOSQUITTO_CTRL,
# e.g. MOSQUITTO_CTRL="-h 127.0.0.1 -p 1883 -u admin -P admin-secret". Passwords of new users come
# from PASSWORD (else mosquitto_ctrl asks). These are exactly the rules edgeslm.telemetry.dynsec
# writes for the tests (tests/telemetry/test_security.py runs this script against a broker).
set -eu
ctl() { mosquitto_ctrl ${MOSQUITTO_CTRL:-} dynsec "$@"; }
add_client() {  # user role
  if [ -n "${PASSWORD:-}" ]; then ctl createClient "$1" -p "$PASSWORD"; else ctl createClient "$1"; fi
  ctl addClientRole "$1" "$2"
}
case "${1:-}" in
  init)
    mosquitto_ctrl dynsec init "$2" "$3" ${PASSWORD:-} ;;
  defaults)
    for t in publishClientSend publishClientReceive subscribe; do ctl setDefaultACLAccess "$t" deny; done ;;
  collector)
    fleet=$2 user=$3 root="edgeslm/v1/$2"
    # one role for every collector of the broker; a second collector of a fleet finds it made already
    ctl createRole edgeslm-collector >/dev/null 2>&1 || true
    for f in "\$share/+/$root/+/telemetry" "\$share/+/$root/+/events" "$root/+/telemetry" "$root/+/events" \
             "$root/+/status"; do
      ctl addRoleACL edgeslm-collector subscribePattern "$f" allow >/dev/null 2>&1 || true
    done
    ctl addRoleACL edgeslm-collector publishClientReceive "$root/#" allow >/dev/null 2>&1 || true
    ctl addRoleACL edgeslm-collector publishClientSend "$root/+/events" allow >/dev/null 2>&1 || true
    ctl addRoleACL edgeslm-collector publishClientSend "$root/+/acks" allow >/dev/null 2>&1 || true
    add_client "$user" edgeslm-collector ;;
  operator)
    ctl createRole edgeslm-operator >/dev/null 2>&1 || true
    ctl addRoleACL edgeslm-operator publishClientSend "edgeslm/v1/$2/+/commands" allow >/dev/null 2>&1 || true
    add_client "$3" edgeslm-operator ;;
  device)
    root="edgeslm/v1/$2/$3" role="edgeslm-device-$3"
    ctl createRole "$role"
    for k in telemetry status events; do ctl addRoleACL "$role" publishClientSend "$root/$k" allow; done
    for k in commands acks; do
      ctl addRoleACL "$role" subscribeLiteral "$root/$k" allow
      ctl addRoleACL "$role" publishClientReceive "$root/$k" allow
    done
    add_client "$3" "$role" ;;
  *)
    sed -n '2,15p' "$0"; exit 2 ;;
esac
