"""`/v1/operator/keyring`: list (GET), install (POST), use (PUT) and remove (DELETE) gossip keys.

Thin HTTP over the cluster-wide keyring operation (``proconsul.serf.keyring``: on a server the
WAN pool, the LAN pool and every other datacenter's LAN pool; a client agent asks a server):
every member of each pool is asked and the answers come back as Consul's per-pool
``KeyringResponse`` list (``WAN``, ``Datacenter``, ``Segment``, ``Messages``, ``Keys``,
``PrimaryKeys``, ``NumNodes``).
When a member reports failure or does not answer, the answer is a 500 whose text lists the pool
error and each member's message, as Consul's ``keyringErrorsOrNil`` (a go-multierror) words it.
``?relay-factor`` (0-5) and ``?local-only`` (GET only: this datacenter's LAN pool alone) are
validated as Consul does; relaying is not needed on one host's loopback-sized pools and is not
done.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from proconsul.gossip.keyring import KeyringError
from proconsul.http.appkeys import AGENT
from proconsul.http.common import HTTPError, bad_request, get_key, json_response, read_json


def _pool_name(entry: dict[str, Any]) -> str:
    return "WAN" if entry["WAN"] else f"{entry['Datacenter']} (LAN)"


def keyring_errors(entries: list[dict[str, Any]]) -> str:
    """go-multierror's text for the pools that reported an error ('' when none did)."""
    errors: list[str] = []
    for entry in entries:
        if entry.get("Error"):
            errors.append(f"{_pool_name(entry)} error: {entry['Error']}")
            errors.extend(f"{name}: {msg}" for name, msg in sorted(entry["Messages"].items()))
    if not errors:
        return ""
    head = "1 error occurred:" if len(errors) == 1 else f"{len(errors)} errors occurred:"
    return head + "\n" + "".join(f"\t* {e}\n" for e in errors) + "\n"


def _check_params(request: web.Request) -> None:
    relay = request.query.get("relay-factor", "")
    if relay:
        try:
            n = int(relay)
        except ValueError:
            raise bad_request(f"Error parsing relay factor: strconv.Atoi: parsing {relay!r}: invalid syntax") from None
        if not 0 <= n <= 5:
            raise bad_request("Invalid relay-factor: Relay factor must be in range: [0, 5]")
    local_only = request.query.get("local-only", "")
    if local_only:
        if local_only.lower() not in ("1", "t", "true", "0", "f", "false"):
            raise bad_request(f"Error parsing local-only: strconv.ParseBool: parsing {local_only!r}: invalid syntax")
        if local_only.lower() in ("1", "t", "true") and request.method != "GET":
            raise bad_request("Invalid use of local-only: local-only can only be set for list requests")


async def _run(request: web.Request, op: str, key: str = "") -> list[dict[str, Any]]:
    agent = request.app[AGENT]
    local_only = request.query.get("local-only", "").lower() in ("1", "t", "true")
    try:
        return list(await agent.keyring_ops.run(op, key, local_only=local_only))
    except KeyringError as exc:
        raise bad_request(str(exc)) from None


def _raise_errors(entries: list[dict[str, Any]]) -> None:
    text = keyring_errors(entries)
    if text:
        raise HTTPError(500, text)


async def keyring_list(request: web.Request) -> web.Response:
    _check_params(request)
    entries = await _run(request, "list")
    _raise_errors(entries)
    for entry in entries:
        entry.pop("Error", None)
    return json_response(request, entries)


async def _change(request: web.Request, op: str) -> web.Response:
    _check_params(request)
    body = await read_json(request)
    if not isinstance(body, dict):
        raise bad_request("Request decode failed: body must be a JSON object")
    key = get_key(body, "Key")
    if not isinstance(key, str) or not key:
        raise bad_request("Request decode failed: Key is required")
    _raise_errors(await _run(request, op, key))
    return web.Response(status=200)


async def keyring_install(request: web.Request) -> web.Response:
    return await _change(request, "install")


async def keyring_use(request: web.Request) -> web.Response:
    return await _change(request, "use")


async def keyring_remove(request: web.Request) -> web.Response:
    return await _change(request, "remove")


def routes() -> list[web.RouteDef]:
    return [
        web.get("/v1/operator/keyring", keyring_list),
        web.post("/v1/operator/keyring", keyring_install),
        web.put("/v1/operator/keyring", keyring_use),
        web.delete("/v1/operator/keyring", keyring_remove),
    ]
