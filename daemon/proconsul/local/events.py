"""User events: Consul's `consul event` / `/v1/event/*`, delivered to every agent over LAN gossip.

Owns what an event is (ID, Name, Payload, node/service/tag regex filters, Version, LTime), the
checks Consul makes before firing one (name present, a tag filter needs a service filter, filters
compile, serf's 512-byte user-event limit on the gossip name plus the encoded message), whether
an event's filters select this agent, the buffer of the last 256 events this agent received and
the change notification `/v1/event/list` blocks on. The blocking index of the list is derived
from the last event's ID (`uuid_to_uint64`), as Consul does.

Delivery (:class:`AgentEvents`), as Consul routes it (agent/user_event.go, Internal.EventFire):
the agent validates and encodes the event, then asks a server to fire it (`Internal.EventFire`:
in-process on servers and dev agents, over RPC to a gossip-learned server on client agents). The
server broadcasts it as the serf user event `consul:event:<name>` in the LAN pool. Every agent,
the firing one included, receives it exactly once from gossip (Lamport time and de-duplication
are the gossip core's), applies the filters against its own node name and local services, and
ingests it with the gossip Lamport time as LTime. A request for another datacenter (`?dc=`) is
forwarded by a server of ours to a server of that datacenter through the WAN router, which
fires it there ("No path to datacenter" when the WAN pool does not know it).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import msgpack

from proconsul import go_regexp
from proconsul.rpc_api import CALLER_TOKEN, DatacenterRouter, HandlerRegistry, NoPathToDatacenter, RPCError
from proconsul.tasks import wait_event

# Consul's agent keeps this many recent events (agent.eventBuf).
EVENT_BUFFER_SIZE = 256
# serf.DefaultConfig().UserEventSizeLimit: name + encoded event, before serf's own framing.
USER_EVENT_SIZE_LIMIT = 512
# Consul's userEventMaxVersion.
USER_EVENT_VERSION = 1
# Consul prefixes the serf event name of user events (userEventName); other names are not ours.
GOSSIP_NAME_PREFIX = "consul:event:"
# The RPC a server answers by broadcasting an encoded event in its LAN pool.
FIRE_RPC = "Internal.EventFire"

logger = logging.getLogger(__name__)


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

    @classmethod
    def decode(cls, data: bytes, ltime: int) -> UserEvent:
        """The event a gossip message carries, stamped with the gossip Lamport time.

        Raises:
            EventError: the message is not an encoded user event (a peer's fault).
        """
        try:
            body = msgpack.unpackb(data, raw=False)
        except (ValueError, msgpack.UnpackException) as exc:
            raise EventError(f"undecodable user event: {exc}") from None
        if not isinstance(body, dict) or not isinstance(body.get("ID"), str) or not isinstance(body.get("n"), str):
            raise EventError("user event without ID or name")
        payload = body.get("p")
        filters = [body.get(k) or "" for k in ("nf", "sf", "tf")]
        if (payload is not None and not isinstance(payload, bytes)) or not all(isinstance(f, str) for f in filters):
            raise EventError("user event with malformed fields")
        version = body.get("v", USER_EVENT_VERSION)
        return cls(
            id=body["ID"],
            name=body["n"],
            payload=payload or None,
            node_filter=filters[0],
            service_filter=filters[1],
            tag_filter=filters[2],
            version=version if isinstance(version, int) else USER_EVENT_VERSION,
            ltime=ltime,
        )


def uuid_to_uint64(event_id: str) -> int:
    """Consul's blocking index for an event: the two 64-bit halves of its UUID, XORed."""
    lower = event_id[0:8] + event_id[9:13] + event_id[14:18]
    upper = event_id[19:23] + event_id[24:36]
    return int(lower, 16) ^ int(upper, 16)


def _compile(kind: str, pattern: str) -> go_regexp.Pattern:
    try:
        return go_regexp.compile(pattern)
    except go_regexp.RegexpError as exc:
        raise EventError(f"Invalid {kind} filter: error parsing regexp: {exc.detail}") from None


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
    # serf counts the name it gossips ("consul:event:" + name) plus the encoded event.
    size = len((GOSSIP_NAME_PREFIX + name).encode()) + len(event.encode())
    if size > USER_EVENT_SIZE_LIMIT:
        raise EventError(f"user event exceeds configured limit of {USER_EVENT_SIZE_LIMIT} bytes before encoding")
    return event


def matches(event: UserEvent, node_name: str, services: Iterable[tuple[str, Iterable[str]]]) -> bool:
    """Whether this agent (its node name and local services' (name, tags)) passes the filters.

    Go's regexp MatchString is an unanchored search, hence `search`. Patterns run on RE2, so the
    cost is linear in the names; go_regexp.RegexpError if a pattern does not compile.
    """
    node_re = go_regexp.compile(event.node_filter) if event.node_filter else None
    service_re = go_regexp.compile(event.service_filter) if event.service_filter else None
    tag_re = go_regexp.compile(event.tag_filter) if event.tag_filter else None
    if node_re is not None and not node_re.search(node_name):
        return False
    if service_re is not None:
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
        """Record a received event and wake the waiters.

        An event that carries no Lamport time (never went through gossip) is stamped with this
        log's own clock, which always stays past every time it has seen.
        """
        stamped = event if event.ltime else replace(event, ltime=self._ltime)
        self._ltime = max(self._ltime, stamped.ltime) + 1
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
        return await wait_event(changed, timeout_s)


# Consul's remote-exec event; remote exec stays disabled (disable_remote_exec defaults to true),
# so such events are dropped on receipt, as Consul's agent does when it is disabled.
REMOTE_EXEC_NAME = "_rexec"


def local_services(services: Mapping[str, Any]) -> list[tuple[str, tuple[str, ...]]]:
    """This agent's services (ID -> local service record, as `LocalState.services` holds them)
    as (ID, tags) and, when it differs, (name, tags), sorted by ID."""
    out: list[tuple[str, tuple[str, ...]]] = []
    for sid, svc in sorted(services.items()):
        d = svc.definition
        out.append((sid, tuple(d.tags)))
        if d.name != sid:
            out.append((d.name, tuple(d.tags)))
    return out


class AgentEvents:
    """One agent's user events: fire through a server, receive from the LAN pool, keep the log.

    `on_gossip` runs on the agent's loop (the gossip driver calls it synchronously), so the log
    needs no locking.

    Args:
        datacenter, node_name: ours (an event's default datacenter; the node filter's subject).
        services: this agent's services as they are now (the service and tag filters' subject).
        broadcast: sends a user event (name, payload) in the LAN pool (servers).
        router: a server's WAN router, for events fired in another datacenter.
        forward: a client agent's way to send ``Internal.EventFire`` to one of its servers,
            not resent once sent (None on servers, which answer it: `handle_fire_rpc`).
    """

    def __init__(
        self,
        datacenter: str,
        node_name: str,
        services: Callable[[], Mapping[str, Any]],
        broadcast: Callable[[str, bytes], None],
        router: DatacenterRouter | None = None,
        forward: Callable[[str, Any], Awaitable[Any]] | None = None,
    ) -> None:
        self.datacenter = datacenter
        self.node_name = node_name
        self._services = services
        self._broadcast = broadcast
        self.router = router
        self.forward = forward
        self.log = EventLog()

    def register_rpc(self, registry: HandlerRegistry) -> None:
        """Servers and dev agents answer Internal.EventFire (for client agents and other DCs)."""
        registry.register(FIRE_RPC, self.handle_fire_rpc)

    async def fire(self, event: UserEvent, dc: str = "") -> None:
        """Have a server of `dc` (default: ours) broadcast `event` in its LAN pool."""
        body = {"Datacenter": dc or self.datacenter, "Name": event.name, "Payload": event.encode()}
        token = CALLER_TOKEN.get()
        if token:
            body["token"] = token  # servers with ACLs on check event:write on the name
        # A client agent sends the RPC to one of our servers (any: gossip does the rest, and a
        # server forwards another datacenter's); a server answers it in process.
        if self.forward is not None:
            await self.forward(FIRE_RPC, body)
        else:
            await self.handle_fire_rpc(body)

    async def handle_fire_rpc(self, body: Any) -> bool:
        """Internal.EventFire on a server: broadcast the encoded event as `consul:event:<name>`,
        or forward it to a server of the datacenter it names (over the WAN router)."""
        if not isinstance(body, dict) or not isinstance(body.get("Name"), str) or not isinstance(
            body.get("Payload"), bytes
        ):
            raise RPCError("Internal.EventFire: malformed request")
        dc = body.get("Datacenter") or self.datacenter
        if dc != self.datacenter:
            if self.router is None:
                raise NoPathToDatacenter(dc)
            # Any server there will do (Consul sends it AllowStale); not resent once sent.
            await self.router.call(dc, FIRE_RPC, dict(body, Datacenter=dc), 30.0, retry_sent=False)
            return True
        gossip_name = GOSSIP_NAME_PREFIX + body["Name"]
        if len(gossip_name.encode()) + len(body["Payload"]) > USER_EVENT_SIZE_LIMIT:
            raise RPCError(f"user event exceeds configured limit of {USER_EVENT_SIZE_LIMIT} bytes before encoding")
        self._broadcast(gossip_name, body["Payload"])
        return True

    def on_gossip(self, received: Any) -> None:
        """A user event from the LAN pool (a `gossip.core.UserEventReceived`): filter and ingest."""
        if not received.name.startswith(GOSSIP_NAME_PREFIX):
            return  # not a Consul user event
        try:
            event = UserEvent.decode(received.payload, received.ltime)
        except EventError as exc:
            logger.warning("agent: failed to decode event %r: %s", received.name, exc)
            return
        if event.version > USER_EVENT_VERSION:
            logger.warning("agent: event version %d may have unsupported features (%s)", event.version, event.name)
        try:
            selected = matches(event, self.node_name, local_services(self._services()))
        except go_regexp.RegexpError as exc:
            logger.error("agent: failed to parse the filters of event %r: %s", event.name, exc.detail)
            return
        if not selected:
            return
        if event.name == REMOTE_EXEC_NAME:
            logger.info("agent: ignoring remote exec event (%s), disabled", event.id)
            return
        logger.debug("agent: new event: %s (%s)", event.name, event.id)
        self.log.ingest(event)
