# proconsul default configuration (a conffile: your edits are kept on upgrade).
# Put further settings, services and checks in more files in /etc/proconsul.d/ (drop-ins,
# read in lexical order) and run `systemctl reload proconsul` to apply the reloadable ones.
#
# This default is a single server that bootstraps a one-node cluster on this host: the agent is
# ready as soon as it listens, and the data lives in /var/lib/proconsul. For a three-server
# cluster, replace `bootstrap = true` with `bootstrap_expect = 3` and `retry_join = [...]`.

datacenter = "dc1"
data_dir   = "/var/lib/proconsul"
server     = true
bootstrap  = true

# Written once the agent runs, removed on a clean stop (systemd makes /run/proconsul).
pid_file = "/run/proconsul/proconsul.pid"

# HTTP (8500) and DNS (8600) on loopback only; widen client_addr to serve other hosts.
client_addr = "127.0.0.1"
bind_addr   = "127.0.0.1"

# The web UI at http://127.0.0.1:8500/ui/ (off by default, as in Consul):
# ui_config {
#   enabled = true
# }

# Log lines go to the journal (journalctl -u proconsul) and to syslog facility LOCAL0, which
# /etc/rsyslog.d/30-proconsul.conf writes to /var/log/proconsul/proconsul.log.
log_level       = "INFO"
enable_syslog   = true
syslog_facility = "LOCAL0"
