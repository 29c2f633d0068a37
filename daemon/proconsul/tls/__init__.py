"""Agent TLS: the certificates an operator creates with `proconsul tls` (certs.py) and the SSL
context a listener serves them with, built and checked from Consul's settings (context.py)."""
