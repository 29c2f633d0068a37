"""A single-voter, in-memory replicated log: what `-dev` runs instead of a Raft cluster.

Owns the commit path of a cluster of exactly one server that keeps nothing on disk, which is
what Consul's dev mode is. With one voter, an appended entry is committed at once, so this log
assigns the next index, keeps the encoded entry, applies it to the FSM and returns the result.
It implements the same `Consensus` protocol as the Raft node's `server.consensus.RaftLog` (see
`proconsul.rpc_api`), so the RPC and HTTP layers cannot tell the difference.
"""

from __future__ import annotations

from typing import Any

from proconsul.state import commands
from proconsul.state.fsm import FSM


class SingleNodeLog:
    """Leader of a one-server cluster from birth; entries are committed when appended."""

    def __init__(self, fsm: FSM, self_address: str, node_id: str, node_name: str) -> None:
        self.fsm = fsm
        self.self_address = self_address
        self.node_id = node_id
        self.node_name = node_name
        self.entries: list[bytes] = []  # index i+1 is entries[i]; kept for snapshots and tests
        self.commit_index = 0
        # Entry 1 is the configuration entry in real Raft; keep the first index honest (>= 1)
        # so that no read ever reports X-Consul-Index 0.
        self._append(commands.Noop())

    def _append(self, command: commands.Command) -> Any:
        data = commands.encode(command)
        self.entries.append(data)
        self.commit_index = len(self.entries)
        # Decode what was appended, as a follower would, so dev mode exercises the codec too.
        return self.fsm.apply(self.commit_index, commands.decode(data))

    # Consensus protocol ---------------------------------------------------------------------

    def is_leader(self) -> bool:
        return True

    def ready_for_reads(self) -> bool:
        return True

    def leader_address(self) -> str:
        return self.self_address

    def last_contact_ms(self) -> int:
        return 0

    def voters(self) -> list[tuple[str, str, str]]:
        """(node ID, node name, address) of each voter."""
        return [(self.node_id, self.node_name, self.self_address)]

    async def apply(self, command: commands.Command, encoded: bytes | None = None) -> tuple[int, Any]:
        """Commit and apply `command`; returns (log index, FSM result)."""
        result = self._append(command)
        return self.fsm.store_index(self.commit_index), result

    async def apply_batch(self, batch: list[tuple[commands.Command, bytes]]) -> list[tuple[int, Any]]:
        """Commit and apply each command in turn (one voter: nobody forwards to it, but the
        protocol is the same)."""
        return [await self.apply(command, data) for command, data in batch]

    async def verify_leader(self) -> None:
        """ReadIndex for `?consistent`: trivially confirmed with a single voter."""
        return None
