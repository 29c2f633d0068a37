"""`proconsul-sim`: command-line entry point of the simulation harness."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("proconsul-sim: no commands yet", file=sys.stderr)
    return 2
