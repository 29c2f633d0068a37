"""History checkers for chaos runs: each takes what a run recorded and returns a CheckResult.

- `check_cas_register`: per-key linearizability of KV read/write/cas (linearizability.py);
- `check_read_your_writes`: a process's default read sees its own acknowledged writes (sessions.py);
- `check_bounded_staleness`: a `?stale` read is no older than its LastContact header plus a
  slack (staleness.py);
- `check_grow_only_set`: every acknowledged add is in the final read (sets.py);
- `check_mutex`: no two processes hold a lock at once (mutex.py);
- `check_discovery`: a faulted node leaves `?passing` and a healed one comes back, each within
  a bound (discovery.py).
"""

from .base import UNKNOWN, CheckResult, combine
from .discovery import check_discovery
from .linearizability import check_cas_register
from .mutex import check_mutex
from .sessions import check_read_your_writes
from .sets import check_grow_only_set
from .staleness import check_bounded_staleness

__all__ = ["UNKNOWN", "CheckResult", "check_bounded_staleness", "check_cas_register", "check_discovery",
           "check_grow_only_set", "check_mutex", "check_read_your_writes", "combine"]
