"""History checkers for chaos runs: each takes what a run recorded and returns a CheckResult.

- `check_cas_register`: per-key linearizability of KV read/write/cas (linearizability.py);
- `check_grow_only_set`: every acknowledged add is in the final read (sets.py);
- `check_mutex`: no two processes hold a lock at once (mutex.py);
- `check_discovery`: a faulted node leaves `?passing` and a healed one comes back, each within
  a bound (discovery.py).
"""

from .base import UNKNOWN, CheckResult, combine
from .discovery import check_discovery
from .linearizability import check_cas_register
from .mutex import check_mutex
from .sets import check_grow_only_set

__all__ = ["UNKNOWN", "CheckResult", "check_cas_register", "check_discovery", "check_grow_only_set",
           "check_mutex", "combine"]
