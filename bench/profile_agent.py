"""Run a dev agent under cProfile and dump the stats when it stops (SIGTERM/SIGINT).

    .venv/bin/python bench/profile_agent.py /tmp/agent.prof -dev -http-port=18500 -dns-port=18600 -node=bench
    # ... drive load (wrk), then: kill -TERM <pid>
    .venv/bin/python -c "import pstats; pstats.Stats('/tmp/agent.prof').sort_stats('tottime').print_stats(30)"

py-spy 0.4 could not attach here ("Failed to find python version from target process"), hence
this deterministic profiler; it slows Python-level calls, so read shares, not absolute times.
"""

from __future__ import annotations

import cProfile
import sys

import tree_daemon  # noqa: E402,F401  (this tree's proconsul, not the venv's)
from proconsul.agent.agent import run_agent


def main() -> int:
    out, argv = sys.argv[1], sys.argv[2:]
    prof = cProfile.Profile()
    prof.enable()
    try:
        return run_agent(argv)
    finally:
        prof.disable()
        prof.dump_stats(out)


if __name__ == "__main__":
    sys.exit(main())
