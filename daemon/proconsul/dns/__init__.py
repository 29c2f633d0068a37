"""DNS interface on `ports.dns`: server (sockets), wire codec, answers (pure), remote datacenters, recursors."""
