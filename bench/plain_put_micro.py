"""Microbenchmark of `http.fast.plain_put`: reading one plain KV PUT (wrk's head, a 64-byte body)
from its bytes, the first step of every fast-path write on the member that receives it.

Prints the best of 5 repeats of 200,000 calls, in µs per call. Run with PYTHONPATH=<tree>/daemon
to measure that tree (see tree_daemon.py).
"""

import timeit

import tree_daemon  # noqa: F401  (this tree's proconsul, not the venv's)
from proconsul.http.fast import plain_put

REQUEST = b"PUT /v1/kv/bench/k123 HTTP/1.1\r\nHost: 127.7.6.2:8500\r\nContent-Length: 64\r\n\r\n" + b"x" * 64
CALLS = 200_000


def main() -> None:
    assert plain_put(REQUEST) == ("/v1/kv/bench/k123", b"x" * 64)
    best = min(timeit.repeat(lambda: plain_put(REQUEST), number=CALLS, repeat=5))
    print(f"plain_put: {best / CALLS * 1e6:.2f} us/call")


if __name__ == "__main__":
    main()
