#!/bin/sh
# deb purge / rpm erase: remove the user, group, data and logs only on purge (deb) or final
# erase (rpm keeps data: only the unit state is reloaded there, as rpm has no purge).
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
fi
if [ "$1" = purge ]; then
    rm -rf /var/lib/proconsul /var/log/proconsul /etc/proconsul.d
    if getent passwd proconsul >/dev/null; then userdel proconsul >/dev/null 2>&1 || true; fi
    if getent group proconsul >/dev/null; then groupdel proconsul >/dev/null 2>&1 || true; fi
fi
if [ "$1" = remove ] || [ "$1" = purge ] || [ "$1" = 0 ]; then
    if [ -d /run/systemd/system ] && systemctl is-active --quiet rsyslog.service; then
        systemctl try-restart rsyslog.service >/dev/null 2>&1 || true
    fi
fi
exit 0
