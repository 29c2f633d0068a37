"""Prepared queries as the store keeps them: the canonical definition, templates and resolution.

Owns the meaning of a prepared query definition (Consul's `PreparedQuery`: Name, Session, Token,
Template, Service, DNS), its normalised JSON form (every field present, in Consul's order, with
Consul's nulls), the checks Consul's endpoint makes before a definition reaches Raft, and
templates: `name_prefix_match` selection by the longest matching prefix, the optional `Regexp`
(RE2 through `proconsul.go_regexp`, never Python's backtracking `re`), and interpolation of
`${name.full}`, `${name.prefix}`, `${name.suffix}` and `${match(N)}` into every string of the
`Service` block, with `RemoveEmptyTags`.

Resolution (`resolve`) follows Consul's state store: an ID first, then an exact name (static
queries and templates alike), then the template whose name is the longest prefix of the asked
name, names compared in any case (Consul's name and template indexes are lower-cased); a
template is rendered with the asked text as `${name.full}`. Pure functions: no I/O.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from proconsul import go_regexp
from proconsul.durations import parse_duration
from proconsul.structs import canonical_key

TEMPLATE_NAME_PREFIX_MATCH = "name_prefix_match"
# What Consul shows instead of a token the reader may not see (ACLs: see http/query.py).
REDACTED_TOKEN = "<hidden>"


class QueryError(ValueError):
    """A definition Consul's endpoint would refuse; the message is Consul's."""


def is_uuid(text: str) -> bool:
    if len(text) != 36:
        return False
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


# ----------------------------------------------------------------------------- normal form


def _get(obj: Mapping[str, Any], name: str) -> Any:
    """A field looked up case-insensitively, as Go's JSON decoder matches names."""
    wanted = canonical_key(name)
    for k, v in obj.items():
        if canonical_key(str(k)) == wanted:
            return v
    return None


def _obj(value: Any, what: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise QueryError(f"Request decode failed: {what} must be an object")
    return value


def _str(value: Any, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise QueryError(f"Request decode failed: {what} must be a string")
    return value


def _bool(value: Any, what: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise QueryError(f"Request decode failed: {what} must be a boolean")
    return value


def _int(value: Any, what: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise QueryError(f"Request decode failed: {what} must be an integer")
    return value


def _strings(value: Any, what: str) -> list[str] | None:
    """A JSON string list; null (Go's nil slice) stays null."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise QueryError(f"Request decode failed: {what} must be a list of strings")
    return list(value)


def _string_map(value: Any, what: str) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
        raise QueryError(f"Request decode failed: {what} must be a map of strings")
    return {str(k): v for k, v in value.items()}


def normalize(body: Any) -> dict[str, Any]:
    """The canonical definition from a create/update body: {Name, Session, Token, Template,
    Service, DNS}, every field present. Raises QueryError with Consul's reasons."""
    if not isinstance(body, Mapping):
        raise QueryError("Request decode failed: expected a JSON object")
    template = _obj(_get(body, "Template"), "Template")
    service = _obj(_get(body, "Service"), "Service")
    failover = _obj(_get(service, "Failover"), "Service.Failover")
    dns = _obj(_get(body, "DNS"), "DNS")
    targets_raw = _get(failover, "Targets")
    targets: list[dict[str, str]] | None = None
    if targets_raw is not None:
        if not isinstance(targets_raw, list):
            raise QueryError("Request decode failed: Failover.Targets must be a list")
        targets = []
        for t in targets_raw:
            t = _obj(t, "Failover.Targets[]")
            targets.append({
                "Peer": _str(_get(t, "Peer") or _get(t, "PeerName"), "Target.Peer"),
                "Datacenter": _str(_get(t, "Datacenter"), "Target.Datacenter"),
            })
    query = {
        "Name": _str(_get(body, "Name"), "Name"),
        "Session": _str(_get(body, "Session"), "Session"),
        "Token": _str(_get(body, "Token"), "Token"),
        "Template": {
            "Type": _str(_get(template, "Type"), "Template.Type"),
            "Regexp": _str(_get(template, "Regexp"), "Template.Regexp"),
            "RemoveEmptyTags": _bool(_get(template, "RemoveEmptyTags"), "Template.RemoveEmptyTags"),
        },
        "Service": {
            "Service": _str(_get(service, "Service"), "Service.Service"),
            "SamenessGroup": _str(_get(service, "SamenessGroup"), "Service.SamenessGroup"),
            "Failover": {
                "NearestN": _int(_get(failover, "NearestN"), "Failover.NearestN"),
                "Datacenters": _strings(_get(failover, "Datacenters"), "Failover.Datacenters"),
                "Targets": targets,
            },
            "OnlyPassing": _bool(_get(service, "OnlyPassing"), "Service.OnlyPassing"),
            "IgnoreCheckIDs": _strings(_get(service, "IgnoreCheckIDs"), "Service.IgnoreCheckIDs"),
            "Near": _str(_get(service, "Near"), "Service.Near"),
            "Tags": _strings(_get(service, "Tags"), "Service.Tags"),
            "NodeMeta": _string_map(_get(service, "NodeMeta"), "Service.NodeMeta"),
            "ServiceMeta": _string_map(_get(service, "ServiceMeta"), "Service.ServiceMeta"),
            "Peer": _str(_get(service, "Peer"), "Service.Peer"),
            "Connect": _bool(_get(service, "Connect"), "Service.Connect"),
        },
        "DNS": {"TTL": _str(_get(dns, "TTL"), "DNS.TTL")},
    }
    validate(query)
    return query


def validate(query: Mapping[str, Any]) -> None:
    """Consul's endpoint checks (parseQuery and the template compile), in its order."""
    if not query["Name"] and not query["Template"]["Type"] and not query["Session"]:
        raise QueryError("Must be bound to a session")
    if query["Token"] == REDACTED_TOKEN:
        raise QueryError(
            f"Bad Token '{REDACTED_TOKEN}', it looks like a query definition with a redacted token was submitted"
        )
    svc = query["Service"]
    if not svc["Service"]:
        raise QueryError("Must provide a Service name to query")
    failover = svc["Failover"]
    if failover["NearestN"] < 0:
        raise QueryError(f"Bad NearestN '{failover['NearestN']}', must be >= 0")
    if (failover["NearestN"] or failover["Datacenters"]) and failover["Targets"]:
        raise QueryError("Targets cannot be populated with NearestN or Datacenters")
    ttl = query["DNS"]["TTL"]
    if ttl:
        try:
            seconds = parse_duration(ttl)
        except ValueError as exc:
            raise QueryError(f"Bad DNS TTL '{ttl}': {exc}") from None
        if seconds < 0:
            raise QueryError(f"DNS TTL '{ttl}', must be >=0")
    if query["Template"]["Type"]:
        compile_template(query)


def render(query_id: str, query: Mapping[str, Any], create_index: int, modify_index: int) -> dict[str, Any]:
    """A stored query as Consul's JSON (RaftIndex is embedded, so its fields are top level)."""
    return {
        "ID": query_id,
        "Name": query["Name"],
        "Session": query["Session"],
        "Token": query["Token"],
        "Template": copy.deepcopy(dict(query["Template"])),
        "Service": copy.deepcopy(dict(query["Service"])),
        "DNS": dict(query["DNS"]),
        "CreateIndex": create_index,
        "ModifyIndex": modify_index,
    }


# -------------------------------------------------------------------------------- templates


class CompiledTemplate:
    """A template's regexp and its parsed interpolations, ready to render names."""

    def __init__(self, query: Mapping[str, Any]) -> None:
        tmpl = query["Template"]
        if tmpl["Type"] != TEMPLATE_NAME_PREFIX_MATCH:
            raise QueryError(f"Bad Template.Type '{tmpl['Type']}'")
        self.query = query
        self.pattern: go_regexp.Pattern | None = None
        if tmpl["Regexp"]:
            try:
                self.pattern = go_regexp.compile(tmpl["Regexp"])
            except go_regexp.RegexpError as exc:
                raise QueryError(f"Bad Regexp: error parsing regexp: {exc.detail}") from None
        # Parse every string once: an unknown variable is refused at create time, as Consul's
        # compile step refuses it, not discovered at the first execution.
        for text in _strings_in(query["Service"]):
            _parse(text)

    def render(self, name: str) -> dict[str, Any]:
        """The query with `name` (the asked text) interpolated into its Service block."""
        prefix = self.query["Name"]
        suffix = name[len(prefix):] if name.startswith(prefix) else name
        groups: list[str] = []
        if self.pattern is not None:
            m: Any = self.pattern.search(name)
            if m is not None:
                groups = [m.group(i) or "" for i in range(len(m.groups()) + 1)]
        variables = {"name.full": name, "name.prefix": prefix, "name.suffix": suffix}

        def subst(text: str) -> str:
            out = []
            for literal, expr in _parse(text):
                out.append(literal)
                if expr is None:
                    continue
                if expr[0] == "match":
                    n = int(expr[1])
                    out.append(groups[n] if 0 <= n < len(groups) else "")
                else:
                    out.append(variables[expr[1]])
            return "".join(out)

        rendered = copy.deepcopy(dict(self.query))
        rendered["Service"] = _map_strings(rendered["Service"], subst)
        if rendered["Template"]["RemoveEmptyTags"] and rendered["Service"]["Tags"] is not None:
            rendered["Service"]["Tags"] = [t for t in rendered["Service"]["Tags"] if t != ""]
        return rendered


def compile_template(query: Mapping[str, Any]) -> CompiledTemplate:
    return CompiledTemplate(query)


def _strings_in(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _strings_in(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings_in(v)


def _map_strings(value: Any, fn: Any) -> Any:
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, Mapping):
        return {k: _map_strings(v, fn) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_map_strings(v, fn) for v in value]
    return value


_VARIABLES = frozenset({"name.full", "name.prefix", "name.suffix"})


def _parse(text: str) -> list[tuple[str, tuple[str, str] | None]]:
    """Split `text` into (literal, interpolation) pairs; an interpolation is ("var", name) or
    ("match", "N"). `$${` is a literal `${`, as in HIL. QueryError for anything else."""
    out: list[tuple[str, tuple[str, str] | None]] = []
    literal: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("$${", i):
            literal.append("${")
            i += 3
            continue
        if text.startswith("${", i):
            end = text.find("}", i + 2)
            if end < 0:
                raise QueryError(f"Invalid prepared query template: unterminated interpolation in {text!r}")
            expr = text[i + 2:end].strip()
            out.append(("".join(literal), _expression(expr)))
            literal = []
            i = end + 1
            continue
        literal.append(text[i])
        i += 1
    out.append(("".join(literal), None))
    return out


def _expression(expr: str) -> tuple[str, str]:
    if expr in _VARIABLES:
        return ("var", expr)
    if expr.startswith("match(") and expr.endswith(")"):
        arg = expr[6:-1].strip()
        if arg.isdigit():
            return ("match", arg)
        raise QueryError(f"Invalid prepared query template: match() takes an integer, got {arg!r}")
    raise QueryError(f"Invalid prepared query template: unknown variable accessed: {expr}")


# ------------------------------------------------------------------------------- resolution


def resolve(queries: Mapping[str, Any], id_or_name: str) -> dict[str, Any] | None:
    """The rendered query `id_or_name` names among `queries` (ID -> stored record), or None.

    Each record has `id`, `name`, `definition`, `create_index`, `modify_index` (see
    `state.records.PreparedQuery`)."""
    if not id_or_name:
        return None
    found = queries.get(id_or_name) if is_uuid(id_or_name) else None
    # Names (and template prefixes) match in any case, as Consul's lower-cased name index does;
    # DNS names arrive lower-cased.
    wanted = id_or_name.lower()
    if found is None:
        for q in queries.values():
            if q.name and q.name.lower() == wanted:
                found = q
                break
    if found is None:
        best = None
        for q in queries.values():
            if q.definition["Template"]["Type"] and wanted.startswith(q.name.lower()):
                if best is None or len(q.name) > len(best.name) or (len(q.name) == len(best.name) and q.id < best.id):
                    best = q
        found = best
    if found is None:
        return None
    definition = found.definition
    if definition["Template"]["Type"]:
        definition = compile_template(definition).render(id_or_name)
    return render(found.id, definition, found.create_index, found.modify_index)
