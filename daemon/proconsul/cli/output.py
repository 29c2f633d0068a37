"""Text layout helpers that reproduce the Go libraries behind Consul's CLI output.

Owns column alignment (`columnize`, as github.com/ryanuber/columnize lays out `members` and
`catalog nodes`), tab-aligned key/value blocks (Go's text/tabwriter with minwidth 0, padding 6, as
`kv get -detailed` and `catalog services -tags` use), Go-style JSON (`json.MarshalIndent`, which
escapes `<`, `>` and `&`), and Go's `path.Join`.
"""

from __future__ import annotations

import json
from typing import Any


def columnize(lines: list[str], delim: str = "|", glue: str = "  ") -> str:
    """Align `delim`-separated fields into columns; the last field of a line is not padded.

    Fields are stripped first, as columnize does by default; there is no trailing newline.
    """
    rows = [[cell.strip() for cell in line.split(delim)] for line in lines]
    widths: list[int] = []
    for row in rows:
        for i, cell in enumerate(row):
            if i >= len(widths):
                widths.append(len(cell))
            elif len(cell) > widths[i]:
                widths[i] = len(cell)
    out = []
    for row in rows:
        parts = [cell.ljust(widths[i]) + glue for i, cell in enumerate(row[:-1])]
        out.append("".join(parts) + (row[-1] if row else ""))
    return "\n".join(out)


def tab_align(rows: list[tuple[str, str]], padding: int = 6) -> str:
    """Two-column text/tabwriter layout: the first column padded to its widest cell + padding."""
    width = max((len(k) for k, _ in rows), default=0) + padding
    return "\n".join(k.ljust(width) + v for k, v in rows)


def go_json_indent(obj: Any, indent: str) -> str:
    """Encode like Go's json.MarshalIndent: HTML characters escaped, non-ASCII kept."""
    text = json.dumps(obj, indent=indent, ensure_ascii=False)
    # Go escapes these inside strings; outside strings they cannot occur in JSON.
    for ch, esc in (
        ("&", "\\u0026"),
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(ch, esc)
    return text


def go_path_clean(path: str) -> str:
    """Go's path.Clean: collapse `//`, `.` and `..`; "" becomes "."."""
    if not path:
        return "."
    rooted = path.startswith("/")
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            elif not rooted:
                parts.append("..")
            continue
        parts.append(part)
    cleaned = "/".join(parts)
    if rooted:
        return "/" + cleaned
    return cleaned or "."


def go_path_join(*elems: str) -> str:
    """Go's path.Join: join the non-empty elements with `/` and clean; all empty gives ""."""
    nonempty = [e for e in elems if e]
    if not nonempty:
        return ""
    return go_path_clean("/".join(nonempty))
