"""ACL tables in the replicated state (state/acl.py): commands through the FSM's wire path,
Consul's rules on tokens, policies and roles, the one-time bootstrap, and snapshots."""

from __future__ import annotations

from proconsul.acl.records import (
    ANONYMOUS_ACCESSOR,
    GLOBAL_MANAGEMENT_ID,
    ACLPolicy,
    ACLRole,
    ACLToken,
    Link,
)
from proconsul.server import acl_queries
from proconsul.state.commands import ACLOp, ACLOpKind
from proconsul.state.store import Store, StoreError
from state_helpers import Log

SECRET = "11111111-2222-3333-4444-555555555555"


def _boot(log: Log, accessor: str = "acc-boot", secret: str = SECRET, reset: int = 0) -> object:
    token = ACLToken(accessor, secret, "Bootstrap Token (Global Management)")
    return log.apply(ACLOp(ACLOpKind.BOOTSTRAP, [token.to_wire(), reset]))


def test_bootstrap_once_then_refused_with_the_reset_index() -> None:
    log = Log()
    made = ACLToken.from_wire(_boot(log))  # type: ignore[arg-type]
    assert made.policies == (Link(GLOBAL_MANAGEMENT_ID),)
    assert made.create_index == made.modify_index == 1
    assert GLOBAL_MANAGEMENT_ID in log.store.acl_policies and ANONYMOUS_ACCESSOR in log.store.acl_tokens
    again = _boot(log, "acc-2", "22222222-2222-3333-4444-555555555555")
    assert isinstance(again, StoreError)
    assert str(again) == "ACL bootstrap no longer allowed (reset index: 1)"
    assert "acc-2" not in log.store.acl_tokens
    # With the reset index (Consul's acl-bootstrap-reset file), bootstrap works once more.
    redo = _boot(log, "acc-3", "33333333-2222-3333-4444-555555555555", reset=1)
    assert not isinstance(redo, StoreError)
    assert log.store.acl_bootstrap_index == 3
    wrong = _boot(log, "acc-4", "44444444-2222-3333-4444-555555555555", reset=1)
    assert str(wrong) == "Invalid bootstrap reset index (specified 1, reset index: 3)"


def test_init_creates_builtins_and_the_initial_management_token_once() -> None:
    log = Log()
    mgmt = ACLToken("acc-m", SECRET, "Initial Management Token")
    assert log.apply(ACLOp(ACLOpKind.INIT, mgmt.to_wire())) is not None
    assert log.store.acl_tokens["acc-m"].policies == (Link(GLOBAL_MANAGEMENT_ID),)
    assert log.apply(ACLOp(ACLOpKind.INIT, ACLToken("acc-n", SECRET).to_wire())) is None  # secret exists
    assert "acc-n" not in log.store.acl_tokens
    assert isinstance(_boot(log, "acc-x", "99999999-2222-3333-4444-555555555555"), StoreError)


def test_token_rules() -> None:
    log = Log()
    _boot(log)
    policy = ACLPolicy("p1", "kv", rules='key "a" { policy = "read" }')
    log.apply(ACLOp(ACLOpKind.POLICY_CREATE, policy.to_wire()))
    tok = ACLToken("t1", "s1", "mine", policies=(Link("p1"),))
    created = ACLToken.from_wire(log.apply(ACLOp(ACLOpKind.TOKEN_CREATE, tok.to_wire())))  # type: ignore[arg-type]
    assert created.create_index == created.modify_index == log.index
    dup_secret = log.apply(ACLOp(ACLOpKind.TOKEN_CREATE, ACLToken("t2", "s1").to_wire()))
    assert isinstance(dup_secret, StoreError)
    missing_policy = log.apply(ACLOp(ACLOpKind.TOKEN_CREATE, ACLToken("t3", "s3", policies=(Link("nope"),)).to_wire()))
    assert isinstance(missing_policy, StoreError) and "t3" not in log.store.acl_tokens
    upd = log.apply(ACLOp(ACLOpKind.TOKEN_UPDATE, ACLToken("t1", "s1", "renamed").to_wire()))
    updated = ACLToken.from_wire(upd)  # type: ignore[arg-type]
    assert updated.create_index == created.create_index and updated.modify_index == log.index
    assert isinstance(log.apply(ACLOp(ACLOpKind.TOKEN_UPDATE, ACLToken("t1", "other").to_wire())), StoreError)
    assert isinstance(log.apply(ACLOp(ACLOpKind.TOKEN_DELETE, ANONYMOUS_ACCESSOR)), StoreError)
    assert log.apply(ACLOp(ACLOpKind.TOKEN_DELETE, "t1")) is True
    assert "t1" not in log.store.acl_tokens and "s1" not in log.store.acl_secrets


def test_policy_and_role_rules() -> None:
    log = Log()
    _boot(log)
    log.apply(ACLOp(ACLOpKind.POLICY_CREATE, ACLPolicy("p1", "kv").to_wire()))
    assert isinstance(log.apply(ACLOp(ACLOpKind.POLICY_CREATE, ACLPolicy("p2", "kv").to_wire())), StoreError)
    gm = log.store.acl_policies[GLOBAL_MANAGEMENT_ID]
    changed = ACLPolicy(gm.id, gm.name, gm.description, 'key "" { policy = "read" }')
    assert isinstance(log.apply(ACLOp(ACLOpKind.POLICY_UPDATE, changed.to_wire())), StoreError)
    assert isinstance(log.apply(ACLOp(ACLOpKind.POLICY_DELETE, GLOBAL_MANAGEMENT_ID)), StoreError)
    role = ACLRole("r1", "ops", policies=(Link("p1"),))
    assert not isinstance(log.apply(ACLOp(ACLOpKind.ROLE_CREATE, role.to_wire())), StoreError)
    assert isinstance(log.apply(ACLOp(ACLOpKind.ROLE_CREATE, ACLRole("r2", "ops").to_wire())), StoreError)
    bad = ACLRole("r3", "other", policies=(Link("nope"),))
    assert isinstance(log.apply(ACLOp(ACLOpKind.ROLE_CREATE, bad.to_wire())), StoreError)
    # Deleting a policy leaves the link, which reads skip (as Consul does).
    log.apply(ACLOp(ACLOpKind.POLICY_DELETE, "p1"))
    _, shown = acl_queries.role_read(log.store, {"id": "r1"})
    assert shown["Policies"] == []


def test_acl_tables_survive_a_snapshot_and_restore() -> None:
    log = Log()
    _boot(log)
    log.apply(ACLOp(ACLOpKind.POLICY_CREATE, ACLPolicy("p1", "kv", rules='key "a" { policy = "read" }').to_wire()))
    log.apply(ACLOp(ACLOpKind.ROLE_CREATE, ACLRole("r1", "ops", policies=(Link("p1"),)).to_wire()))
    log.apply(ACLOp(ACLOpKind.TOKEN_CREATE, ACLToken("t1", "s1", roles=(Link("r1"),)).to_wire()))
    copy = Store()
    copy.restore(log.store.snapshot())
    assert copy.acl_tokens == log.store.acl_tokens
    assert copy.acl_secrets == log.store.acl_secrets
    assert copy.acl_policies == log.store.acl_policies
    assert copy.acl_roles == log.store.acl_roles
    assert copy.acl_bootstrap_index == log.store.acl_bootstrap_index == 1
    _, resolved = acl_queries.resolve(copy, {"secret": "s1"})
    assert [ACLPolicy.from_wire(p).id for p in resolved["policies"]] == ["p1"]


def test_token_list_filters_by_policy_and_role() -> None:
    log = Log()
    _boot(log)
    log.apply(ACLOp(ACLOpKind.POLICY_CREATE, ACLPolicy("p1", "kv").to_wire()))
    log.apply(ACLOp(ACLOpKind.ROLE_CREATE, ACLRole("r1", "ops").to_wire()))
    log.apply(ACLOp(ACLOpKind.TOKEN_CREATE, ACLToken("t1", "s1", policies=(Link("p1"),)).to_wire()))
    log.apply(ACLOp(ACLOpKind.TOKEN_CREATE, ACLToken("t2", "s2", roles=(Link("r1"),)).to_wire()))
    _, by_policy = acl_queries.token_list(log.store, {"policy": "p1"})
    _, by_role = acl_queries.token_list(log.store, {"role": "r1"})
    assert [t["AccessorID"] for t in by_policy] == ["t1"]
    assert [t["AccessorID"] for t in by_role] == ["t2"]
    assert by_policy[0]["Policies"] == [{"ID": "p1", "Name": "kv"}]


def test_snapshot_inspect_counts_acl_records() -> None:
    from proconsul.server.snapshot import state_stats

    log = Log()
    _boot(log)
    log.apply(ACLOp(ACLOpKind.ROLE_CREATE, ACLRole("r1", "ops").to_wire()))
    counts = {name: count for name, count, _ in state_stats(log.store.snapshot())}
    # The bootstrap token and the anonymous token; global-management; one role.
    assert (counts["ACLToken"], counts["ACLPolicy"], counts["ACLRole"]) == (2, 1, 1)
