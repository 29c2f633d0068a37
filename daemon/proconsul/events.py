"""User events: Consul's `consul event` / `/v1/event/*` as an agent-local ring buffer.

Owns what an event is (ID, Name, Payload, node/service/tag regex filters, Version, LTime), the
checks Consul makes before firing one (name present, a tag filter needs a service filter, filters
compile, serf's 512-byte user-event limit counted on the encoded message), whether an event's
filters select this agent, the buffer of the last 256 events this agent received, the Lamport
time it stamps on them, and the change notification `/v1/event/list` blocks on. The blocking
index of the list is derived from the last event's ID (`uuid_to_uint64`), as Consul does.

Cross-agent delivery is gossip's job (serf user events); until the gossip driver carries them,
an event fired on an agent is delivered to that agent only, when its filters match it.
"""

from __future__ import annotations

import asyncio
import base64
import re
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import msgpack

# Consul's agent keeps this many recent events (agent.eventBuf).
EVENT_BUFFER_SIZE = 256
# serf.DefaultConfig().UserEventSizeLimit: name + encoded event, before serf's own framing.
USER_EVENT_SIZE_LIMIT = 512
# Consul's userEventMaxVersion.
USER_EVENT_VERSION = 1


class EventError(ValueError):
    """The event cannot be fired; the message is Consul's."""


@dataclass(frozen=True)
class UserEvent:
    id: str
    name: str
    payload: bytes | None = None
    node_filter: str = ""
    service_filter: str = ""
    tag_filter: str = ""
    version: int = USER_EVENT_VERSION
    ltime: int = 0

    def to_json(self) -> dict[str, Any]:
        """The JSON shape of Consul's agent.UserEvent (Payload is base64, null when absent)."""
        return {
            "ID": self.id,
            "Name": self.name,
            "Payload": base64.b64encode(self.payload).decode() if self.payload is not None else None,
            "NodeFilter": self.node_filter,
            "ServiceFilter": self.service_filter,
            "TagFilter": self.tag_filter,
            "Version": self.version,
            "LTime": self.ltime,
        }

    def encode(self) -> bytes:
        """The message serf would carry (Consul's msgpack codec names); used for the size limit."""
        body: dict[str, Any] = {"ID": self.id, "n": self.name, "v": self.version}
        if self.payload:
            body["p"] = self.payload
        for key, value in (("nf", self.node_filter), ("sf", self.service_filter), ("tf", self.tag_filter)):
            if value:
                body[key] = value
        return bytes(msgpack.packb(body, use_bin_type=True))


def uuid_to_uint64(event_id: str) -> int:
    """Consul's blocking index for an event: the two 64-bit halves of its UUID, XORed."""
    lower = event_id[0:8] + event_id[9:13] + event_id[14:18]
    upper = event_id[19:23] + event_id[24:36]
    return int(lower, 16) ^ int(upper, 16)


def _compile(kind: str, pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise EventError(f"Invalid {kind} filter: {exc}") from None


def new_event(
    name: str, payload: bytes | None, node_filter: str = "", service_filter: str = "", tag_filter: str = ""
) -> UserEvent:
    """Validate the parameters as Consul's validateUserEventParams does and mint the event."""
    if not name:
        raise EventError("User event missing name")
    if tag_filter and not service_filter:
        raise EventError("Cannot provide tag filter without service filter")
    for kind, pattern in (("node", node_filter), ("service", service_filter), ("tag", tag_filter)):
        if pattern:
            _compile(kind, pattern)
    event = UserEvent(
        id=str(uuid.uuid4()),
        name=name,
        payload=payload or None,
        node_filter=node_filter,
        service_filter=service_filter,
        tag_filter=tag_filter,
    )
    size = len(name) + len(event.encode())
    if size > USER_EVENT_SIZE_LIMIT:
        raise EventError(f"user event exceeds configured limit of {USER_EVENT_SIZE_LIMIT} bytes before encoding")
    return event


def matches(event: UserEvent, node_name: str, services: Iterable[tuple[str, Iterable[str]]]) -> bool:
    """Whether this agent (its node name and local services' (name, tags)) passes the filters.

    Go's regexp MatchString is an unanchored search, hence `re.search`.
    """
    if event.node_filter and not re.search(event.node_filter, node_name):
        return False
    if event.service_filter:
        service_re = re.compile(event.service_filter)
        tag_re = re.compile(event.tag_filter) if event.tag_filter else None
        for name, tags in services:
            if not service_re.search(name):
                continue
            if tag_re is None or any(tag_re.search(t) for t in tags):
                return True
        return False
    return True


class EventLog:
    """This agent's last `EVENT_BUFFER_SIZE` events, oldest first, with change notification.

    Single event loop only: `ingest` and `wait_changed` must be called from the agent's loop.
    """

    def __init__(self, size: int = EVENT_BUFFER_SIZE) -> None:
        self._events: deque[UserEvent] = deque(maxlen=size)
        # serf starts its event clock at 1 and stamps each event with the current time.
        self._ltime = 1
        self._changed: asyncio.Event | None = None

    def ingest(self, event: UserEvent) -> UserEvent:
        """Record a received event, stamping its Lamport time, and wake the waiters."""
        stamped = replace(event, ltime=self._ltime)
        self._ltime += 1
        self._events.append(stamped)
        if self._changed is not None:
            self._changed.set()
            self._changed = None
        return stamped

    def list(self, name: str = "") -> list[UserEvent]:
        return [e for e in self._events if not name or e.name == name]

    @staticmethod
    def index_of(events: list[UserEvent]) -> int:
        # Consul answers 1 for an empty list so that a watch does not spin on index 0.
        return uuid_to_uint64(events[-1].id) if events else 1

    async def wait_changed(self, timeout_s: float) -> bool:
        """Wait until the next event arrives or the timeout passes; True if one arrived."""
        if self._changed is None:
            self._changed = asyncio.Event()
        changed = self._changed
        try:
            await asyncio.wait_for(changed.wait(), timeout_s)
            return True
        except TimeoutError:
            return False
