"""Replicated state: the typed store tables and the FSM that applies commands to them (sans-I/O)."""
