"""Server-side duties: RPC endpoints, named read queries, leader duties, autopilot, cluster join and bootstrap,
operator actions, snapshots, the WAN router, and the client agent's remote server with its server manager.
"""
