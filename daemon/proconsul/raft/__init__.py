"""Raft consensus: the sans-I/O core, storage and the asyncio driver; the dev single-voter log."""
