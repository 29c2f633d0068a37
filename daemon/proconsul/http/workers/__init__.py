"""HTTP worker processes: hot reads served from read replicas of the state store (docs/HTTP-WORKERS.md)."""
