#!/bin/sh
# Create the proconsul system user and group (as Consul's preinstall).
set -e
if ! getent group proconsul >/dev/null; then
    groupadd --system proconsul
fi
if ! getent passwd proconsul >/dev/null; then
    useradd --system --gid proconsul --home-dir /var/lib/proconsul --no-create-home \
        --shell /usr/sbin/nologin --comment "proconsul agent" proconsul
fi
exit 0
