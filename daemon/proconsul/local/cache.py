"""The agent cache: reads this agent answers itself for `?cached` requests (Consul's agent/cache).

Owns the cache entries and their lifetimes, nothing about HTTP (`http/cached.py` maps requests and
headers onto it). An entry is keyed by its type, datacenter, ACL token and the type's request key,
so an answer fetched with one token never answers another, and one for one datacenter never
answers another. Two kinds of type, as Consul's:

- **background refresh** (`refresh=True`, blocking): the first get fetches, then the entry keeps a
  blocking query running against the servers (its index as `min_index`, `query_timeout_s` as the
  wait), so every later get is a hit on a fresh value and blocking gets (`min_index`) wait on that
  one query; the age is 0 while the servers answer, else the time since contact was lost.
  `Cache-Control` does not apply.
- **simple** (`refresh=False`, not blocking): the value is kept as fetched; `max_age_s` or
  `must_revalidate` force a refetch, and `stale_if_error_s` lets a refetch that fails fall back
  to the kept value when it is no older than that. The age is the time since the fetch.

Concurrent gets of one entry share one fetch. A failed background fetch is retried at once three
times, then after 2, 4, ... up to 60 s plus a random stagger; an entry whose first fetch failed
keeps no background query (Consul's does): the next get fetches again. An entry nobody asked for during
its type's `last_get_ttl_s` (3 days, as Consul) is dropped with its background query by `expire`,
which `run_expiry` calls every `EXPIRY_INTERVAL_S`.

Time comes from the injected monotonic `clock`, back-off waits from the injected `sleep`, so the
tests drive every rule with a fake clock and a scripted fetcher. Fetches run in tasks this cache
owns (a client that hangs up does not cancel a fetch others wait on); `close` ends them all.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from proconsul.metrics import Metrics
from proconsul.rpc_api import QueryMeta
from proconsul.tasks import cancel_and_wait

logger = logging.getLogger(__name__)

# One fetch from the servers: (min_index, max_wait_s) -> the answer with its metadata. Blocking
# types are given their entry's index and the type's query timeout; simple types (0, 0.0).
Fetch = Callable[[int, float], Awaitable[tuple[QueryMeta, Any]]]

# Failures retried without waiting before the back-off starts, and its ceiling (Consul's
# CacheRefreshBackoffMin and CacheRefreshMaxWait).
BACKOFF_FREE_ATTEMPTS = 3
BACKOFF_MAX_S = 60.0
# A background query that has been waiting this long is blocking as it should, so the servers are
# reachable again: the entry's age goes back to 0 without waiting for a change (Consul's value:
# just over the 30 s keepalive that would have broken a dead connection).
CONNECTED_AFTER_S = 31.0
# How often run_expiry looks for entries past their TTL (a TTL is days; a minute late is nothing).
EXPIRY_INTERVAL_S = 60.0
DEFAULT_LAST_GET_TTL_S = 72 * 3600.0


@dataclass(frozen=True, slots=True)
class CacheType:
    """What is cached and how (Consul's RegisterOptions)."""

    name: str  # also the metrics name part: consul.cache.<name>.hit
    refresh: bool  # keep a background blocking query per entry
    blocking: bool  # the fetch understands min_index (and a get may block on it)
    query_timeout_s: float = 600.0  # the background query's wait (Consul: 10 min)
    last_get_ttl_s: float = DEFAULT_LAST_GET_TTL_S  # unused this long -> dropped


# The types the HTTP API caches (Consul's agent caching column of each endpoint's table).
HEALTH_SERVICES = CacheType("health-services", refresh=True, blocking=True)
CATALOG_SERVICES = CacheType("catalog-services", refresh=True, blocking=True)
CATALOG_SERVICE_NODES = CacheType("catalog-service-nodes", refresh=True, blocking=True)
PREPARED_QUERY = CacheType("prepared-query", refresh=False, blocking=False)
TYPES = (HEALTH_SERVICES, CATALOG_SERVICES, CATALOG_SERVICE_NODES, PREPARED_QUERY)


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """One get: which entry (key, token, datacenter) and what the caller accepts."""

    key: str  # the type's request key: every argument that shapes the answer, canonical
    token: str = ""
    datacenter: str = ""
    min_index: int = 0  # blocking types: wait for an index above this
    timeout_s: float = 0.0  # how long a blocking get waits (0: no bound)
    max_age_s: float | None = None  # simple types: refetch when older
    must_revalidate: bool = False  # simple types: refetch once whatever the age
    stale_if_error_s: float | None = None  # simple types: a failed refetch may answer this old


@dataclass(frozen=True, slots=True)
class CacheResult:
    value: Any  # shared with the entry and other readers: never mutate it
    meta: QueryMeta  # the fetch's metadata with the entry's index
    hit: bool  # answered from the cache without waiting for a fetch
    age_s: float  # see the module docstring; meaningful for hits


@dataclass(eq=False)
class _Entry:
    ctype: CacheType
    fetch: Fetch
    waiter: asyncio.Future[None]  # resolved when the running (or next) fetch ends
    last_get: float
    valid: bool = False
    value: Any = None
    meta: QueryMeta | None = None
    index: int = 0
    error: BaseException | None = None  # newer than the value when both are set
    fetched_at: float = 0.0
    lost_contact_at: float | None = None  # refresh types: first failure since the last success
    fetch_started_at: float = 0.0
    fetching: bool = False
    attempt: int = 0  # failures in a row (back-off)
    refresher: asyncio.Task[None] | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


class AgentCache:
    """The agent's cache of server reads. One per agent; every entry lives on the event loop."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.clock = clock
        self.sleep = sleep
        self.rng = rng or random.Random()
        self._entries: dict[tuple[str, str, str, str], _Entry] = {}
        self._closed = False
        self._expiry: asyncio.Task[None] | None = None
        m = metrics or Metrics()
        self._m_entries = m.gauge("cache", "entries_count", help="entries in the agent cache")
        self._m_fetch_success = m.counter("cache", "fetch_success", help="agent cache fetches that succeeded")
        self._m_fetch_error = m.counter("cache", "fetch_error", help="agent cache fetches that failed")
        self._m_evict = m.counter("cache", "evict_expired", help="agent cache entries dropped after their TTL")
        self._m_type = {
            t.name: {what: m.counter("cache", t.name, what, help=f"agent cache {what} for {t.name}")
                     for what in ("hit", "miss_new", "miss_block")}
            for t in TYPES
        }

    def __len__(self) -> int:
        return len(self._entries)

    # ------------------------------------------------------------------------------- reading

    async def get(self, ctype: CacheType, info: RequestInfo, fetch: Fetch) -> CacheResult:
        """The answer for `info`, from the cache when it satisfies the request, else fetched.

        `fetch` is how this request is fetched; an entry made by this get keeps it for its
        background refresh (every request with the same key fetches the same thing). A fetch
        error is raised when no acceptable value is kept; a blocking get that times out answers
        the value it has (not a hit), as a blocking query does.
        """
        key = (ctype.name, info.datacenter, info.token, info.key)
        first = True
        must_revalidate = info.must_revalidate
        deadline: float | None = None
        while True:
            if self._closed:  # also when close() ended the fetch this get waited for
                raise RuntimeError("the agent cache is closed")
            now = self.clock()
            entry = self._entries.get(key)
            if entry is not None:
                entry.last_get = now
                if not first and entry.error is not None:
                    # The fetch this get waited for failed: its error, unless stale-if-error lets
                    # the kept value answer (a hit, its Age telling how old it is). One attempt
                    # per get, not a retry loop until ?wait runs out.
                    if self._stale_allowed(entry, info, now):
                        return self._result(entry, hit=True, now=now)
                    raise entry.error
                if self._usable(entry, info, must_revalidate, now):
                    if first:
                        self._count(ctype, "hit")
                    return self._result(entry, hit=first, now=now)
            if first:
                self._count(ctype, "miss_block" if info.min_index else "miss_new")
                if ctype.blocking and info.min_index and info.timeout_s > 0:
                    deadline = now + info.timeout_s
            waiter = self._fetch(key, entry, ctype, fetch)
            first = False
            must_revalidate = False  # the fetch just made is the revalidation
            timeout = None if deadline is None else max(0.0, deadline - self.clock())
            done, _ = await asyncio.wait({waiter}, timeout=timeout)
            if not done:
                # ?wait ran out: the last value there is, as a blocking query answers at its timeout.
                entry = self._entries.get(key)
                if entry is None or not entry.valid:
                    if entry is not None and entry.error is not None:
                        raise entry.error
                    deadline = None  # nothing to answer yet: wait for the fetch that is running
                    continue
                return self._result(entry, hit=False, now=self.clock())

    def _usable(self, entry: _Entry, info: RequestInfo, must_revalidate: bool, now: float) -> bool:
        """Consul's getEntryLocked: may this entry answer this request as it stands?"""
        if not entry.valid:
            return False
        ctype = entry.ctype
        if ctype.blocking and info.min_index and info.min_index >= entry.index:
            return False  # the caller has this version: wait for the next
        if not ctype.refresh:
            if info.max_age_s is not None and now - entry.fetched_at > info.max_age_s:
                return False
            if must_revalidate:
                return False
        return True

    def _stale_allowed(self, entry: _Entry, info: RequestInfo, now: float) -> bool:
        """`stale-if-error`: a simple type's refetch failed; the kept value may still answer."""
        return (entry.valid and not entry.ctype.refresh and info.stale_if_error_s is not None
                and now - entry.fetched_at <= info.stale_if_error_s)

    def _result(self, entry: _Entry, hit: bool, now: float) -> CacheResult:
        assert entry.meta is not None
        meta = entry.meta
        if meta.index != entry.index:
            meta = QueryMeta(entry.index, meta.known_leader, meta.last_contact_ms, meta.consistency)
        return CacheResult(entry.value, meta, hit, self._age(entry, now))

    def _age(self, entry: _Entry, now: float) -> float:
        if not entry.ctype.refresh:
            return max(0.0, now - entry.fetched_at)
        if entry.lost_contact_at is None:
            return 0.0
        # (One fetch at a time: a running one started after the failure that lost contact.)
        if (entry.fetching and entry.index > 0 and entry.ctype.query_timeout_s > CONNECTED_AFTER_S
                and now - entry.fetch_started_at >= CONNECTED_AFTER_S):
            # The query has been blocking for longer than a dead connection survives: the
            # servers are back and the value is current until they say otherwise.
            entry.lost_contact_at = None
            return 0.0
        return max(0.0, now - entry.lost_contact_at)

    def _count(self, ctype: CacheType, what: str) -> None:
        family = self._m_type.get(ctype.name)
        if family is not None:
            family[what].incr()

    # ------------------------------------------------------------------------------ fetching

    def _fetch(self, key: tuple[str, str, str, str], entry: _Entry | None, ctype: CacheType,
               fetch: Fetch) -> asyncio.Future[None]:
        """Start a fetch for the entry (made now if missing) unless one runs; its waiter."""
        loop = asyncio.get_running_loop()
        if entry is None:
            entry = _Entry(ctype, fetch, loop.create_future(), last_get=self.clock())
            self._entries[key] = entry
            self._m_entries.set(len(self._entries))
        if entry.fetching:
            return entry.waiter
        self._begin(entry)
        if ctype.refresh and (entry.refresher is None or entry.refresher.done()):
            entry.refresher = self._spawn(entry, self._refresh_loop(key, entry))
        else:
            self._spawn(entry, self._run_fetch(entry))
        return entry.waiter

    def _spawn(self, entry: _Entry, work: Awaitable[None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        entry.tasks.add(task)
        task.add_done_callback(entry.tasks.discard)
        return task

    def _begin(self, entry: _Entry) -> None:
        # Marked before the task runs, so that gets arriving meanwhile share this fetch.
        entry.fetching = True
        entry.fetch_started_at = self.clock()

    async def _run_fetch(self, entry: _Entry) -> None:
        """One fetch of a begun entry: update it, then wake everyone waiting on it."""
        ctype = entry.ctype
        min_index, wait_s = (entry.index, ctype.query_timeout_s) if ctype.blocking else (0, 0.0)
        try:
            meta, value = await entry.fetch(min_index, wait_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._m_fetch_error.incr()
            entry.error = exc.with_traceback(None)  # re-raised to many callers: keep no frames
            entry.attempt += 1
            if ctype.refresh and entry.lost_contact_at is None:
                entry.lost_contact_at = self.clock()
            logger.debug("cache: %s fetch failed (attempt %d): %s", ctype.name, entry.attempt, exc)
        else:
            self._m_fetch_success.incr()
            entry.error = None
            entry.value, entry.meta, entry.valid = value, meta, True
            # An index below 1 would make the next background query return at once, for ever.
            entry.index = max(1, meta.index)
            entry.fetched_at = self.clock()
            entry.attempt = 0 if meta.index > 0 else entry.attempt + 1
            if ctype.refresh:
                entry.lost_contact_at = None
        finally:
            entry.fetching = False
            waiter, entry.waiter = entry.waiter, asyncio.get_running_loop().create_future()
            waiter.set_result(None)

    async def _refresh_loop(self, key: tuple[str, str, str, str], entry: _Entry) -> None:
        """A background refresh type's entry: one blocking query after another until dropped."""
        await self._run_fetch(entry)
        while not self._closed and self._entries.get(key) is entry:
            if not entry.valid:
                # Nothing fetched yet (an unknown datacenter, no servers): no background query
                # for a value nobody has; the next get tries again, and refreshes once it succeeds.
                return
            wait = self.backoff(entry.attempt)
            if wait > 0:
                await self.sleep(wait)
                if self._closed or self._entries.get(key) is not entry:
                    return
            if entry.fetching:  # a get started one during the back-off: follow it
                await asyncio.wait({entry.waiter})
                continue
            self._begin(entry)
            await self._run_fetch(entry)

    def backoff(self, failures: int) -> float:
        """Seconds to wait before the next background fetch after `failures` in a row."""
        if failures <= BACKOFF_FREE_ATTEMPTS:
            return 0.0
        shift = failures - BACKOFF_FREE_ATTEMPTS
        wait = BACKOFF_MAX_S if shift >= 31 else min(float(1 << shift), BACKOFF_MAX_S)
        return wait + self.rng.uniform(0.0, wait)

    # ------------------------------------------------------------------------------ lifetime

    def expire(self) -> int:
        """Drop every entry no get has touched for its type's TTL (its background query ends);
        how many were dropped."""
        now = self.clock()
        gone = [k for k, e in self._entries.items() if now - e.last_get > e.ctype.last_get_ttl_s]
        for key in gone:
            entry = self._entries.pop(key)
            for task in list(entry.tasks):
                task.cancel()
            self._m_evict.incr()
        if gone:
            self._m_entries.set(len(self._entries))
        return len(gone)

    async def run_expiry(self, interval_s: float = EXPIRY_INTERVAL_S) -> None:
        while not self._closed:
            await self.sleep(interval_s)
            self.expire()

    def start(self) -> None:
        """Start the expiry loop (owned here; `close` ends it)."""
        if self._expiry is None:
            self._expiry = asyncio.get_running_loop().create_task(self.run_expiry(), name="agent-cache-expiry")

    async def close(self) -> None:
        """End every background query and fetch and forget every entry."""
        self._closed = True
        tasks = [t for e in self._entries.values() for t in e.tasks]
        if self._expiry is not None:
            tasks.append(self._expiry)
        self._entries.clear()
        await cancel_and_wait(tasks)
