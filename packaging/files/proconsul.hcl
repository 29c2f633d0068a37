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

# TLS (docs: /usr/share/doc/proconsul/TLS.md). Certificates live in /etc/proconsul.d/tls/
# (created by the package, 0750 root:proconsul; files 0640 root:proconsul; the agent does not read
# sub-directories as config). Make them with `proconsul tls ca create` and
# `proconsul tls cert create -server|-client -dc dc1` on a host that keeps the CA key, copy the CA
# certificate and this agent's pair here, then uncomment. `systemctl reload proconsul` re-reads
# the files after a rotation without dropping connections.
#
# ca_file   = "/etc/proconsul.d/tls/consul-agent-ca.pem"
# cert_file = "/etc/proconsul.d/tls/dc1-server-consul-0.pem"
# key_file  = "/etc/proconsul.d/tls/dc1-server-consul-0-key.pem"
# verify_incoming        = true   # server RPC (8300) and HTTPS: TLS with a certificate of the CA only
# verify_outgoing        = true   # dial servers over TLS, verified with the CA
# verify_server_hostname = true   # servers must present server.dc1.consul
# ports { https = 8501 }          # HTTPS API; `http = -1` would leave only HTTPS
