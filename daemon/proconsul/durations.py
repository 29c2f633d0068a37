"""Go durations: the one parser and printer of Consul's `"10s"` strings.

Owns `parse_duration` (Go's time.ParseDuration, plus numbers taken as nanoseconds as Go's
time.Duration appears in JSON bodies) and `format_duration` (Go's Duration.String()). A shared
leaf: it imports nothing of proconsul, so config, structs, http and the CLI can all use it.
"""

from __future__ import annotations

import math
import re

__all__ = ["format_duration", "parse_duration"]

_NS = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,  # micro sign, as Go accepts
    "\u03bcs": 1_000,  # Greek mu, as Go accepts
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_DURATION_PART = re.compile(r"(\d*)(?:\.(\d*))?([a-z\u00b5\u03bc]+)")
_MAX_NS = (1 << 63) - 1  # Go's time.Duration is an int64 of nanoseconds


def parse_duration(text: str | float) -> float:
    """Parse a Go duration ("300ms", "1.5h", "1m30s", "-1s", "0") into float seconds.

    A number (not a string) is taken as nanoseconds, which is how Go's time.Duration appears in
    JSON bodies of the HTTP API. Agent config files accept only strings for durations (Consul's
    decoder is not weakly typed); the config loader enforces that before calling this.
    Raises ValueError with a message naming the bad input.
    """
    # ValueError (not TypeError) for every bad input: callers catch one exception type.
    if isinstance(text, bool):
        raise ValueError(f"invalid duration {text!r}")  # noqa: TRY004
    if isinstance(text, (int, float)):
        # isnan() of a huge int overflows converting it to float: only floats can be NaN.
        if (isinstance(text, float) and math.isnan(text)) or abs(text) > _MAX_NS:  # out of int64 ns
            raise ValueError(f"invalid duration {text!r}")
        return int(text) / 1e9
    if not isinstance(text, str):
        raise ValueError(f"invalid duration {text!r}")  # noqa: TRY004
    original = text
    sign = 1
    if text[:1] in ("-", "+"):
        sign = -1 if text[0] == "-" else 1
        text = text[1:]
    if text == "0":
        return 0.0
    if not text:
        raise ValueError(f'invalid duration "{original}"')
    total = 0
    pos = 0
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        if match is None or (not match.group(1) and not match.group(2)):
            if match is None and text[pos:].replace(".", "").isdigit():
                raise ValueError(f'missing unit in duration "{original}"')
            raise ValueError(f'invalid duration "{original}"')
        whole, frac, unit = match.groups()
        scale = _NS.get(unit)
        if scale is None:
            raise ValueError(f'unknown unit "{unit}" in duration "{original}"')
        value = int(whole or "0") * scale
        if frac:
            # Exact integer arithmetic, truncating below a nanosecond as Go does.
            value += int(frac) * scale // (10 ** len(frac))
        total += value
        if total > _MAX_NS + (1 if sign < 0 else 0):
            raise ValueError(f'invalid duration "{original}"')
        pos = match.end()
        if pos < len(text) and not (text[pos].isdigit() or text[pos] == "."):
            raise ValueError(f'invalid duration "{original}"')
    return sign * total / 1e9


def _frac(value: int, digits: int) -> str:
    whole, rest = divmod(value, 10**digits)
    tail = str(rest).rjust(digits, "0").rstrip("0")
    return f"{whole}.{tail}" if tail else str(whole)


def format_duration(seconds: float) -> str:
    """Format seconds as Go's time.Duration.String(): "10s", "1m30s", "1.5s", "1h0m0s", "0s"."""
    ns = round(seconds * 1e9)
    sign = "-" if ns < 0 else ""
    u = abs(ns)
    if u == 0:
        return "0s"
    if u < 1_000:
        return f"{sign}{u}ns"
    if u < 1_000_000:
        return f"{sign}{_frac(u, 3)}\u00b5s"
    if u < 1_000_000_000:
        return f"{sign}{_frac(u, 6)}ms"
    minutes, rest = divmod(u, 60_000_000_000)
    out = _frac(rest, 9) + "s"
    if minutes:
        hours, minutes = divmod(minutes, 60)
        out = f"{minutes}m{out}"
        if hours:
            out = f"{hours}h{out}"
    return sign + out
