"""Serf-style queries over the LAN pool: asking the cluster, and the internal keyring queries.

Owns two things that sit on top of the gossip core's query messages:

- :class:`QueryAsker`: send a query and gather the answers (one per member, de-duplicated by the
  core) until every alive member answered or the deadline passed, as serf's ``Query`` and
  ``QueryResponse`` do;
- serf's ``_serf_conflict`` query: which address each member holds for a disputed node name;
- the internal queries serf answers by itself (``_serf_install-key``, ``_serf_use-key``,
  ``_serf_remove-key``, ``_serf_list-keys``): each member changes its own keyring, writes
  ``data_dir/serf/local.keyring`` and answers ``{Result, Message, Keys, PrimaryKey}``; the asker
  folds the answers into Consul's ``KeyringResponse`` (``Keys``/``PrimaryKeys`` counts,
  ``NumNodes``, ``Messages`` and an ``Error`` such as ``2/3 nodes reported failure``).

Serf's messages and log lines are kept (``No keyring to modify (encryption not enabled)``,
``Keyring is empty (encryption not enabled)``, memberlist's ``Removing the primary key is not
allowed``), since operators and tests look for them.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from proconsul.gossip.core import Event, MemberState, QueryReceived, QueryResponseReceived
from proconsul.gossip.keyring import Keyring, KeyringError, encode_key
from proconsul.gossip.node import GossipNode

logger = logging.getLogger(__name__)

INTERNAL_QUERY_PREFIX = "_serf_"
KEYRING_OPERATIONS = ("install", "use", "remove", "list")
_QUERY_NAMES = {"install": "install-key", "use": "use-key", "remove": "remove-key", "list": "list-keys"}


@dataclass
class QueryResult:
    """The answers to one query: ``responses`` by member name, in arrival order."""

    num_nodes: int
    responses: dict[str, bytes] = field(default_factory=dict)


@dataclass
class _Gathering:
    result: QueryResult
    done: asyncio.Event


class QueryAsker:
    """Sends queries on one pool and gathers their answers; fed by the pool's events."""

    def __init__(self, node: GossipNode) -> None:
        self.node = node
        self._gathering: dict[tuple[int, int], _Gathering] = {}
        # Answers that arrive while a query is being sent (our own answer is produced inside
        # send_query, before its handle is known), claimed by ask() right after.
        self._sending = False
        self._early: dict[tuple[int, int], dict[str, bytes]] = {}

    def handle_event(self, event: Event) -> bool:
        """Take the answers to our queries; True if ``event`` was one."""
        if not isinstance(event, QueryResponseReceived):
            return False
        g = self._gathering.get((event.ltime, event.id))
        if g is None and self._sending:
            self._early.setdefault((event.ltime, event.id), {})[event.from_name] = event.payload
        elif g is not None:
            g.result.responses[event.from_name] = event.payload
            if len(g.result.responses) >= g.result.num_nodes:
                g.done.set()
        return True

    def alive_members(self) -> int:
        # serf compares answers with memberlist's NumMembers: every member not dead or left.
        return sum(1 for m in self.node.members() if m.state in (MemberState.ALIVE, MemberState.SUSPECT))

    async def ask(self, name: str, payload: bytes, timeout_s: float | None = None) -> QueryResult:
        """Send the query and wait until every alive member answered or its deadline passed."""
        result = QueryResult(self.alive_members())
        gathering = _Gathering(result, asyncio.Event())
        self._sending = True
        try:
            handle = self.node.send_query(name, payload, timeout_s)
        finally:
            self._sending = False
        key = (handle.ltime, handle.id)
        result.responses.update(self._early.pop(key, {}))
        self._early.clear()
        self._gathering[key] = gathering
        try:
            remaining = handle.deadline - self.node.loop_time()
            if len(result.responses) < result.num_nodes and remaining > 0:
                try:
                    async with asyncio.timeout(remaining):
                        await gathering.done.wait()
                except TimeoutError:
                    pass
        finally:
            del self._gathering[key]
        return result


# --- keyring queries ----------------------------------------------------------------------


def _encode(obj: dict[str, Any]) -> bytes:
    return bytes(msgpack.packb(obj, use_bin_type=True))


class KeyringQueries:
    """The keyring half of serf's internal queries for one pool (the LAN pool here).

    Args:
        node: the pool's driver; its ``keyring`` is the one changed (None: encryption is off).
        asker: sends the cluster-wide queries.
        save: persists the changed keyring (``data_dir/serf/local.keyring``), or None to skip.
    """

    def __init__(self, node: GossipNode, asker: QueryAsker, save: Callable[[Keyring], None] | None) -> None:
        self.node = node
        self.asker = asker
        self.save = save

    # --- answering ---------------------------------------------------------------------------

    def handle_event(self, event: Event) -> bool:
        """Answer internal keyring queries; True if ``event`` was an internal query."""
        if not isinstance(event, QueryReceived) or not event.name.startswith(INTERNAL_QUERY_PREFIX):
            return False
        op = event.name[len(INTERNAL_QUERY_PREFIX):]
        if op == "conflict":
            self._answer_conflict(event)
            return True
        handlers = {"install-key": self._install, "use-key": self._use, "remove-key": self._remove,
                    "list-keys": self._list}
        handler = handlers.get(op)
        if handler is None:
            if op != "ping":
                logger.warning("serf: Unhandled internal query '%s'", op)
            return True
        try:
            key = b""
            if op != "list-keys":
                req = msgpack.unpackb(event.payload, raw=False)
                key = req["Key"] if isinstance(req, dict) and isinstance(req.get("Key"), bytes) else b""
        except Exception as exc:  # a peer sent garbage: answer with a failure, never crash
            logger.error("serf: Failed to decode key request: %s", exc)
            answer: dict[str, Any] = {"Result": False, "Message": f"Failed to decode key request: {exc}"}
        else:
            answer = handler(key)
        try:
            self.node.respond(event, _encode(answer))
        except ValueError as exc:
            logger.error("serf: Failed to respond to key query: %s", exc)
        return True

    def _answer_conflict(self, event: QueryReceived) -> None:
        """serf's conflict query: tell the asker which address we hold for the disputed name."""
        name = event.payload.decode("utf-8", "replace")
        if name == self.node.name:
            return  # the disputed node does not vote for itself
        logger.debug("serf: Got conflict resolution query for '%s'", name)
        held = next((m for m in self.node.members() if m.name == name), None)
        answer = {"Name": held.name, "Addr": held.addr[0], "Port": held.addr[1]} if held is not None else {}
        try:
            self.node.respond(event, _encode(answer))
        except ValueError as exc:
            logger.error("serf: Failed to respond to conflict query: %s", exc)

    def _mutate(self, what: str, change: Callable[[Keyring], None]) -> dict[str, Any]:
        ring = self.node.keyring
        if ring is None:
            logger.error("serf: No keyring to modify (encryption not enabled)")
            return {"Result": False, "Message": "No keyring to modify (encryption not enabled)"}
        logger.info("serf: Received %s query", what)
        try:
            change(ring)
        except KeyringError as exc:
            logger.error("serf: Failed to %s: %s", {"install-key": "install key", "use-key": "change primary key",
                                                    "remove-key": "remove key"}[what], exc)
            return {"Result": False, "Message": str(exc)}
        if self.save is not None:
            try:
                self.save(ring)
            except OSError as exc:
                logger.error("serf: Failed to write keyring file: %s", exc)
                return {"Result": False, "Message": str(exc)}
        return {"Result": True, "Message": ""}

    def _install(self, key: bytes) -> dict[str, Any]:
        return self._mutate("install-key", lambda ring: ring.install(key))

    def _use(self, key: bytes) -> dict[str, Any]:
        return self._mutate("use-key", lambda ring: ring.use(key))

    def _remove(self, key: bytes) -> dict[str, Any]:
        return self._mutate("remove-key", lambda ring: ring.remove(key))

    def _list(self, _key: bytes) -> dict[str, Any]:
        ring = self.node.keyring
        if ring is None:
            logger.error("serf: Keyring is empty (encryption not enabled)")
            return {"Result": False, "Message": "Keyring is empty (encryption not enabled)"}
        logger.info("serf: Received list-keys query")
        return {"Result": True, "Message": "", "Keys": [encode_key(k) for k in ring.keys],
                "PrimaryKey": encode_key(ring.primary)}

    # --- asking ------------------------------------------------------------------------------

    async def operation(self, op: str, key: str = "") -> dict[str, Any]:
        """Run ``op`` (install, use, remove, list) on every member; one pool's KeyringResponse.

        Raises:
            KeyringError: ``key`` is not base64 (the operator's input).
        """
        if op not in KEYRING_OPERATIONS:
            raise ValueError(f"unknown keyring operation {op!r}")
        payload = b""
        if op != "list":
            try:
                raw = base64.b64decode(key, validate=True)
            except ValueError:
                raise KeyringError(f"Invalid key: {key!r} is not valid base64") from None
            payload = _encode({"Key": raw})
        result = await self.asker.ask(INTERNAL_QUERY_PREFIX + _QUERY_NAMES[op], payload)
        return fold_key_responses(result)


def fold_key_responses(result: QueryResult) -> dict[str, Any]:
    """serf's KeyManager summary of the members' answers (``Error`` empty when all succeeded)."""
    keys: dict[str, int] = {}
    primary: dict[str, int] = {}
    messages: dict[str, str] = {}
    errors = 0
    for name, raw in result.responses.items():
        try:
            answer = msgpack.unpackb(raw, raw=False)
            if not isinstance(answer, dict):
                raise ValueError("not a map")
        except Exception:
            messages[name] = f"Failed to decode key query response: {raw!r}"
            errors += 1
            continue
        message = str(answer.get("Message") or "")
        if not answer.get("Result"):
            messages[name] = message
            errors += 1
        elif message:
            messages[name] = message
        for k in answer.get("Keys") or []:
            keys[str(k)] = keys.get(str(k), 0) + 1
        if answer.get("Result") and answer.get("PrimaryKey"):
            pk = str(answer["PrimaryKey"])
            primary[pk] = primary.get(pk, 0) + 1
    error = ""
    if errors:
        error = f"{errors}/{result.num_nodes} nodes reported failure"
    elif len(result.responses) != result.num_nodes:
        error = f"{len(result.responses)}/{result.num_nodes} nodes reported success"
    return {"Keys": keys, "PrimaryKeys": primary, "Messages": messages, "NumNodes": result.num_nodes,
            "NumResp": len(result.responses), "NumErr": errors, "Error": error}
