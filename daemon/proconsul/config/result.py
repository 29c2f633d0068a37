"""What a config load produces and collects on the way.

Owns `ConfigError` (every problem at once, each naming its source and key), `LoadResult`,
`Source` (one config layer: its display name, raw content and the flag behind each key) and
`Collector` (errors, warnings, and which source set each merged key, so an error about a merged
value names the file or flag it came from).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from proconsul.config.model import RuntimeConfig


class ConfigError(Exception):
    """The configuration is invalid; `.errors` lists every problem, each naming source and key."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class LoadResult:
    config: RuntimeConfig
    warnings: list[str]


@dataclass
class Source:
    """One config layer: its display name, raw content and (for flags) the flag per key."""

    name: str
    data: dict[str, Any]
    flag_for: dict[str, str] = field(default_factory=dict)  # dotted key -> "-flag"
    renamed: dict[str, str] = field(default_factory=dict)  # dotted key -> legacy key as written

    def where(self, key: str) -> str:
        flag = self.flag_for.get(key)
        if flag:
            return f"{self.name}: {flag}"
        return f"{self.name}: {self.renamed.get(key, key)}"


class Collector:
    def __init__(self) -> None:
        self.errors: list[str] = []
        self.warnings: list[str] = []
        # dotted key -> "source: key" (or "command line: -flag") of the value that won.
        self.origin: dict[str, str] = {}

    def at(self, key: str, message: str) -> None:
        """Record an error about a merged key, naming the source that set it when known."""
        where = self.origin.get(key)
        self.errors.append(f"{where}: {message}" if where else f"{key}: {message}")
