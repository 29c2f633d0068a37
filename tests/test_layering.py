"""House rule 1: the sans-I/O cores import no asyncio, socket, time, os or subprocess."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "daemon" / "proconsul"
FORBIDDEN = {"asyncio", "socket", "time", "os", "subprocess", "threading", "selectors"}
PURE = sorted(
    [*PACKAGE.glob("state/*.py"), PACKAGE / "raft" / "core.py", PACKAGE / "raft" / "quorum.py",
     PACKAGE / "gossip" / "core.py", PACKAGE / "gossip" / "broadcast.py", PACKAGE / "wire.py",
     PACKAGE / "filter.py", PACKAGE / "structs.py", PACKAGE / "coordinate.py"]
)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", [p for p in PURE if p.exists()], ids=lambda p: str(p.relative_to(PACKAGE)))
def test_pure_module_has_no_io_imports(path: Path) -> None:
    assert not (_imports(path) & FORBIDDEN), f"{path} imports {_imports(path) & FORBIDDEN}"


def test_the_scan_covers_the_state_store() -> None:
    assert PACKAGE / "state" / "store.py" in PURE and (PACKAGE / "state" / "store.py").exists()
