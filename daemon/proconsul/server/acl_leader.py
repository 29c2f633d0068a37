"""The leader's ACL duties: create the built-in records and the initial management token.

Also owns the bootstrap reset file (`<data_dir>/acl-bootstrap-reset`), which Consul's leader reads
when a bootstrap arrives after the first one.

Owns Consul's ACL initialisation on a server that leads with ACLs enabled: the `global-management`
policy, the anonymous token and, when `acl.tokens.initial_management` is set, a management token
with that SecretID (which also counts as the bootstrap). It checks the replicated state every few
seconds and proposes one `init` command when something is missing, so a new leader (or a restored
snapshot without them) gets them back.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import uuid
from collections.abc import Callable

from proconsul.acl.records import ANONYMOUS_ACCESSOR, GLOBAL_MANAGEMENT_ID, ACLToken, Link
from proconsul.server.rpc import Server
from proconsul.state.commands import ACLOp, ACLOpKind

logger = logging.getLogger(__name__)


def needs_init(server: Server, initial_management: str) -> bool:
    store = server.store
    if GLOBAL_MANAGEMENT_ID not in store.acl_policies or ANONYMOUS_ACCESSOR not in store.acl_tokens:
        return True
    return bool(initial_management) and initial_management not in store.acl_secrets


async def init_once(server: Server, initial_management: str) -> None:
    token = None
    if initial_management and initial_management not in server.store.acl_secrets:
        created = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
        token = ACLToken(str(uuid.uuid4()), initial_management, "Initial Management Token",
                         (Link(GLOBAL_MANAGEMENT_ID),), create_time=created).to_wire()
    await server.write(ACLOp(ACLOpKind.INIT, token))
    logger.info("acl: initialised the ACL system%s", " with the initial management token" if token else "")


async def init_loop(server: Server, is_leader: Callable[[], bool], initial_management: Callable[[], str],
                    interval_s: float = 2.0) -> None:
    while True:
        if is_leader() and server.consensus.ready_for_reads() and needs_init(server, initial_management()):
            try:
                await init_once(server, initial_management())
            except Exception as exc:  # lost leadership, no quorum: the next pass retries
                logger.warning("acl: initialisation failed, will retry: %s", exc)
        await asyncio.sleep(interval_s)


RESET_FILE = "acl-bootstrap-reset"


class BootstrapResetFile:
    """`<data_dir>/acl-bootstrap-reset`: the reset index an operator writes to bootstrap again."""

    def __init__(self, data_dir: str) -> None:
        self.path = os.path.join(data_dir, RESET_FILE)

    def read(self) -> int:
        try:
            with open(self.path) as f:
                return int(f.read().strip() or "0")
        except (OSError, ValueError):
            return 0

    def remove(self) -> None:
        try:
            os.remove(self.path)
            logger.info("acl: bootstrapped again with the reset index; removed %s", self.path)
        except OSError:
            pass
