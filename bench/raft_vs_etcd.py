"""A 3-server proconsul cluster next to a 3-member etcd cluster, same machine, same load generator.

Run by hand (needs `wrk` and Debian's etcd: `apt-get install -y wrk etcd-server`):

    .venv/bin/python bench/raft_vs_etcd.py                          # 8 s runs, 2 s warm-up, c=16,64, 2 rounds
    .venv/bin/python bench/raft_vs_etcd.py --rounds 3 --json /tmp/raft_vs_etcd.json
    .venv/bin/python bench/raft_vs_etcd.py --profile /tmp/raftprof   # + a profiled proconsul PUT phase

Layout (loopback only; every member on its own address, default ports):
- proconsul: `proconsul agent -server -bootstrap-expect=3 -retry-join=<the other two>
  -data-dir=D/pN` on 127.a.b.1-3 (HTTP 8500, DNS 8600,
  server 8300, serf 8301/8302), as tests/integration/test_raft_cluster.py starts them. Each runs
  through bench/raft_server_wrapper.py, which counts entries per `DurableLog.write_db` call (one
  log write + fdatasync) without changing daemon code.
- etcd: `etcd --enable-v2 --data-dir=D/eN` on 127.c.d.1-3 (client 2379, peer 2380), default
  heartbeat (100 ms), election timeout (1 s) and snapshot count; fsync on every WAL batch.
proconsul runs at the default `raft_multiplier` (5, Consul's default) unless `--raft-multiplier`
says otherwise (older runs used 1).
Both data dirs are under one `mkdtemp` directory (`--data-root`, default /tmp: the same
filesystem as /work on this machine).

Load: wrk with Lua scripts, one thread (three threads for round-robin runs, one per member),
sent to the current leader of each cluster. Per concurrency and round, pairs run back to back,
and which system goes first alternates between rounds:
- PUT: proconsul `PUT /v1/kv/bench/put` (64-byte body) vs etcd v2 `PUT /v2/keys/bench/put`
  (form `value=...`) and v3 JSON gateway `POST /v3/kv/put` (base64 key/value);
- default GET: proconsul `GET /v1/kv/bench/key0050` (leader, no quorum check) vs etcd v2
  `GET /v2/keys/bench/key0050` (the v2 default: the member's local store, no quorum check);
- linearizable GET: proconsul `?consistent` (ReadIndex) vs etcd v3 `POST /v3/kv/range` (the v3
  default, ReadIndex) and vs v2 `?quorum=true` (in etcd 3.4 a v2 quorum GET goes through the
  Raft log: a proposal, an fsync on every member, like a write);
- stale GET: proconsul `?stale` vs etcd v3 range with `"serializable": true`.
Round-robin PUT over all three members (`--rr`, default on) and follower-targeted runs (PUT and
linearizable GET sent to one follower of each cluster: a proconsul follower forwards them to
the leader over the server RPC, an etcd follower forwards the proposal or ReadIndex inside Raft)
are measured too. Every run reports p50, p99 and p99.9 (wrk's latency histogram, read by a Lua
`done` hook) and the CPU each member spent per request (leader, then the two followers). Everything started is stopped by pid in a `finally`.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Procs, cpu_seconds, family_cpu_seconds  # noqa: E402
from kv_http import cpu_busy, machine, parse_wrk, run_wrk  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VENV_PY = ROOT / ".venv" / "bin" / "python"
WRAPPER = HERE / "raft_server_wrapper.py"
VALUE = "y" * 64


# --------------------------------------------------------------------------- addresses / http


def free_subnet(ports: tuple[int, ...], avoid: str = "") -> str:
    """A 127.a.b prefix whose .1-.3 have `ports` free (TCP)."""
    for _ in range(100):
        prefix = f"127.{random.randint(1, 250)}.{random.randint(1, 250)}"
        if prefix == avoid:
            continue
        ok = True
        for i in (1, 2, 3):
            for port in ports:
                with socket.socket() as s:
                    try:
                        s.bind((f"{prefix}.{i}", port))
                    except OSError:
                        ok = False
        if ok:
            return prefix
    raise RuntimeError("no free loopback subnet")


def http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 5.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def wait_until(what: str, fn: Any, timeout: float, procs: list[tuple[str, subprocess.Popen[bytes], Path]]) -> Any:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        for name, p, log in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited with {p.returncode}; log:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            v = fn()
            if v:
                return v
        except (OSError, ValueError, KeyError) as exc:
            last = exc
        time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {what} (last error: {last})")


# ------------------------------------------------------------------------------------ clusters


@dataclass
class Cluster:
    name: str
    ips: list[str]
    procs: list[tuple[str, subprocess.Popen[bytes], Path]] = field(default_factory=list)
    leader: str = ""

    def pids(self) -> list[int]:
        return [p.pid for _, p, _ in self.procs]

    def leader_pid(self) -> int:
        return self.procs[self.ips.index(self.leader)][1].pid

    def follower(self) -> str:
        """The first follower by address (the follower-targeted runs all go to it)."""
        return next(ip for ip in self.ips if ip != self.leader)


def snapshot_settings(args: argparse.Namespace) -> tuple[str, ...]:
    """The `-hcl` fragments for `--snapshot-interval` / `--snapshot-threshold` (none by default)."""
    out = []
    if args.snapshot_interval is not None:
        out.append(f'raft_snapshot_interval = "{int(args.snapshot_interval * 1000)}ms"')
    if args.snapshot_threshold is not None:
        out.append(f"raft_snapshot_threshold = {args.snapshot_threshold}")
    return tuple(out)


def start_proconsul(procs: Procs, root: Path, prefix: str, prof_dir: Path | None, stats_dir: Path,
                    raft_multiplier: int | None = None, http_workers: int = 1,
                    snapshot_hcl: tuple[str, ...] = ()) -> Cluster:
    ips = [f"{prefix}.{i}" for i in (1, 2, 3)]
    c = Cluster("proconsul", ips)
    py = str(VENV_PY) if VENV_PY.exists() else sys.executable
    for n, ip in enumerate(ips, 1):
        joins = [f"-retry-join={o}" for o in ips if o != ip]
        agent_args = [
            "-server", "-bootstrap-expect=3", *joins,
            *(["-hcl", f"performance {{ raft_multiplier = {raft_multiplier} }}"] if raft_multiplier else []),
            *(["-hcl", f"http_workers = {http_workers}"] if http_workers != 1 else []),
            *(arg for fragment in snapshot_hcl for arg in ("-hcl", fragment)),
            f"-data-dir={root / f'p{n}'}", "-http-port=8500", "-dns-port=8600",
            f"-client={ip}", f"-bind={ip}", f"-node=s{n}",
        ]
        wrap = [py, str(WRAPPER), "--stats", str(stats_dir / f"s{n}.json")]
        if prof_dir is not None:
            wrap += ["--prof", str(prof_dir / f"s{n}.prof")]
        log = root / f"p{n}.log"
        p = procs.start(f"proconsul-s{n}", [*wrap, "--", *agent_args], log, None)
        c.procs.append((f"proconsul-s{n}", p, log))

    def leader() -> str:
        seen = set()
        for ip in ips:
            status, body = http("GET", f"http://{ip}:8500/v1/status/leader", timeout=2)
            addr = json.loads(body) if status == 200 else ""
            if not addr:
                return ""
            seen.add(addr.rsplit(":", 1)[0])
        return seen.pop() if len(seen) == 1 else ""

    c.leader = wait_until("a proconsul leader", leader, 90, c.procs)
    return c


def start_etcd(procs: Procs, root: Path, prefix: str) -> Cluster:
    ips = [f"{prefix}.{i}" for i in (1, 2, 3)]
    c = Cluster("etcd", ips)
    initial = ",".join(f"e{n}=http://{ip}:2380" for n, ip in enumerate(ips, 1))
    token = f"bench-{os.getpid()}-{random.randint(0, 1 << 30)}"
    for n, ip in enumerate(ips, 1):
        cmd = [
            "etcd", f"--name=e{n}", f"--data-dir={root / f'e{n}'}",
            f"--listen-client-urls=http://{ip}:2379", f"--advertise-client-urls=http://{ip}:2379",
            f"--listen-peer-urls=http://{ip}:2380", f"--initial-advertise-peer-urls=http://{ip}:2380",
            f"--initial-cluster={initial}", "--initial-cluster-state=new",
            f"--initial-cluster-token={token}", "--enable-v2=true", "--log-level=warn", "--logger=zap",
        ]
        log = root / f"e{n}.log"
        p = procs.start(f"etcd-e{n}", cmd, log, None)
        c.procs.append((f"etcd-e{n}", p, log))

    def leader() -> str:
        leaders = set()
        by_id = {}
        for ip in ips:
            status, body = http("POST", f"http://{ip}:2379/v3/maintenance/status", b"{}", timeout=2)
            if status != 200:
                return ""
            st = json.loads(body)
            by_id[st["header"]["member_id"]] = ip
            leaders.add(st.get("leader", "0"))
        if len(leaders) != 1:
            return ""
        return by_id.get(leaders.pop(), "")

    c.leader = wait_until("an etcd leader", leader, 60, c.procs)
    return c


# -------------------------------------------------------------------------------------- cases


@dataclass
class Case:
    system: str  # proconsul | etcd
    op: str  # label, e.g. "PUT", "PUT v2", "GET default"
    path: str
    lua: str  # static part of the wrk script (method, body, headers)
    rr: bool = False  # round-robin over the three members (else: the leader)
    follower: bool = False  # sent to one follower instead of the leader


def lua_request(method: str, body: str = "", headers: dict[str, str] | None = None) -> str:
    out = [f'wrk.method = "{method}"']
    if body:
        out.append(f"wrk.body = {json.dumps(body)}")
    for k, v in (headers or {}).items():
        out.append(f'wrk.headers["{k}"] = "{v}"')
    return "\n".join(out) + "\n"


def lua_rr(ips: list[str], port: int) -> str:
    """wrk threads connect to the members in turn (thread.addr), one thread per member."""
    hosts = ", ".join(f'"{ip}"' for ip in ips)
    return (
        "local addrs = nil\nlocal n = 0\n"
        "function setup(thread)\n"
        "  if addrs == nil then\n    addrs = {}\n"
        f"    for _, h in ipairs({{{hosts}}}) do\n"
        f'      for _, a in ipairs(wrk.lookup(h, "{port}")) do table.insert(addrs, a) end\n'
        "    end\n  end\n"
        "  n = n + 1\n  thread.addr = addrs[((n - 1) % #addrs) + 1]\nend\n"
    )


def cases(pc: Cluster, ec: Cluster, rr: bool, v3: bool) -> list[tuple[str, Case, Case | None]]:
    """(pair label, proconsul case, etcd case) in run order."""
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    jsn = {"Content-Type": "application/json"}
    p_put = Case("proconsul", "PUT", "/v1/kv/bench/put", lua_request("PUT", VALUE))
    e_put2 = Case("etcd", "PUT v2", "/v2/keys/bench/put", lua_request("PUT", f"value={VALUE}", form))
    e_put3 = Case("etcd", "PUT v3", "/v3/kv/put",
                  lua_request("POST", json.dumps({"key": b64("bench/put"), "value": b64(VALUE)}), jsn))
    key = "bench/key0050"
    p_get = Case("proconsul", "GET default", f"/v1/kv/{key}", "")
    e_get2 = Case("etcd", "GET v2 default", f"/v2/keys/{key}", "")
    p_cons = Case("proconsul", "GET consistent", f"/v1/kv/{key}?consistent", "")
    e_lin3 = Case("etcd", "GET v3 linearizable", "/v3/kv/range", lua_request("POST", json.dumps({"key": b64(key)}), jsn))
    e_q2 = Case("etcd", "GET v2 quorum", f"/v2/keys/{key}?quorum=true", "")
    p_stale = Case("proconsul", "GET stale", f"/v1/kv/{key}?stale", "")
    e_ser3 = Case("etcd", "GET v3 serializable", "/v3/kv/range",
                  lua_request("POST", json.dumps({"key": b64(key), "serializable": True}), jsn))
    out: list[tuple[str, Case, Case | None]] = [
        ("PUT (v2)", p_put, e_put2),
        ("GET default (v2)", p_get, e_get2),
        ("GET linearizable (v3)", p_cons, e_lin3),
        ("GET stale/serializable (v3)", p_stale, e_ser3),
    ]
    if v3:
        out.insert(1, ("PUT (v3)", p_put, e_put3))
        out.append(("GET linearizable (v2 quorum)", p_cons, e_q2))
    out.append(("PUT follower (v2)",
                Case("proconsul", "PUT follower", p_put.path, p_put.lua, follower=True),
                Case("etcd", "PUT v2 follower", e_put2.path, e_put2.lua, follower=True)))
    out.append(("GET lin. follower (v3)",
                Case("proconsul", "GET consistent follower", p_cons.path, p_cons.lua, follower=True),
                Case("etcd", "GET v3 lin. follower", e_lin3.path, e_lin3.lua, follower=True)))
    if rr:
        out.append(("PUT round-robin (v2)",
                    Case("proconsul", "PUT rr", p_put.path, p_put.lua, rr=True),
                    Case("etcd", "PUT v2 rr", e_put2.path, e_put2.lua, rr=True)))
    return out


@dataclass
class Result:
    system: str
    op: str
    conc: int
    round: int
    rps: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    errors: int
    leader_cpu: float  # cores
    cluster_cpu: float  # cores, all three members
    wrk_cpu: float
    other: float  # cores busy with anything else (noise)
    batches: dict[str, Any] | None = None  # proconsul leader: write_db calls/entries during the run
    # CPU ms per request of each member: the leader first, then the followers in address order
    cpu_ms_per_req: list[float] = field(default_factory=list)
    # The measured window on CLOCK_MONOTONIC (GC_TRACE's clock), to place a member's stalls in it
    window: tuple[float, float] = (0.0, 0.0)


def read_stats(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def batch_delta(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any] | None:
    if not a or not b:
        return None
    hist = {k: b["hist"].get(k, 0) - a.get("hist", {}).get(k, 0) for k in b["hist"]}
    calls = b["calls"] - a["calls"]
    entries = b["entries"] - a["entries"]
    with_entries = calls - (b["hs_only"] - a["hs_only"])
    return {
        "calls": calls,
        "entries": entries,
        "hs_only": b["hs_only"] - a["hs_only"],
        "entries_per_call": entries / with_entries if with_entries else 0.0,
        "ms_per_call": (b["busy_s"] - a["busy_s"]) / calls * 1000 if calls else 0.0,
        "hist": {k: v for k, v in hist.items() if v},
    }


# wrk's --latency table stops at p99; the histogram answers any percentile (microseconds).
LUA_DONE = (
    "function done(summary, latency, requests)\n"
    '  io.write(string.format("p99.9 %d\\n", latency:percentile(99.9)))\n'
    "end\n"
)


def parse_p999(out: str) -> float:
    for line in out.splitlines():
        if line.startswith("p99.9 "):
            return int(line.split()[1]) / 1000.0
    return float("nan")


def run_case(case: Case, cl: Cluster, conc: int, rnd: int, args: argparse.Namespace, tmp: Path,
             stats_dir: Path) -> Result:
    port = 8500 if case.system == "proconsul" else 2379
    script = tmp / f"{case.system}-{case.op.replace(' ', '_').replace('.', '')}.lua"
    threads = 1
    lua = case.lua
    if case.rr:
        lua += lua_rr(cl.ips, port)
        threads = 3
    script.write_text(lua + LUA_DONE)
    target = cl.follower() if case.follower else cl.leader
    url = f"http://{target}:{port}{case.path}"
    if args.warmup > 0:
        run_wrk(url, conc, args.warmup, script, None, threads)
    stats_file = stats_dir / f"s{cl.ips.index(cl.leader) + 1}.json"
    s0 = read_stats(stats_file) if case.system == "proconsul" else {}
    pids = cl.pids()
    lpid = cl.leader_pid()
    # A member's CPU includes its HTTP worker processes' (`--http-workers`).
    cpu = family_cpu_seconds if case.system == "proconsul" else cpu_seconds
    c0 = {p: cpu(p) for p in pids}
    t0, b0 = time.monotonic(), cpu_busy(None)
    out, wrk_s = run_wrk(url, conc, args.duration, script, None, threads)
    c1 = {p: cpu(p) for p in pids}
    t1, b1 = time.monotonic(), cpu_busy(None)
    batches = None
    if case.system == "proconsul":
        time.sleep(0.35)  # let the stats thread write the final counters
        batches = batch_delta(s0, read_stats(stats_file))
    if args.verbose:
        print(out, file=sys.stderr)
    rps, p50, p99, errors = parse_wrk(out)
    wall = t1 - t0
    busy = (b1[0] - b0[0]) / max(1, b1[1] - b0[1]) * (os.cpu_count() or 1)
    cluster = sum(c1[p] - c0[p] for p in pids) / wall
    wrk = wrk_s / wall
    reqs = max(1.0, rps * wall)
    per_member = [(c1[p] - c0[p]) * 1000.0 / reqs for p in [lpid, *(p for p in pids if p != lpid)]]
    return Result(case.system, case.op, conc, rnd, rps, p50, p99, parse_p999(out), errors,
                  (c1[lpid] - c0[lpid]) / wall, cluster, wrk, max(0.0, busy - cluster - wrk), batches,
                  per_member, (t0, t1))


def check_leader(cl: Cluster) -> None:
    """Fail loudly if leadership moved during the runs (the numbers would be mislabelled)."""
    if cl.name == "proconsul":
        status, body = http("GET", f"http://{cl.ips[0]}:8500/v1/status/leader")
        now = json.loads(body).rsplit(":", 1)[0]
    else:
        status, body = http("POST", f"http://{cl.leader}:2379/v3/maintenance/status", b"{}")
        st = json.loads(body)
        now = cl.leader if st["leader"] == st["header"]["member_id"] else "moved"
    if now != cl.leader:
        raise RuntimeError(f"{cl.name}: leader moved from {cl.leader} to {now}")


def preload(pc: Cluster, ec: Cluster, keys: int) -> None:
    for i in range(keys):
        k = f"bench/key{i:04d}"
        st, body = http("PUT", f"http://{pc.leader}:8500/v1/kv/{k}", VALUE.encode())
        assert st == 200 and body.strip() == b"true", (st, body)
        st, body = http("PUT", f"http://{ec.leader}:2379/v2/keys/{k}", f"value={VALUE}".encode(),
                        {"Content-Type": "application/x-www-form-urlencoded"})
        assert st in (200, 201), (st, body)
        # v2 and v3 keyspaces are separate in etcd 3.4: write the key for v3 too.
        st, body = http("POST", f"http://{ec.leader}:2379/v3/kv/put",
                        json.dumps({"key": b64(k), "value": b64(VALUE)}).encode())
        assert st == 200, (st, body)
    k = f"bench/key{keys // 2:04d}"
    st, body = http("GET", f"http://{pc.leader}:8500/v1/kv/{k}?consistent")
    assert st == 200 and json.loads(body)[0]["Key"] == k, body
    st, body = http("GET", f"http://{ec.leader}:2379/v2/keys/{k}?quorum=true")
    assert st == 200 and json.loads(body)["node"]["value"] == VALUE, body
    st, body = http("POST", f"http://{ec.leader}:2379/v3/kv/range", json.dumps({"key": b64(k)}).encode())
    assert st == 200 and base64.b64decode(json.loads(body)["kvs"][0]["value"]).decode() == VALUE, body


# ----------------------------------------------------------------------------------- reporting


def summarise(results: list[Result], pairs: list[tuple[str, Case, Case | None]], concs: list[int]) -> list[dict[str, Any]]:
    def med(rs: list[Result], f: str) -> float:
        return statistics.median(getattr(r, f) for r in rs)

    rows = []
    for conc in concs:
        for label, pcase, ecase in pairs:
            pr = [r for r in results if r.system == "proconsul" and r.op == pcase.op and r.conc == conc]
            er = [r for r in results if ecase and r.system == "etcd" and r.op == ecase.op and r.conc == conc]
            if not pr or not er:
                continue
            ratios = [p.rps / e.rps for p in pr for e in er if p.round == e.round and e.rps > 0]
            entries = [r.batches["entries_per_call"] for r in pr if r.batches and r.batches["calls"]]
            rows.append({
                "pair": label, "conc": conc, "p_op": pcase.op, "e_op": ecase.op if ecase else "",
                "p_rps": med(pr, "rps"), "p_p50": med(pr, "p50_ms"), "p_p99": med(pr, "p99_ms"),
                "p_p999": med(pr, "p999_ms"),
                "e_rps": med(er, "rps"), "e_p50": med(er, "p50_ms"), "e_p99": med(er, "p99_ms"),
                "e_p999": med(er, "p999_ms"),
                "p_cpu_ms": [statistics.median(r.cpu_ms_per_req[i] for r in pr) for i in range(3)],
                "e_cpu_ms": [statistics.median(r.cpu_ms_per_req[i] for r in er) for i in range(3)],
                "ratio": statistics.median(ratios) if ratios else float("nan"),
                "p_rps_all": [round(r.rps) for r in pr], "e_rps_all": [round(r.rps) for r in er],
                "p_leader_cpu": med(pr, "leader_cpu"), "p_cluster_cpu": med(pr, "cluster_cpu"),
                "e_leader_cpu": med(er, "leader_cpu"), "e_cluster_cpu": med(er, "cluster_cpu"),
                "other": statistics.median([r.other for r in pr + er]),
                "errors": sum(r.errors for r in pr + er),
                "p_entries_per_fsync": statistics.median(entries) if entries else None,
            })
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    head = (f"{'pair':30} {'conc':>4} | {'pc req/s':>8} {'p50':>6} {'p99':>6} {'p99.9':>6} | {'etcd req/s':>10} "
            f"{'p50':>6} {'p99':>6} {'p99.9':>6} | {'ratio':>5} | {'pc cpu ms/req L,F,F':>19} "
            f"{'etcd cpu ms/req L,F,F':>21} {'other':>5} {'ent/fsync':>9} {'err':>4}")
    print(head)
    print("-" * len(head))
    for r in rows:
        epf = f"{r['p_entries_per_fsync']:.1f}" if r["p_entries_per_fsync"] is not None else "-"
        pcpu = ",".join(f"{x:.3f}" for x in r["p_cpu_ms"])
        ecpu = ",".join(f"{x:.3f}" for x in r["e_cpu_ms"])
        print(f"{r['pair']:30} {r['conc']:>4} | {r['p_rps']:>8.0f} {r['p_p50']:>6.2f} {r['p_p99']:>6.2f} "
              f"{r['p_p999']:>6.1f} | {r['e_rps']:>10.0f} {r['e_p50']:>6.2f} {r['e_p99']:>6.2f} {r['e_p999']:>6.1f} | "
              f"{r['ratio']:>5.2f} | {pcpu:>19} {ecpu:>21} {r['other']:>5.2f} {epf:>9} {r['errors']:>4}")


# ---------------------------------------------------------------------------------------- main


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description="3-server proconsul vs 3-member etcd (wrk)")
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per measured run")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up before each run")
    ap.add_argument("--conc", default="16,64", help="comma-separated wrk connection counts")
    ap.add_argument("--rounds", type=int, default=2, help="rounds (order of systems alternates)")
    ap.add_argument("--keys", type=int, default=100, help="keys written before the runs")
    ap.add_argument("--no-rr", action="store_true", help="skip the round-robin PUT runs")
    ap.add_argument("--no-v3", action="store_true", help="skip etcd v3 PUT and v2 quorum GET")
    ap.add_argument("--only", default="", help="comma list of pair labels to run (prefix match)")
    ap.add_argument("--data-root", default="/tmp", help="parent of the data dirs (both systems)")
    ap.add_argument("--profile", default="", help="directory: after the comparison, run a profiled "
                    "proconsul cluster under PUT load (at each --conc) and write s1..s3.prof and stats there")
    ap.add_argument("--profile-seconds", type=float, default=15.0,
                    help="seconds of profiled load at each of --conc's concurrencies")
    ap.add_argument("--profile-follower", action="store_true",
                    help="in the profiled phase, send the PUTs to a follower (forwarded writes)")
    ap.add_argument("--profile-op", choices=("put", "consistent"), default="put",
                    help="the profiled phase's load: PUTs (default) or ?consistent GETs of one key")
    ap.add_argument("--raft-multiplier", type=int, default=None,
                    help="proconsul's performance.raft_multiplier (default: the agent's default, 5)")
    ap.add_argument("--http-workers", type=int, default=1,
                    help="proconsul's http_workers on every server (processes serving HTTP; 1: the agent alone)")
    ap.add_argument("--snapshot-interval", type=float, default=None,
                    help="proconsul's raft_snapshot_interval in seconds (default: the agent's, 30 s; a "
                         "snapshot is checked for every 1-2x this): lower, a short run holds several snapshots")
    ap.add_argument("--snapshot-threshold", type=int, default=None,
                    help="proconsul's raft_snapshot_threshold in entries (default: the agent's, 16384)")
    ap.add_argument("--keep-data", action="store_true", help="keep the data dirs (logs are always kept)")
    ap.add_argument("--json", help="write machine info and results here")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    for tool in ("wrk", "etcd"):
        if shutil.which(tool) is None:
            print(f"{tool} not found: apt-get install -y wrk etcd-server", file=sys.stderr)
            return 2
    concs = [int(c) for c in args.conc.split(",")]
    info = machine()
    info["etcd"] = subprocess.run(["etcd", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    info["data_root"] = args.data_root
    info["data_fs"] = subprocess.run(["df", "--output=source,fstype,target", args.data_root],
                                     capture_output=True, text=True).stdout.split("\n")[1]
    print("# " + json.dumps(info), flush=True)

    procs = Procs()
    tmp = Path(tempfile.mkdtemp(prefix="raft_vs_etcd.", dir=args.data_root))
    stats_dir = tmp / "stats"
    stats_dir.mkdir()
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    results: list[Result] = []
    pairs: list[tuple[str, Case, Case | None]] = []
    profile: dict[str, Any] = {}
    try:
        pprefix = free_subnet((8300, 8301, 8500, 8600))
        eprefix = free_subnet((2379, 2380), avoid=pprefix)
        ec = start_etcd(procs, tmp, eprefix)
        pc = start_proconsul(procs, tmp, pprefix, None, stats_dir, args.raft_multiplier, args.http_workers,
                             snapshot_settings(args))
        print(f"# proconsul {pc.ips} leader {pc.leader} pids {pc.pids()}", flush=True)
        print(f"# etcd      {ec.ips} leader {ec.leader} pids {ec.pids()}", flush=True)
        st, body = http("GET", f"http://{ec.leader}:2379/v2/keys/")
        print(f"# etcd v2 API: GET /v2/keys/ -> {st}", flush=True)
        preload(pc, ec, args.keys)
        pairs = cases(pc, ec, not args.no_rr, not args.no_v3)
        if args.only:
            wanted = [w.strip() for w in args.only.split(",")]
            pairs = [p for p in pairs if any(p[0].startswith(w) for w in wanted)]
        clusters = {"proconsul": pc, "etcd": ec}
        done: set[tuple[str, str, int, int]] = set()
        for rnd in range(1, args.rounds + 1):
            for conc in concs:
                for _label, pcase, ecase in pairs:
                    order = [pcase, ecase] if rnd % 2 == 1 else [ecase, pcase]
                    for case in order:
                        if case is None:
                            continue
                        key = (case.system, case.op, conc, rnd)
                        if key in done:  # the proconsul PUT is paired with both etcd PUTs
                            continue
                        done.add(key)
                        cl = clusters[case.system]
                        r = run_case(case, cl, conc, rnd, args, tmp, stats_dir)
                        results.append(r)
                        extra = ""
                        if r.batches:
                            b = r.batches
                            extra = (f"  write_db {b['calls']} calls {b['entries']} entries "
                                     f"{b['entries_per_call']:.1f}/call {b['ms_per_call']:.2f} ms/call")
                        cpu = ",".join(f"{x:.3f}" for x in r.cpu_ms_per_req)
                        print(f"# round {rnd} {case.system:9} {case.op:24} c={conc:<3} {r.rps:8.0f} req/s  "
                              f"p50 {r.p50_ms:7.2f}  p99 {r.p99_ms:7.2f}  p99.9 {r.p999_ms:7.1f} ms  "
                              f"cpu ms/req L,F,F {cpu}  cpu L {r.leader_cpu:4.2f} "
                              f"all {r.cluster_cpu:4.2f}  wrk {r.wrk_cpu:4.2f}  other {r.other:4.2f}  "
                              f"err {r.errors}{extra}  t {r.window[0]:.3f}-{r.window[1]:.3f}", flush=True)
            check_leader(pc)
            check_leader(ec)
        # both clusters must still answer correctly after the load (the key PUT runs write, or,
        # when `--only` ran none, a preloaded one)
        key = "bench/put" if any(c.op.startswith("PUT") for _, c, _ in pairs) else "bench/key0000"
        st, body = http("GET", f"http://{pc.leader}:8500/v1/kv/{key}?consistent")
        assert st == 200 and json.loads(body)[0]["Key"] == key, body
        st, body = http("GET", f"http://{ec.leader}:2379/v2/keys/{key}?quorum=true")
        assert st == 200, body
        procs.stop_all()

        if args.profile:
            profile = run_profile(args, procs, Path(args.profile), pprefix)
    finally:
        procs.stop_all()
        if not args.keep_data:
            for d in [*tmp.glob("[pe][123]"), *tmp.parent.glob("raft_prof.*/p[123]")]:
                if d.is_dir() and d.parent in (tmp, Path(profile.get("root", tmp))):
                    shutil.rmtree(d, ignore_errors=True)
    rows = summarise(results, pairs, concs)
    print()
    print_table(rows)
    print("\nratio = proconsul req/s / etcd req/s (median of per-round ratios); cpu L/all = cores used by the "
          "leader / by all three members; cpu ms/req L,F,F = CPU milliseconds per request spent by the leader and each follower; other = cores busy with anything else (noise); ent/fsync = Raft "
          "entries per DurableLog.write_db call on the proconsul leader")
    print(f"# logs and data in {tmp}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "args": vars(args), "rows": rows,
                                               "runs": [asdict(r) for r in results], "profile": profile},
                                              indent=2))
    return 0


def run_profile(args: argparse.Namespace, procs: Procs, out: Path, prefix: str) -> dict[str, Any]:
    """A fresh proconsul cluster, every server under cProfile; PUT load (or `?consistent` GETs,
    `--profile-op consistent`) on the leader (or a follower, `--profile-follower`)."""
    out.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="raft_prof.", dir=args.data_root))
    sdir = root / "stats"
    sdir.mkdir()
    pc = start_proconsul(procs, root, prefix, out, sdir, args.raft_multiplier)
    print(f"# profile: proconsul leader {pc.leader} (pid {pc.leader_pid()})", flush=True)
    for i in range(args.keys):
        http("PUT", f"http://{pc.leader}:8500/v1/kv/bench/key{i:04d}", VALUE.encode())
    if args.profile_op == "consistent":
        case = Case("proconsul", "GET consistent", "/v1/kv/bench/key0050?consistent", "")
    else:
        case = Case("proconsul", "PUT", "/v1/kv/bench/put", lua_request("PUT", VALUE))
    script = root / "put.lua"
    script.write_text(case.lua)
    target = pc.follower() if args.profile_follower else pc.leader
    url = f"http://{target}:8500{case.path}"
    res: dict[str, Any] = {"root": str(root), "leader": pc.leader, "leader_node": f"s{pc.ips.index(pc.leader) + 1}",
                           "target": target, "runs": []}
    stats_file = sdir / f"s{pc.ips.index(pc.leader) + 1}.json"
    for conc in [int(c) for c in args.conc.split(",")]:
        s0 = read_stats(stats_file)
        o, _ = run_wrk(url, conc, args.profile_seconds, script, None, 1)
        time.sleep(0.35)
        rps, p50, p99, errors = parse_wrk(o)
        b = batch_delta(s0, read_stats(stats_file))
        res["runs"].append({"conc": conc, "rps": rps, "p50_ms": p50, "p99_ms": p99, "errors": errors, "batches": b})
        print(f"# profile run c={conc}: {rps:.0f} req/s p50 {p50:.2f} p99 {p99:.2f} batches {b}", flush=True)
    check_leader(pc)
    procs.stop_all()  # SIGTERM: the wrappers dump their profiles
    (out / "leader.txt").write_text(res["leader_node"] + "\n")
    return res


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
