"""The serf layer over the gossip core: pools (LAN, WAN), members, queries, snapshot, reconnect, keyring."""
