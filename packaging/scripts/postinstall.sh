#!/bin/sh
# Data and log directories owned by the service user; config readable by it; reload units.
# The service is neither enabled nor started (as Consul's package): configure, then
# `systemctl enable --now proconsul`. On upgrade a running service is restarted.
set -e
install -d -m 0750 -o proconsul -g proconsul /var/lib/proconsul
install -d -m 0750 -o root -g adm /var/log/proconsul 2>/dev/null || install -d -m 0750 /var/log/proconsul
chown root:proconsul /etc/proconsul.d
chmod 0750 /etc/proconsul.d
for f in /etc/proconsul.d/*; do
    [ -f "$f" ] && chgrp proconsul "$f" && chmod g+r "$f"
done
# TLS certificates and keys (docs/TLS.md): readable by the agent's group, nobody else.
install -d -m 0750 -o root -g proconsul /etc/proconsul.d/tls
for f in /etc/proconsul.d/tls/*; do
    [ -f "$f" ] && chown root:proconsul "$f" && chmod 0640 "$f"
done
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
    # Upgrade (deb: configure with the old version; rpm: $1 >= 2): restart a running agent.
    upgrade=""
    if [ "$1" = configure ] && [ -n "$2" ]; then upgrade=1; fi
    if [ "$1" -ge 2 ] 2>/dev/null; then upgrade=1; fi
    if [ -n "$upgrade" ] && systemctl is-active --quiet proconsul.service; then
        systemctl restart proconsul.service || true
    fi
    # rsyslog picks up its new drop-in.
    if systemctl is-active --quiet rsyslog.service; then
        systemctl try-restart rsyslog.service >/dev/null 2>&1 || true
    fi
fi
exit 0
