"""DNS answers for prepared queries: `<name>.query[.<dc>].<domain>` and `_<name>._tcp.query...`.

Owns the I/O half of a question `dns.answer.Resolver` marked with `Answer.prepared`: executing
the query through `server.prepared_query.execute` (the same execution, failover included, as
`/v1/query/:name/execute`; on client agents through their server), then answering from the
instances it returned with a `Resolver` for the datacenter that answered, so SRV targets name
`<node>.node.<that dc>.<domain>`. The TTL is the query's `DNS.TTL` when set, else the agent's
`service_ttl` for the query's service, as Consul. `Near` sorting uses this agent's node for
`_agent` and the client's address for `_ip`. An unknown query, or a datacenter with no path, is
NXDOMAIN; any other failure is raised (`RPCError`: SERVFAIL).

ACLs on: the instances answered are those the query's own token may see, else the DNS token's
(`visibility`, given the executed query; Consul's PreparedQuery.Execute filter). An execution
that came back over RPC was filtered by the server that ran it.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Any

from proconsul.config import RuntimeConfig
from proconsul.dns.answer import Answer, Question, Resolver, Visibility, service_ttl
from proconsul.dns.remote import NO_DC_PATH
from proconsul.durations import parse_duration
from proconsul.rpc_api import NoPathToDatacenter, QueryOptions, RPCError
from proconsul.server import prepared_query as executor


async def answer_prepared(
    server: Any,
    cfg: RuntimeConfig,
    q: Question,
    marked: Answer,
    rng: random.Random,
    now: float,
    max_groups: int = 0,
    agent_node: str = "",
    source_ip: str = "",
    visibility: Callable[[dict[str, Any]], Awaitable[Visibility | None]] | None = None,
) -> Answer:
    """Execute the query `marked.prepared` names and answer `q` from its result."""
    assert marked.prepared is not None
    dc, name = marked.prepared
    opts = QueryOptions(allow_stale=cfg.dns_config.allow_stale, datacenter="" if dc == cfg.datacenter else dc)
    try:
        execution = await executor.execute(
            server, name, opts, cfg.datacenter, rng, agent_node=agent_node, source_ip=source_ip
        )
    except executor.QueryNotFound:
        return marked
    except RPCError as exc:
        if isinstance(exc, NoPathToDatacenter) or str(exc) == NO_DC_PATH:
            return marked
        raise
    ttl_text = execution.query["DNS"]["TTL"]
    if ttl_text:
        ttl = max(0, min(int(parse_duration(ttl_text)), 0x7FFFFFFF))
    else:
        ttl = service_ttl(cfg, execution.query["Service"]["Service"])
    instances = execution.instances
    visible = await visibility(execution.query) if visibility is not None else None
    if visible is not None:
        instances = [i for i in instances if visible.allows(i[0].node, i[1].service)]
    resolver = Resolver(cfg, execution.datacenter, rng, now, None, max_groups)
    return resolver.prepared_answer(q, instances, ttl)
