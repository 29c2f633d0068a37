#!/bin/sh
# Data and log directories owned by the service user; config readable by it; reload units.
# The service is neither enabled nor started (as Consul's package): configure, then
# `systemctl enable --now proconsul`. On upgrade a running service is restarted.
set -e
install -d -m 0750 -o proconsul -g proconsul /var/lib/proconsul
# /var/log/proconsul is written by the syslog daemon (/etc/rsyslog.d/30-proconsul.conf). rsyslog
# runs as root on Debian and RHEL-family systems; Ubuntu's drops to the user `syslog`
# ($PrivDropToUser in /etc/rsyslog.conf), which must then own the directory. Group adm (where it
# exists) reads the logs, as it reads /var/log/syslog.
log_user=root
drop_user=$(sed -n 's/^[[:space:]]*\$PrivDropToUser[[:space:]][[:space:]]*\([^[:space:]]*\).*/\1/p' \
    /etc/rsyslog.conf /etc/rsyslog.d/*.conf 2>/dev/null | tail -n 1)
if [ -n "$drop_user" ] && getent passwd "$drop_user" >/dev/null; then
    log_user=$drop_user
elif getent passwd syslog >/dev/null; then
    log_user=syslog
fi
log_group=root
if getent group adm >/dev/null; then log_group=adm; fi
install -d -m 0750 -o "$log_user" -g "$log_group" /var/log/proconsul
chown "$log_user:$log_group" /var/log/proconsul  # also when an older package made it root's
# SELinux (RHEL family): the directory gets /var/log's label, so rsyslog may write there.
if command -v restorecon >/dev/null 2>&1; then restorecon -R /var/log/proconsul >/dev/null 2>&1 || true; fi
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
