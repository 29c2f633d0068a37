"""Agent TLS: the certificates an operator creates with `proconsul tls` (certs.py), the SSL
context a listener serves them with, built and checked from Consul's settings (context.py), and
the agent's TLS policy in use on the server port and HTTPS, swapped on reload (rpc.py)."""
