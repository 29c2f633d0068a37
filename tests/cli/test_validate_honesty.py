"""`proconsul validate` refuses security settings proconsul does not honour (issue 17, item 1)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_validate_exits_non_zero_naming_the_refused_key(tmp_path: Path) -> None:
    path = tmp_path / "agent.hcl"
    path.write_text(f'data_dir = "{tmp_path}"\ntls {{ grpc {{ verify_incoming = true }} }}\n')
    proc = subprocess.run(
        [sys.executable, "-m", "proconsul", "validate", str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0
    assert "Configuration is valid!" not in proc.stdout
    assert f"{path}: tls.grpc.verify_incoming:" in proc.stderr
    assert "is not supported yet: refusing to start with it set" in proc.stderr


def test_validate_warns_about_inert_keys_and_passes(tmp_path: Path) -> None:
    path = tmp_path / "agent.hcl"
    path.write_text(
        f'data_dir = "{tmp_path}"\nbind_addr = "127.0.0.1"\nlimits {{ rpc_rate = 10.0 }}\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "proconsul", "validate", str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "Configuration is valid!" in proc.stdout
    assert "limits.rpc_rate is accepted but not implemented" in proc.stderr
