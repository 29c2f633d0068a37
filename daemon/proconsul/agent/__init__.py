"""The agent process: the composition root that builds the parts for server or client mode and runs them.

Also owns what only the process does: graceful leave, systemd notify and pid file, logging set-up.
"""
