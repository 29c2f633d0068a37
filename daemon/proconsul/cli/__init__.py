"""`proconsul <command>`: dispatch, the command frame, output layout and one module per subcommand.

Every command is a thin client of the local agent's HTTP API (`proconsul.api_client`).
"""
