"""Hand-built and generated histories shared by the checker tests (it holds no tests itself)."""

from __future__ import annotations

import random
from typing import Any

from proconsul_sim.history import FAIL, INFO, OK, History, Op


def op(process: int, f: str, value: Any, start: float, end: float | None, type: str = OK,
       key: str | None = "k", **extra: Any) -> Op:
    """A completed operation with explicit times (the checkers only look at these fields)."""
    if end is None and type != "invoke":
        raise ValueError("a completed op needs an end time")
    return Op(process, f, key, value, type, start, end, None if type == OK else "test", dict(extra))


def history(*ops: Op) -> History:
    h = History(clock=lambda: 0.0)
    h.ops = list(ops)
    return h


def random_register_history(seed: int, *, processes: int = 5, keys: int = 10, ops: int = 3000,
                            p_info: float = 0.03) -> History:
    """A history a correct CAS register would produce, with overlapping intervals.

    Each process issues one operation at a time: it starts a little after its previous one
    ended, takes effect at a random instant inside its interval (its linearization point) and
    reads, writes or swaps a per-key register at that instant. Some writes and cas end as
    `info`: half of those took effect, half never did. A cas that found the register different
    is recorded either as `fail` (Jepsen's way) or as ok with result False.
    """
    rng = random.Random(seed)
    free_at = [rng.random() for _ in range(processes)]
    planned = []
    for n in range(ops):
        p = min(range(processes), key=lambda i: free_at[i])
        start = free_at[p]
        end = start + rng.uniform(0.001, 0.05)
        free_at[p] = end + rng.uniform(0.0, 0.01)
        planned.append((rng.uniform(start, end), n, p, start, end))
    registers: dict[str, Any] = {}
    seen: dict[str, list[Any]] = {}
    records: list[Op] = []
    for _point, n, p, start, end in sorted(planned):  # in linearization-point order
        key = f"k{rng.randrange(keys)}"
        current = registers.get(key)
        r = rng.random()
        value = f"p{p}-{n}"
        if r < 0.35:
            if rng.random() < p_info:
                if rng.random() < 0.5:
                    registers[key] = value
                records.append(op(p, "write", value, start, end, INFO, key))
            else:
                registers[key] = value
                records.append(op(p, "write", value, start, end, OK, key))
        elif r < 0.55:
            choices = [current, *seen.get(key, [])[-3:], None]
            expected = rng.choice(choices)
            swapped = expected == current
            if rng.random() < p_info:
                if swapped and rng.random() < 0.5:
                    registers[key] = value
                records.append(op(p, "cas", (expected, value), start, end, INFO, key))
            elif swapped:
                registers[key] = value
                records.append(op(p, "cas", (expected, value), start, end, OK, key, result=True))
            elif rng.random() < 0.5:
                records.append(op(p, "cas", (expected, value), start, end, FAIL, key))
            else:
                records.append(op(p, "cas", (expected, value), start, end, OK, key, result=False))
        else:
            records.append(op(p, "read", current, start, end, OK, key))
            if current is not None:
                seen.setdefault(key, []).append(current)
    records.sort(key=lambda o: o.start)
    return history(*records)
