"""Agent TLS: the certificates an operator creates with `proconsul tls` (certs.py)."""
