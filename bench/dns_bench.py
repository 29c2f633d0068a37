"""DNS SRV lookups against a dev agent, next to the ceiling of a trivial dnslib UDP responder.

Run by hand (needs `dnsperf`: `apt-get install -y dnsperf`):

    .venv/bin/python bench/dns_bench.py                         # 10 s per run, 2 s warm-up, c=16,64
    .venv/bin/python bench/dns_bench.py --repeat 3 --json /tmp/dns.json
    .venv/bin/python bench/dns_bench.py --edns                  # EDNS0 queries (whole answer fits)

What it does, all on 127.0.0.1:
1. starts the trivial responder (this file with `--serve-trivial PORT`: uvloop, one
   DatagramProtocol, every datagram parsed with dnslib and answered in the callback with a fixed
   reply of `--trivial-records` SRV records plus their A glue, packed by dnslib) and a dev agent
   (`proconsul agent -dev -http-port=P -dns-port=Q -node=bench`) as separate processes;
2. registers `--instances` instances of `web` (`web-N`, address 10.0.0.N+1, port 8000+N) through
   `PUT /v1/agent/service/register`, and checks that both servers answer `web.service.consul SRV`;
3. for each concurrency c: dnsperf `-c c -q c` (c client sockets, c queries outstanding) on the
   trivial responder (baseline) and on the agent, each a `--warmup` run (discarded) then a
   `--duration` run with `-v`, whose per-query lines give the latency percentiles (dnsperf 2.10
   prints only the average and stddev itself);
4. prints queries/s, p50/p99, the ratio to the baseline of the same round, lost queries, the CPU
   the server used (/proc/<pid>/stat), the CPU dnsperf used (wait4), and `other`: cores busy
   with anything else during the run (noise from neighbours).

Everything it started is stopped by pid in a `finally`, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    HOST,
    Procs,
    agent_command,
    cpu_seconds,
    free_port,
    http_put,
    python_exe,
    wait_http,
)

QNAME = "web.service.consul"


# ------------------------------------------------------------------------- trivial responder


def serve_trivial(port: int, records: int) -> int:
    """The ceiling: parse with dnslib, answer a fixed SRV reply, pack with dnslib, in the callback."""
    import asyncio

    from dnslib import QTYPE, RR, SRV, A, DNSRecord

    answers = [
        RR(QNAME + ".", QTYPE.SRV, ttl=0, rdata=SRV(1, 1, 8000 + i, f"0a00{i + 1:04x}.addr.dc1.consul."))
        for i in range(records)
    ]
    glue = [
        RR(f"0a00{i + 1:04x}.addr.dc1.consul.", QTYPE.A, ttl=0, rdata=A(f"10.0.0.{i + 1}"))
        for i in range(records)
    ]

    class Proto(asyncio.DatagramProtocol):
        transport: Any = None

        def connection_made(self, transport: Any) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: Any) -> None:
            try:
                reply = DNSRecord.parse(data).reply()
            except Exception:
                return
            for rr in answers:
                reply.add_answer(rr)
            for rr in glue:
                reply.add_ar(rr)
            self.transport.sendto(reply.pack(), addr)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(Proto, local_addr=(HOST, port))
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        print(f"ready {HOST}:{port} loop={type(loop).__module__}", flush=True)
        try:
            await stop.wait()
        finally:
            transport.close()

    try:
        import uvloop  # type: ignore[import-not-found]

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(run())
    return 0


# ------------------------------------------------------------------------------ processes


def dns_query(
    port: int, edns: bool, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 30.0
) -> Any:
    """One `web.service.consul SRV` query over UDP, retried until answered; the parsed reply."""
    from dnslib import EDNS0, DNSRecord

    q = DNSRecord.question(QNAME, "SRV")
    if edns:
        q.add_ar(EDNS0(udp_len=4096))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}; log:\n{log.read_text()[-2000:]}")
        try:
            return DNSRecord.parse(q.send(HOST, port, timeout=1))
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"no DNS answer on {port} after {timeout_s}s; log:\n{log.read_text()[-2000:]}")


def cpu_busy() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine from /proc/stat."""
    parts = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    vals = [int(v) for v in parts[1:9]]
    idle = vals[3] + vals[4]
    return sum(vals) - idle, sum(vals)


# -------------------------------------------------------------------------------- dnsperf


@dataclass
class Result:
    target: str  # trivial | agent
    conc: int
    qps: float
    p50_ms: float
    p99_ms: float
    completed: int
    lost: int
    cpu: float  # server CPU used during the run, in cores
    perf_cpu: float  # CPU dnsperf itself used, in cores
    other: float  # cores busy with anything but the server and dnsperf: noise

    @property
    def per_core(self) -> float:
        return self.qps / self.cpu if self.cpu > 0 else float("nan")


def run_dnsperf(
    port: int, conc: int, seconds: float, qfile: Path, edns: bool, verbose_out: Path | None
) -> tuple[str, float]:
    """dnsperf's summary (stdout without the per-query lines) and the CPU seconds it used."""
    cmd = [
        "dnsperf",
        "-s",
        HOST,
        "-p",
        str(port),
        "-d",
        str(qfile),
        "-c",
        str(conc),
        "-q",
        str(conc),
        "-l",
        f"{seconds:g}",
        "-t",
        "2",
    ]
    if edns:
        cmd.append("-e")
    if verbose_out is not None:
        cmd.append("-v")
    with open(verbose_out or os.devnull, "w") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait()
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        stderr = err.read()
    text = verbose_out.read_text() if verbose_out is not None else ""
    if proc.returncode != 0:
        raise RuntimeError(f"dnsperf failed ({proc.returncode}): {stderr}\n{text[-2000:]}")
    return text, usage.ru_utime + usage.ru_stime


# `> NOERROR web.service.consul SRV 0.000123` (status, query, latency in seconds)
_LINE = re.compile(r"^> (\S+) .* ([\d.]+)$", re.M)


def parse_dnsperf(out: str) -> tuple[float, float, float, int, int, dict[str, int]]:
    qps = float(re.search(r"Queries per second:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    completed = int(re.search(r"Queries completed:\s+(\d+)", out).group(1))  # type: ignore[union-attr]
    lost = int(re.search(r"Queries lost:\s+(\d+)", out).group(1))  # type: ignore[union-attr]
    lat: list[float] = []
    codes: dict[str, int] = {}
    for m in _LINE.finditer(out):
        codes[m.group(1)] = codes.get(m.group(1), 0) + 1
        lat.append(float(m.group(2)))
    if not lat:
        raise RuntimeError(f"no per-query lines in dnsperf -v output:\n{out[-2000:]}")
    lat.sort()
    p50 = lat[len(lat) // 2] * 1000
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
    return qps, p50, p99, completed, lost, codes


def measure(
    target: str, port: int, pid: int, conc: int, args: argparse.Namespace, qfile: Path, tmp: Path
) -> Result:
    if args.warmup > 0:
        run_dnsperf(port, conc, args.warmup, qfile, args.edns, None)
    vout = tmp / f"dnsperf.{target}.{conc}.txt"
    c0, t0, b0 = cpu_seconds(pid), time.monotonic(), cpu_busy()
    out, perf_cpu_s = run_dnsperf(port, conc, args.duration, qfile, args.edns, vout)
    c1, t1, b1 = cpu_seconds(pid), time.monotonic(), cpu_busy()
    qps, p50, p99, completed, lost, codes = parse_dnsperf(out)
    if set(codes) != {"NOERROR"}:
        raise RuntimeError(f"{target}: unexpected rcodes {codes}")
    if args.verbose:
        print("\n".join(line for line in out.splitlines() if not line.startswith(">")), file=sys.stderr)
    vout.unlink()
    wall = t1 - t0
    busy = (b1[0] - b0[0]) / max(1, b1[1] - b0[1]) * (os.cpu_count() or 1)
    server, perf = (c1 - c0) / wall, perf_cpu_s / wall
    return Result(target, conc, qps, p50, p99, completed, lost, server, perf, max(0.0, busy - server - perf))


# ------------------------------------------------------------------------------------ main


def machine() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    probe = (
        "import sys, importlib.metadata as m, importlib.util as u; "
        "print(sys.version.split()[0], m.version('dnslib'), "
        "m.version('uvloop') if u.find_spec('uvloop') else 'none')"
    )
    py, dnslib_v, uv = subprocess.run(
        [python_exe(), "-c", probe], capture_output=True, text=True, check=True
    ).stdout.split()
    perf = subprocess.run(["dnsperf", "-h"], capture_output=True, text=True)
    m = re.search(r"Version (\S+)", perf.stdout + perf.stderr)
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": py,
        "dnslib": dnslib_v,
        "uvloop": uv,
        "dnsperf": m.group(1) if m else "?",
    }


def summarise(results: list[Result]) -> list[dict[str, Any]]:
    """Median over rounds of each (target, conc), with the ratio to the trivial responder."""
    groups: dict[tuple[str, int], list[Result]] = {}
    for r in results:
        groups.setdefault((r.target, r.conc), []).append(r)
    rows = []
    for (target, conc), rs in groups.items():
        base = groups[("trivial", conc)]
        ratios = [r.qps / b.qps for r, b in zip(rs, base, strict=True)]  # per round, then median
        rows.append(
            {
                "target": target,
                "conc": conc,
                "qps": statistics.median(r.qps for r in rs),
                "qps_all": [round(r.qps) for r in rs],
                "p50_ms": statistics.median(r.p50_ms for r in rs),
                "p99_ms": statistics.median(r.p99_ms for r in rs),
                "p99_all": [round(r.p99_ms, 2) for r in rs],
                "ratio_qps": statistics.median(ratios),
                "cpu": statistics.median(r.cpu for r in rs),
                "per_core": statistics.median(r.per_core for r in rs),
                "ratio_per_core": statistics.median(
                    r.per_core / b.per_core for r, b in zip(rs, base, strict=True)
                ),
                "perf_cpu": statistics.median(r.perf_cpu for r in rs),
                "other": statistics.median(r.other for r in rs),
                "lost": sum(r.lost for r in rs),
            }
        )
    rows.sort(key=lambda row: (row["conc"], row["target"] != "trivial"))
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    head = (
        f"{'server':8} {'conc':>4} {'qps':>8} {'p50 ms':>7} {'p99 ms':>7} {'x qps':>6} "
        f"{'cpu':>5} {'qps/core':>9} {'x/core':>6} {'dnsperf':>7} {'other':>5} {'lost':>5}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['target']:8} {r['conc']:>4} {r['qps']:>8.0f} {r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f} "
            f"{r['ratio_qps']:>6.2f} {r['cpu']:>5.2f} {r['per_core']:>9.0f} {r['ratio_per_core']:>6.2f} "
            f"{r['perf_cpu']:>7.2f} {r['other']:>5.2f} {r['lost']:>5}"
        )


def describe(reply: Any) -> str:
    from dnslib import QTYPE

    kinds = lambda rrs: ",".join(f"{QTYPE[rr.rtype]}" for rr in rrs) or "-"  # noqa: E731
    return (
        f"rcode={reply.header.rcode} tc={reply.header.tc} answers={len(reply.rr)} [{kinds(reply.rr)}] "
        f"additional={len(reply.ar)} [{kinds(reply.ar)}] bytes={len(reply.pack())}"
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description="DNS SRV lookups: dev agent vs a trivial dnslib responder (dnsperf)"
    )
    parser.add_argument("--serve-trivial", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up before each run")
    parser.add_argument("--conc", default="16,64", help="comma-separated concurrencies (dnsperf -c and -q)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the table shows medians")
    parser.add_argument("--instances", type=int, default=10, help="instances of `web` registered")
    parser.add_argument(
        "--trivial-records", type=int, default=1, help="SRV records (+A glue) in the trivial reply"
    )
    parser.add_argument(
        "--edns", action="store_true", help="dnsperf -e: EDNS0 queries (4096-byte UDP buffer)"
    )
    parser.add_argument("--agent-arg", action="append", default=[], help="extra agent flag (repeatable)")
    parser.add_argument(
        "--agent-cmd",
        help="run the agent with this command prefix instead (e.g. a profiler); the agent flags are appended",
    )
    parser.add_argument("--only-agent", action="store_true", help="skip the trivial runs (profiling)")
    parser.add_argument("--json", help="write machine info and results here")
    parser.add_argument("-v", "--verbose", action="store_true", help="print dnsperf's summaries")
    args = parser.parse_args(argv)
    if args.serve_trivial is not None:
        return serve_trivial(args.serve_trivial, args.trivial_records)
    if shutil.which("dnsperf") is None:
        print("dnsperf not found: apt-get install -y dnsperf", file=sys.stderr)
        return 2
    concs = [int(c) for c in args.conc.split(",")]

    info = machine()
    print("# " + json.dumps(info), flush=True)
    procs = Procs()
    tmp = Path(tempfile.mkdtemp(prefix="dns_bench."))
    qfile = tmp / "queries.txt"
    qfile.write_text(f"{QNAME} SRV\n")
    # SIGTERM -> KeyboardInterrupt, so the finally below runs and stops the servers.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    results: list[Result] = []
    try:
        tport = free_port()
        trivial_cmd = [
            python_exe(),
            str(Path(__file__).resolve()),
            "--serve-trivial",
            str(tport),
            "--trivial-records",
            str(args.trivial_records),
        ]
        trivial = procs.start("trivial", trivial_cmd, tmp / "trivial.log")
        aport, dport = free_port(), free_port()
        agent_cmd = agent_command(aport, dport, args.agent_arg)
        if args.agent_cmd:
            agent_cmd = [*args.agent_cmd.split(), *agent_cmd[agent_cmd.index("-dev") :]]
        agent = procs.start("agent", agent_cmd, tmp / "agent.log")
        print(f"# trivial pid {trivial.pid} udp {tport}: {' '.join(trivial_cmd)}", flush=True)
        print(f"# agent pid {agent.pid} http {aport} dns {dport}: {' '.join(agent_cmd)}", flush=True)
        wait_http(f"http://{HOST}:{aport}/v1/status/leader", agent, tmp / "agent.log")
        for i in range(args.instances):
            body = {"ID": f"web-{i}", "Name": "web", "Address": f"10.0.0.{i + 1}", "Port": 8000 + i}
            http_put(f"http://{HOST}:{aport}/v1/agent/service/register", json.dumps(body).encode())
        got = json.loads(urllib.request.urlopen(f"http://{HOST}:{aport}/v1/catalog/service/web").read())
        assert len(got) == args.instances, got
        # anti-entropy may sync the catalog a little later than the agent's local state
        deadline = time.monotonic() + 10
        while True:
            reply = dns_query(dport, True, agent, tmp / "agent.log")
            if len(reply.rr) == args.instances or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        print(f"# agent  reply (EDNS 4096): {describe(reply)}", flush=True)
        print(
            f"# agent  reply (as measured, edns={args.edns}): "
            f"{describe(dns_query(dport, args.edns, agent, tmp / 'agent.log'))}",
            flush=True,
        )
        print(
            f"# trivial reply (as measured): {describe(dns_query(tport, args.edns, trivial, tmp / 'trivial.log'))}",
            flush=True,
        )
        print(
            f"# dnsperf: dnsperf -s {HOST} -p PORT -d {qfile} -c C -q C -l {args.duration:g} -t 2"
            f"{' -e' if args.edns else ''} -v   (after a {args.warmup:g} s run without -v)",
            flush=True,
        )

        cases = [("trivial", tport, trivial), ("agent", dport, agent)]
        for rnd in range(args.repeat):
            for conc in concs:
                for target, port, proc in cases:
                    if args.only_agent and target == "trivial":
                        continue
                    r = measure(target, port, proc.pid, conc, args, qfile, tmp)
                    results.append(r)
                    print(
                        f"# round {rnd + 1} {target:7} c={conc:<3} {r.qps:8.0f} q/s  p50 {r.p50_ms:6.2f} ms  "
                        f"p99 {r.p99_ms:6.2f} ms  cpu {r.cpu:4.2f}  dnsperf {r.perf_cpu:4.2f}  "
                        f"other {r.other:4.2f}  lost {r.lost}",
                        flush=True,
                    )
        # the agent must still answer correctly after the load
        after = dns_query(dport, True, agent, tmp / "agent.log")
        assert len(after.rr) == args.instances, describe(after)
    finally:
        procs.stop_all()
    if args.only_agent:
        for r in results:
            print(asdict(r))
        return 0
    rows = summarise(results)
    print()
    print_table(rows)
    print(
        "\nx qps = agent q/s / trivial q/s in the same round (median over rounds); cpu = server cores used; "
        "qps/core = q/s / cpu; x/core = agent qps/core / trivial qps/core; dnsperf = cores dnsperf used; "
        "other = cores busy with anything else (noise); lost = dnsperf timeouts (2 s)"
    )
    print(f"# logs in {tmp}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"machine": info, "args": vars(args), "rows": rows, "runs": [asdict(r) for r in results]},
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
