"""Makes this tree's `daemon/` the `proconsul` a bench imports, in its own process.

The shared venv's editable install maps `proconsul` to one checkout; a bench run from another
worktree would otherwise measure that checkout. Importing this module first (before any
`proconsul` import) puts this tree's daemon at the front of `sys.path`, unless PYTHONPATH already
names a daemon on purpose (another tree measured with this bench file). Processes a bench starts
get the same through `common.tree_env`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

TREE_DAEMON = str(Path(__file__).resolve().parent.parent / "daemon")


def pythonpath_names_a_daemon(pythonpath: str) -> bool:
    return any(os.path.isdir(os.path.join(p, "proconsul")) for p in pythonpath.split(os.pathsep) if p)


if not pythonpath_names_a_daemon(os.environ.get("PYTHONPATH", "")) and TREE_DAEMON not in sys.path:
    sys.path.insert(0, TREE_DAEMON)
