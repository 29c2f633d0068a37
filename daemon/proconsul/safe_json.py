"""What makes a decoded JSON value safe to keep: bounded nesting and text that is valid UTF-8.

Owns the checks every entry point applies to untrusted JSON before it can reach local state,
the data dir or the catalog. Python's `json` turns an escaped lone surrogate (`"\\ud800"`) into
a `str` that every later `.encode()` refuses, so one such string accepted once makes each later
read, sync and persist of it fail; and decoding or walking deeply nested input recurses until
Python's recursion limit. Both are refused here with a plain one-line reason.
"""

from __future__ import annotations

import json
import math
from typing import Any

# Consul's own objects nest a handful of levels (txn ops, proxy config maps); 64 leaves ample
# room for opaque user maps while keeping every recursive consumer far below Python's limit.
MAX_DEPTH = 64
# Every integer a Go JSON decoder can hold (int64 or uint64); anything outside fits no Consul
# field and cannot be encoded by msgpack for the Raft log, so it is refused at the boundary.
MIN_INT = -(2**63)
MAX_INT = 2**64 - 1


class UnsafeJSON(ValueError):
    """The value is well-formed JSON but cannot be kept (too deep, or text that is not UTF-8)."""


def _check_text(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # repr() with ascii escapes keeps the reason itself printable and encodable.
        shown = text.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")
        raise UnsafeJSON(f"invalid UTF-8 in {where}: {shown[:64]!r}") from None


def check_text(text: str, where: str = "string") -> str:
    """`text` itself, or UnsafeJSON if it holds a code point UTF-8 cannot encode (a lone surrogate)."""
    _check_text(text, where)
    return text


def check_value(value: Any, max_depth: int = MAX_DEPTH) -> Any:
    """`value` itself once every string (keys included) is valid UTF-8 and nesting is at most
    `max_depth`; iterative, so a value nested past the recursion limit is refused, not a crash."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            _check_text(item, "string")
        elif isinstance(item, bool):
            pass
        elif isinstance(item, int):
            if not MIN_INT <= item <= MAX_INT:
                raise UnsafeJSON("number out of range of a 64-bit integer")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise UnsafeJSON("number out of range of a 64-bit float")
        elif isinstance(item, dict):
            if depth >= max_depth:
                raise UnsafeJSON(f"exceeded max depth of {max_depth} nested objects and arrays")
            for key, sub in item.items():
                if isinstance(key, str):
                    _check_text(key, "object key")
                stack.append((sub, depth + 1))
        elif isinstance(item, list):
            if depth >= max_depth:
                raise UnsafeJSON(f"exceeded max depth of {max_depth} nested objects and arrays")
            stack.extend((sub, depth + 1) for sub in item)
    return value


def _no_constant(name: str) -> Any:
    # Python accepts NaN and Infinity literals; JSON (and Go's decoder) does not.
    raise UnsafeJSON(f"invalid JSON literal {name}")


def loads(data: bytes | str, max_depth: int = MAX_DEPTH) -> Any:
    """Decode JSON and check it; every failure is a ValueError with a one-line reason."""
    try:
        value = json.loads(data, parse_constant=_no_constant)
    except RecursionError:
        raise UnsafeJSON(f"exceeded max depth of {max_depth} nested objects and arrays") from None
    except UnicodeDecodeError as exc:
        raise UnsafeJSON(f"invalid UTF-8 in body: {exc.reason} at byte {exc.start}") from None
    return check_value(value, max_depth)
