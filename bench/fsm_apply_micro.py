"""Microbenchmark of what every member pays per replicated KV set below the HTTP layer.

The FSM apply of encoded KV-set commands through CommandStateMachine (time.thread_time per
write) and codec.decode_message of an AppendEntries of 8 and 27 entries (per entry). Run with
PYTHONPATH=daemon; -p adds a cProfile of the apply.
"""

import cProfile
import pstats
import statistics
import sys
import time

import msgpack
import tree_daemon  # noqa: E402,F401  (this tree's proconsul, not the venv's)
from proconsul.raft import codec
from proconsul.raft.messages import Entry, EntryKind, Message, MsgType
from proconsul.server.consensus import CommandStateMachine
from proconsul.state import commands as cmd
from proconsul.state.fsm import FSM
from proconsul.state.records import DirEntry
from proconsul.state.store import Store

N = 20000
DATAS = [cmd.encode(cmd.KVS("set", DirEntry(f"bench/k{i % 1000}", b"x" * 64))) for i in range(N)]


def fsm_bench() -> float:
    sm = CommandStateMachine(FSM(Store()))
    t = time.thread_time()
    for i, d in enumerate(DATAS, 1):
        sm.apply(i, d)
    return (time.thread_time() - t) / N * 1e6


def decode_bench(n: int) -> float:
    entries = tuple(Entry(100 + i, 3, EntryKind.NORMAL, DATAS[i]) for i in range(n))
    raw = msgpack.packb(codec.encode_message(Message(MsgType.APP, "a", "b", 3, 3, 100, entries, 99)),
                        use_bin_type=True)
    rounds = 20000 // n * 5
    t = time.thread_time()
    for _ in range(rounds):
        codec.decode_message(msgpack.unpackb(raw, raw=False))
    return (time.thread_time() - t) / (rounds * n) * 1e6


def main() -> None:
    res: dict[str, list[float]] = {"fsm": [], "dec8": [], "dec27": []}
    for _ in range(5):
        res["fsm"].append(fsm_bench())
        res["dec8"].append(decode_bench(8))
        res["dec27"].append(decode_bench(27))
    print({k: round(statistics.median(v), 2) for k, v in res.items()}, "us/write")
    if "-p" in sys.argv:
        prof = cProfile.Profile()
        prof.runcall(fsm_bench)
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
