#!/bin/sh
# Where meshroute's images start.
#
# systemd runs them as Type=notify services through podman's
# --sdnotify=container (Quadlet's Notify=true): NOTIFY_SOCKET arrives set and
# bound in. WATCHDOG_USEC is passed in with --env WATCHDOG_USEC; the
# WATCHDOG_PID systemd set names podman on the host, so it is replaced by the
# PID of what runs below (exec keeps this shell's PID).
#
#   meshroute-entrypoint install-cni   copy the CNI plugins to /opt/cni/bin
#                                      (mount the host's CNI directory there;
#                                      HOST_CNI_DIR: its path on the host,
#                                      default /opt/cni)
#   meshroute-entrypoint COMMAND...    run COMMAND (the image's CMD by default)
set -eu
if [ -n "${WATCHDOG_USEC:-}" ]; then
  WATCHDOG_PID=$$
  export WATCHDOG_PID
fi
if [ "${1:-}" = install-cni ]; then
  shift
  # The host runs the plugin with its own python3 (>= 3.11, standard
  # library only) from the package copy in /opt/cni/meshroute.
  exec /opt/meshroute/bin/python -m ipam.cni_install /opt/cni/bin \
    --python "${HOST_PYTHON:-/usr/bin/python3}" --lib /opt/cni/meshroute \
    --lib-on-host "${HOST_CNI_DIR:-/opt/cni}/meshroute" \
    --plugins /usr/lib/cni "$@"
fi
exec "$@"
