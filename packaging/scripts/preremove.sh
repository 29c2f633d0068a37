#!/bin/sh
# On removal (not upgrade): stop and disable the service (as Consul's preremove).
set -e
remove=""
if [ "$1" = remove ]; then remove=1; fi      # deb
if [ "$1" = 0 ]; then remove=1; fi           # rpm: last instance erased
if [ -n "$remove" ] && [ -d /run/systemd/system ]; then
    systemctl --no-reload disable proconsul.service >/dev/null 2>&1 || true
    systemctl stop proconsul.service >/dev/null 2>&1 || true
fi
exit 0
