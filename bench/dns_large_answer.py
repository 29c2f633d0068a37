"""Time to answer an SRV question for a 1,000-instance service over TCP (a 64 KiB answer), in-process.

Run by hand:

    PYTHONPATH=$PWD/daemon:$PWD/tests .venv/bin/python bench/dns_large_answer.py
    PYTHONPATH=/tmp/old/daemon:$PWD/tests .venv/bin/python bench/dns_large_answer.py   # other code

Builds the DNS pipeline over a real store as `tests/dns/test_dns.py` does (`make_server`), adds
1,000 instances of `web` each on its own node, asks `web.service.consul SRV` over "TCP" 8 times
through `DNSServer.handle`, prints the first and the median of the next 7, the answer size, and
whether dnspython parses it into the right targets and glue (names written past byte 16,383 used
to get pointers masked to 14 bits, issue 16).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path

import dns.message
from dnslib import DNSRecord

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "dns"))
from test_dns import add_instance, make_server  # noqa: E402


def main() -> int:
    server, store, _ = make_server()
    for i in range(1, 1001):
        add_instance(store, i)
    question = DNSRecord.question("web.service.consul", "SRV").pack()
    times: list[float] = []
    raw = b""
    for _ in range(8):
        t0 = time.perf_counter()
        raw = asyncio.run(server.handle(question, True)) or b""
        times.append(time.perf_counter() - t0)
    try:
        msg = dns.message.from_wire(raw)
        targets = {str(r.target) for r in msg.answer[0]}
        glue = {str(rrset.name) for rrset in msg.additional}
        ok: object = targets == glue and all(t.endswith(".node.dc1.consul.") for t in targets)
    except Exception as exc:  # the old encoder's answers may not parse at all
        ok = f"unparseable: {exc!r}"
    print(
        f"first {times[0] * 1000:.0f} ms, median of next 7 {statistics.median(times[1:]) * 1000:.0f} ms, "
        f"{len(raw)} bytes, parses into the right names: {ok}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
