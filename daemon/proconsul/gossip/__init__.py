"""Gossip membership (SWIM with Lifeguard): sans-I/O core and asyncio driver."""
