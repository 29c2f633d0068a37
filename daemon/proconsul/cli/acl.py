"""`proconsul acl ...`: bootstrap, tokens, policies and roles from the command line.

Owns the `consul acl` subcommands proconsul supports: `bootstrap`; `token create|read|list|update|
delete|clone`; `policy create|read|list|update|delete`; `role create|read|list|update|delete`;
`set-agent-token`. Each is a thin client of `/v1/acl/*` (the token comes from `-token`,
`-token-file` or `CONSUL_HTTP_TOKEN`), with Consul's flags (`-id`, `-name`, `-description`,
`-policy-name`, `-policy-id`, `-role-name`, `-role-id`, `-rules` taking text, `@file` or `-` for
stdin, `-format=pretty|json`) and Consul's pretty output (`AccessorID:  ...`, policy links as
`   <id> - <name>`), or the API's JSON with `-format=json`.
"""

from __future__ import annotations

import json
from typing import Any

from proconsul.api_client import APIError
from proconsul.cli.base import HTTP_CLIENT, Command, Context, FlagSpec, GroupCommand


def _links(title: str, links: list[dict[str, Any]] | None) -> list[str]:
    if not links:
        return []
    return [f"{title}:"] + [f"   {link.get('ID', '')} - {link.get('Name', '')}" for link in links]


def format_token(t: dict[str, Any]) -> str:
    lines = [
        f"AccessorID:       {t.get('AccessorID', '')}",
        f"SecretID:         {t.get('SecretID', '')}",
        f"Description:      {t.get('Description', '')}",
        f"Local:            {'true' if t.get('Local') else 'false'}",
        f"Create Time:      {t.get('CreateTime', '')}",
    ]
    if t.get("ExpirationTime"):
        lines.append(f"Expiration Time:  {t['ExpirationTime']}")
    lines += _links("Policies", t.get("Policies"))
    lines += _links("Roles", t.get("Roles"))
    if t.get("ServiceIdentities"):
        lines.append("Service Identities:")
        for s in t["ServiceIdentities"]:
            dcs = ", ".join(s.get("Datacenters") or []) or "<all>"
            lines.append(f"   {s.get('ServiceName', '')} (Datacenters: {dcs})")
    if t.get("NodeIdentities"):
        lines.append("Node Identities:")
        for n in t["NodeIdentities"]:
            lines.append(f"   {n.get('NodeName', '')} (Datacenter: {n.get('Datacenter', '')})")
    return "\n".join(lines)


def format_policy(p: dict[str, Any], with_rules: bool = True) -> str:
    lines = [
        f"ID:           {p.get('ID', '')}",
        f"Name:         {p.get('Name', '')}",
        f"Description:  {p.get('Description', '')}",
        f"Datacenters:  {', '.join(p.get('Datacenters') or [])}",
    ]
    if with_rules:
        lines += ["Rules:", p.get("Rules", "")]
    return "\n".join(lines)


def format_role(r: dict[str, Any]) -> str:
    lines = [
        f"ID:           {r.get('ID', '')}",
        f"Name:         {r.get('Name', '')}",
        f"Description:  {r.get('Description', '')}",
    ]
    lines += _links("Policies", r.get("Policies"))
    return "\n".join(lines)


class _ACL(Command):
    http = HTTP_CLIENT
    formatter: Any = staticmethod(format_token)

    def define(self, spec: FlagSpec) -> None:
        spec.string("format", "Output format {pretty|json}", default="pretty")

    def show(self, ctx: Context, obj: Any) -> int:
        fmt = ctx.opts.values.get("format") or "pretty"
        if fmt == "json":
            ctx.ui.output(json.dumps(obj, indent=4))
        elif fmt == "pretty":
            if isinstance(obj, list):
                ctx.ui.output("\n\n".join(type(self).formatter(o) for o in obj))
            else:
                ctx.ui.output(type(self).formatter(obj))
        else:
            ctx.ui.error(f"Invalid format: {fmt}")
            return 1
        return 0

    def call(self, ctx: Context, method: str, path: str, body: Any = None,
             params: list[tuple[str, str]] | None = None) -> Any:
        client = ctx.connect()
        if client is None:
            raise _Failed()
        data = json.dumps(body).encode() if body is not None else (b"" if method != "GET" else None)
        return client.request(method, path, params or [], data, read=method == "GET").json()

    def run(self, ctx: Context) -> int:
        try:
            return self.act(ctx)
        except _Failed:
            return 1
        except APIError as exc:
            ctx.ui.error(f"{self.failure}: {exc}")
            return 1

    failure = "Failed"

    def act(self, ctx: Context) -> int:
        """The subcommand's work; every concrete `acl ...` command overrides it (abstract here)."""
        raise NotImplementedError


class _Failed(Exception):
    pass


def _read_rules(ctx: Context, value: str) -> str:
    if value == "-":
        return ctx.read_stdin().decode()
    if value.startswith("@"):
        with open(value[1:]) as f:
            return f.read()
    return value


def _policy_links(ctx: Context) -> list[dict[str, str]]:
    v = ctx.opts.values
    return [{"ID": i} for i in v.get("policy-id") or []] + [{"Name": n} for n in v.get("policy-name") or []]


def _role_links(ctx: Context) -> list[dict[str, str]]:
    v = ctx.opts.values
    return [{"ID": i} for i in v.get("role-id") or []] + [{"Name": n} for n in v.get("role-name") or []]


def _identities(ctx: Context) -> dict[str, Any]:
    v = ctx.opts.values
    out: dict[str, Any] = {}
    services = []
    for text in v.get("service-identity") or []:
        name, _, dcs = text.partition(":")
        services.append({"ServiceName": name, **({"Datacenters": dcs.split(",")} if dcs else {})})
    if services:
        out["ServiceIdentities"] = services
    nodes = []
    for text in v.get("node-identity") or []:
        name, _, dc = text.partition(":")
        nodes.append({"NodeName": name, "Datacenter": dc})
    if nodes:
        out["NodeIdentities"] = nodes
    return out


def _link_flags(spec: FlagSpec, roles: bool = True) -> None:
    spec.list("policy-id", "ID of a policy to use for this token. May be specified multiple times.")
    spec.list("policy-name", "Name of a policy to use for this token. May be specified multiple times.")
    if roles:
        spec.list("role-id", "ID of a role to use for this token. May be specified multiple times.")
        spec.list("role-name", "Name of a role to use for this token. May be specified multiple times.")
    spec.list("service-identity", "Name of a service identity to use, as <service>[:<datacenter>,...]. "
              "May be specified multiple times.")
    spec.list("node-identity", "Name of a node identity to use, as <node>:<datacenter>. May be specified "
              "multiple times.")


# ------------------------------------------------------------------------------------ groups


class ACLGroup(GroupCommand):
    name = "acl"
    synopsis = "Interact with Consul's ACLs"
    usage = "Usage: proconsul acl <subcommand> [options] [args]\n\n  Bootstrap ACLs and manage tokens, policies and roles."


class TokenGroup(GroupCommand):
    name = "acl token"
    synopsis = "Manage Consul's ACL tokens"
    usage = "Usage: proconsul acl token <subcommand> [options] [args]"


class PolicyGroup(GroupCommand):
    name = "acl policy"
    synopsis = "Manage Consul's ACL policies"
    usage = "Usage: proconsul acl policy <subcommand> [options] [args]"


class RoleGroup(GroupCommand):
    name = "acl role"
    synopsis = "Manage Consul's ACL roles"
    usage = "Usage: proconsul acl role <subcommand> [options] [args]"


# ------------------------------------------------------------------------------- bootstrap


class Bootstrap(_ACL):
    name = "acl bootstrap"
    synopsis = "Bootstrap Consul's ACL system"
    usage = "Usage: proconsul acl bootstrap [options]\n\n  Creates the initial management token (once)."
    failure = "Failed ACL bootstrapping"

    def act(self, ctx: Context) -> int:
        return self.show(ctx, self.call(ctx, "PUT", "/v1/acl/bootstrap"))


class SetAgentToken(_ACL):
    name = "acl set-agent-token"
    synopsis = "Assign tokens for the Consul Agent's usage"
    usage = ("Usage: proconsul acl set-agent-token [options] TYPE TOKEN\n\n"
             "  TYPE is default, agent, agent_recovery (or its old name agent_master) or replication.")
    failure = "Failed setting token"

    def act(self, ctx: Context) -> int:
        if len(ctx.args) != 2:
            ctx.ui.error("Missing TYPE and TOKEN arguments")
            return 1
        kind, value = ctx.args
        self.call(ctx, "PUT", f"/v1/agent/token/{kind}", {"Token": value})
        ctx.ui.output("ACL token set successfully")
        return 0


# ----------------------------------------------------------------------------------- tokens


class TokenCreate(_ACL):
    name = "acl token create"
    synopsis = "Create an ACL token"
    usage = "Usage: proconsul acl token create [options]"
    failure = "Failed to create new token"

    def define(self, spec: FlagSpec) -> None:
        super().define(spec)
        spec.string("description", "A description of the token", default="")
        spec.string("accessor", "Create the token with this Accessor ID", default="")
        spec.string("secret", "Create the token with this Secret ID", default="")
        spec.bool("local", "Create this as a datacenter local token")
        spec.string("expires-ttl", "Duration of time this token should be valid for", default="")
        _link_flags(spec)

    def act(self, ctx: Context) -> int:
        v = ctx.opts.values
        body: dict[str, Any] = {"Description": v.get("description") or "", "Local": bool(v.get("local")),
                                "Policies": _policy_links(ctx), "Roles": _role_links(ctx), **_identities(ctx)}
        for flag, field in (("accessor", "AccessorID"), ("secret", "SecretID"), ("expires-ttl", "ExpirationTTL")):
            if v.get(flag):
                body[field] = v[flag]
        return self.show(ctx, self.call(ctx, "PUT", "/v1/acl/token", body))


class TokenRead(_ACL):
    name = "acl token read"
    synopsis = "Read an ACL token"
    usage = "Usage: proconsul acl token read [options] -id TOKENID"
    failure = "Error reading token"

    def define(self, spec: FlagSpec) -> None:
        super().define(spec)
        spec.string("id", "The Accessor ID of the token to read.", default="")
        spec.bool("self", "Indicates that the current HTTP token should be read by secret ID instead of "
                  "expecting a -id option")

    def act(self, ctx: Context) -> int:
        v = ctx.opts.values
        if v.get("self"):
            return self.show(ctx, self.call(ctx, "GET", "/v1/acl/token/self"))
        if not v.get("id"):
            ctx.ui.error("Must specify the -id parameter")
            return 1
        return self.show(ctx, self.call(ctx, "GET", f"/v1/acl/token/{v['id']}"))


class TokenList(_ACL):
    name = "acl token list"
    synopsis = "List ACL tokens"
    usage = "Usage: proconsul acl token list [options]"
    failure = "Failed to retrieve the token list"

    def act(self, ctx: Context) -> int:
        return self.show(ctx, self.call(ctx, "GET", "/v1/acl/tokens"))


class TokenUpdate(_ACL):
    name = "acl token update"
    synopsis = "Update an ACL token"
    usage = ("Usage: proconsul acl token update [options] -id TOKENID\n\n"
             "  Policies, roles and identities given replace the token's; none given keeps them.")
    failure = "Failed to update token"

    def define(self, spec: FlagSpec) -> None:
        super().define(spec)
        spec.string("id", "The Accessor ID of the token to update.", default="")
        spec.string("description", "A description of the token", default=None)
        _link_flags(spec)

    def act(self, ctx: Context) -> int:
        v = ctx.opts.values
        if not v.get("id"):
            ctx.ui.error("Cannot update a token without specifying the -id parameter")
            return 1
        old = self.call(ctx, "GET", f"/v1/acl/token/{v['id']}")
        body = {k: old[k] for k in ("Description", "Policies", "Roles", "ServiceIdentities", "NodeIdentities",
                                     "Local") if k in old}
        if v.get("description") is not None:
            body["Description"] = v["description"]
        if _policy_links(ctx):
            body["Policies"] = _policy_links(ctx)
        if _role_links(ctx):
            body["Roles"] = _role_links(ctx)
        body.update(_identities(ctx))
        body["AccessorID"] = old["AccessorID"]
        updated = self.call(ctx, "PUT", f"/v1/acl/token/{old['AccessorID']}", body)
        if (v.get("format") or "pretty") == "pretty":
            ctx.ui.output("Token updated successfully.")
        return self.show(ctx, updated)


class TokenDelete(_ACL):
    name = "acl token delete"
    synopsis = "Delete an ACL token"
    usage = "Usage: proconsul acl token delete [options] -id TOKEN"
    failure = "Error deleting token"

    def define(self, spec: FlagSpec) -> None:
        spec.string("id", "The Accessor ID of the token to delete.", default="")

    def act(self, ctx: Context) -> int:
        tid = ctx.opts.values.get("id")
        if not tid:
            ctx.ui.error("Must specify the -id parameter")
            return 1
        self.call(ctx, "DELETE", f"/v1/acl/token/{tid}")
        ctx.ui.output(f"Token \"{tid}\" deleted successfully")
        return 0


class TokenClone(_ACL):
    name = "acl token clone"
    synopsis = "Clone an ACL token"
    usage = "Usage: proconsul acl token clone [options] -id TOKENID"
    failure = "Failed to clone token"

    def define(self, spec: FlagSpec) -> None:
        super().define(spec)
        spec.string("id", "The Accessor ID of the token to clone.", default="")
        spec.string("description", "A description of the new cloned token", default="")

    def act(self, ctx: Context) -> int:
        v = ctx.opts.values
        if not v.get("id"):
            ctx.ui.error("Cannot clone a token without specifying the -id parameter")
            return 1
        made = self.call(ctx, "PUT", f"/v1/acl/token/{v['id']}/clone", {"Description": v.get("description") or ""})
        return self.show(ctx, made)


# --------------------------------------------------------------------------------- policies


class _PolicyCommand(_ACL):
    formatter = staticmethod(format_policy)

    def by_id_or_name(self, ctx: Context) -> dict[str, Any] | None:
        v = ctx.opts.values
        if v.get("id"):
            return self.call(ctx, "GET", f"/v1/acl/policy/{v['id']}")  # type: ignore[no-any-return]
        if v.get("name"):
            return self.call(ctx, "GET", f"/v1/acl/policy/name/{v['name']}")  # type: ignore[no-any-return]
        ctx.ui.error("Must specify either the -id or -name parameters")
        return None


class PolicyCreate(_PolicyCommand):
    name = "acl policy create"
    synopsis = "Create an ACL policy"
    usage = "Usage: proconsul acl policy create -name NAME [options]"
    failure = "Failed to create new policy"

    def define(self, spec: FlagSpec) -> None:
        super().define(spec)
        spec.string("name", "The new policy's name. This flag is required.", default="")
        spec.string("description", "A description of the policy", default="")
        spec.string("rules", "The policy rules. May be prefixed with '@' to indicate that the value is a file "
                    "path to load the rules from. '-' may also be given to indicate that the rules are "
                    "available on stdin", default="")
        spec.list("valid-datacenter", "Datacenter that the policy should be valid within. This flag may be "
                  "specified multiple times")

    def act(self, ctx: Context) -> int:
        v = ctx.opts.values
        if not v.get("name"):
            ctx.ui.error("Missing require '-name' flag")
            return 1
        body = {"Name": v["name"], "Description": v.get("description") or "",
                "Rules": _read_rules(ctx, v.get("rules") or ""), "Datacenters": v.get("valid-datacenter") or []}
        return self.show(ctx, self.call(ctx, "PUT", "/v1/acl/policy", body))


class PolicyRead(_PolicyCommand):
    name = "acl policy read"
    synopsis = "Read an ACL policy"
    usage = "Usage: proconsul acl policy read [options] -id POLICY"
    failure = "Error reading policy"

    def define(self, spec: FlagSpec) -> None:
        super().define(spec)
        spec.string("id", "The ID of the policy to read.", default="")
        spec.string("name", "The name of the policy to read.", default="")

    def act(self, ctx: Context) -> int:
        found = self.by_id_or_name(ctx)
        return 1 if found is None else self.show(ctx, found)


class PolicyList(_PolicyCommand):
    name = "acl policy list"
    synopsis = "List ACL policies"
    usage = "Usage: proconsul acl policy list [options]"
    failure = "Failed to retrieve the policy list"
    formatter = staticmethod(lambda p: format_policy(p, with_rules=False))

    def act(self, ctx: Context) -> int:
        return self.show(ctx, self.call(ctx, "GET", "/v1/acl/policies"))


class PolicyUpdate(_PolicyCommand):
    name = "acl policy update"
    synopsis = "Update an ACL policy"
    usage = "Usage: proconsul acl policy update [options] -id POLICY"
    failure = "Failed to update policy"

    def define(self, spec: FlagSpec) -> None:
        super().define(spec)
        spec.string("id", "The ID of the policy to update.", default="")
        spec.string("name", "The policy's name (a new name with -id).", default="")
        spec.string("description", "A description of the policy", default=None)
        spec.string("rules", "The policy rules ('@file', '-' for stdin).", default=None)

    def act(self, ctx: Context) -> int:
        v = ctx.opts.values
        if v.get("id"):
            old = self.call(ctx, "GET", f"/v1/acl/policy/{v['id']}")
        elif v.get("name"):
            old = self.call(ctx, "GET", f"/v1/acl/policy/name/{v['name']}")
        else:
            ctx.ui.error("Cannot update a policy without specifying the -id or -name parameter")
            return 1
        body = {"ID": old["ID"], "Name": (v.get("name") if v.get("id") and v.get("name") else old["Name"]),
                "Description": v["description"] if v.get("description") is not None else old["Description"],
                "Rules": _read_rules(ctx, v["rules"]) if v.get("rules") is not None else old["Rules"],
                "Datacenters": old.get("Datacenters") or []}
        return self.show(ctx, self.call(ctx, "PUT", f"/v1/acl/policy/{old['ID']}", body))


class PolicyDelete(_PolicyCommand):
    name = "acl policy delete"
    synopsis = "Delete an ACL policy"
    usage = "Usage: proconsul acl policy delete [options] -id POLICY"
    failure = "Error deleting policy"

    def define(self, spec: FlagSpec) -> None:
        spec.string("id", "The ID of the policy to delete.", default="")
        spec.string("name", "The name of the policy to delete.", default="")

    def act(self, ctx: Context) -> int:
        found = self.by_id_or_name(ctx)
        if found is None:
            return 1
        self.call(ctx, "DELETE", f"/v1/acl/policy/{found['ID']}")
        ctx.ui.output(f"Policy \"{found['ID']}\" deleted successfully")
        return 0


# ------------------------------------------------------------------------------------ roles


class _RoleCommand(_ACL):
    formatter = staticmethod(format_role)

    def by_id_or_name(self, ctx: Context) -> dict[str, Any] | None:
        v = ctx.opts.values
        if v.get("id"):
            return self.call(ctx, "GET", f"/v1/acl/role/{v['id']}")  # type: ignore[no-any-return]
        if v.get("name"):
            return self.call(ctx, "GET", f"/v1/acl/role/name/{v['name']}")  # type: ignore[no-any-return]
        ctx.ui.error("Must specify either the -id or -name parameters")
        return None


class RoleCreate(_RoleCommand):
    name = "acl role create"
    synopsis = "Create an ACL role"
    usage = "Usage: proconsul acl role create -name NAME [options]"
    failure = "Failed to create new role"

    def define(self, spec: FlagSpec) -> None:
        super().define(spec)
        spec.string("name", "The new role's name. This flag is required.", default="")
        spec.string("description", "A description of the role", default="")
        _link_flags(spec, roles=False)

    def act(self, ctx: Context) -> int:
        v = ctx.opts.values
        if not v.get("name"):
            ctx.ui.error("Missing required '-name' flag")
            return 1
        body = {"Name": v["name"], "Description": v.get("description") or "", "Policies": _policy_links(ctx),
                **_identities(ctx)}
        return self.show(ctx, self.call(ctx, "PUT", "/v1/acl/role", body))


class RoleRead(_RoleCommand):
    name = "acl role read"
    synopsis = "Read an ACL role"
    usage = "Usage: proconsul acl role read [options] -id ROLEID"
    failure = "Error reading role"

    def define(self, spec: FlagSpec) -> None:
        super().define(spec)
        spec.string("id", "The ID of the role to read.", default="")
        spec.string("name", "The name of the role to read.", default="")

    def act(self, ctx: Context) -> int:
        found = self.by_id_or_name(ctx)
        return 1 if found is None else self.show(ctx, found)


class RoleList(_RoleCommand):
    name = "acl role list"
    synopsis = "List ACL roles"
    usage = "Usage: proconsul acl role list [options]"
    failure = "Failed to retrieve the role list"

    def act(self, ctx: Context) -> int:
        return self.show(ctx, self.call(ctx, "GET", "/v1/acl/roles"))


class RoleUpdate(_RoleCommand):
    name = "acl role update"
    synopsis = "Update an ACL role"
    usage = "Usage: proconsul acl role update [options] -id ROLEID"
    failure = "Failed to update role"

    def define(self, spec: FlagSpec) -> None:
        super().define(spec)
        spec.string("id", "The ID of the role to update.", default="")
        spec.string("name", "The role's new name.", default="")
        spec.string("description", "A description of the role", default=None)
        _link_flags(spec, roles=False)

    def act(self, ctx: Context) -> int:
        v = ctx.opts.values
        if not v.get("id"):
            ctx.ui.error("Cannot update a role without specifying the -id parameter")
            return 1
        old = self.call(ctx, "GET", f"/v1/acl/role/{v['id']}")
        body = {"ID": old["ID"], "Name": v.get("name") or old["Name"],
                "Description": v["description"] if v.get("description") is not None else old["Description"],
                "Policies": _policy_links(ctx) or old.get("Policies") or [],
                "ServiceIdentities": old.get("ServiceIdentities") or [],
                "NodeIdentities": old.get("NodeIdentities") or []}
        body.update(_identities(ctx))
        return self.show(ctx, self.call(ctx, "PUT", f"/v1/acl/role/{old['ID']}", body))


class RoleDelete(_RoleCommand):
    name = "acl role delete"
    synopsis = "Delete an ACL role"
    usage = "Usage: proconsul acl role delete [options] -id ROLEID"
    failure = "Error deleting role"

    def define(self, spec: FlagSpec) -> None:
        spec.string("id", "The ID of the role to delete.", default="")
        spec.string("name", "The name of the role to delete.", default="")

    def act(self, ctx: Context) -> int:
        found = self.by_id_or_name(ctx)
        if found is None:
            return 1
        self.call(ctx, "DELETE", f"/v1/acl/role/{found['ID']}")
        ctx.ui.output(f"Role \"{found['ID']}\" deleted successfully")
        return 0


COMMANDS: list[type[Command]] = [
    ACLGroup, TokenGroup, PolicyGroup, RoleGroup, Bootstrap, SetAgentToken,
    TokenCreate, TokenRead, TokenList, TokenUpdate, TokenDelete, TokenClone,
    PolicyCreate, PolicyRead, PolicyList, PolicyUpdate, PolicyDelete,
    RoleCreate, RoleRead, RoleList, RoleUpdate, RoleDelete,
]
