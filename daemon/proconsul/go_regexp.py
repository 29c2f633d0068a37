"""Go's `regexp` as Consul uses it: RE2 syntax, linear-time matching, Go-style error texts.

Owns compiling user-supplied patterns (`?filter=... matches "..."`, event node/service/tag
filters) with Google's RE2 (the `google-re2` binding), the engine Go's regexp follows. Python's
`re` backtracks: `^(a+)+$` against 26 `a`s and a `b` took seconds and blocked the agent. RE2
matches in time linear in the text, with its automaton memory capped per pattern, and it refuses
what Go refuses (lookaround, backreferences, possessive and atomic groups). The Go-syntax
differences that remain are listed in docs/COMPATIBILITY.md (`?filter`).
"""

from __future__ import annotations

from typing import Protocol

import re2

# Cap on RE2's automaton memory per compiled pattern; a larger one fails to compile instead of
# growing without bound (RE2's default is 8 MiB).
MAX_MEM = 8 << 20

_OPTIONS = re2.Options()
_OPTIONS.max_mem = MAX_MEM
_OPTIONS.log_errors = False  # errors are returned to the client, not printed on stderr


class RegexpError(ValueError):
    """The pattern is not valid Go/RE2 syntax; `detail` is the text after "error parsing regexp: "."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class Pattern(Protocol):
    def search(self, text: str) -> object | None: ...


def compile(pattern: str) -> Pattern:  # noqa: A001 - mirrors re.compile
    """Compile `pattern`; RegexpError with Go's wording where RE2's differs."""
    try:
        return re2.compile(pattern, _OPTIONS)
    except re2.error as exc:
        raw = exc.args[0] if exc.args else b""
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        raise RegexpError(_go_wording(text)) from None


def _go_wording(text: str) -> str:
    # RE2 says "<problem>: <fragment>"; Go says "<problem>: `<fragment>`" and names a few
    # problems differently.
    problem, sep, fragment = text.partition(": ")
    problem = {"invalid perl operator": "invalid or unsupported Perl syntax", "missing ]": "missing closing ]",
               "missing )": "missing closing )", "unexpected )": "unexpected )"}.get(problem, problem)
    return f"{problem}: `{fragment}`" if sep else problem
