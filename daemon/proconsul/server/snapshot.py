"""The snapshot archive of `GET/PUT /v1/snapshot` and `proconsul snapshot save/restore/inspect`.

Owns the file format, which follows Consul's (hashicorp/consul `snapshot/archive.go`): a gzipped
tar holding, in this order,
- `meta.json`: `{"Version": 1, "ID": "<term>-<index>-<unix ms>", "Index", "Term", "Size",
  "Configuration": {"Servers": [{"Suffrage", "ID", "Address"}]}, "ConfigurationIndex"}`;
- `state.bin`: the state store's own serialisation (`Store.snapshot()`, msgpack), so a proconsul
  snapshot restores into proconsul, not into Consul (and the other way round);
- `SHA256SUMS`: `<hex sha256>  <name>` lines for the two files above, as `sha256sum` prints.

Reading verifies every checksum and refuses an archive with a missing, extra or altered member
(`SnapshotError`), before anything is applied. Pure functions over bytes; time is an argument.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import zlib
from dataclasses import dataclass
from typing import Any

import msgpack

VERSION = 1
META = "meta.json"
STATE = "state.bin"
SUMS = "SHA256SUMS"


class SnapshotError(ValueError):
    """The archive is not a valid snapshot (bad gzip/tar, missing member, checksum mismatch)."""


@dataclass(frozen=True, slots=True)
class Archive:
    meta: dict[str, Any]
    state: bytes


def snapshot_id(term: int, index: int, now_ms: int) -> str:
    return f"{term}-{index}-{now_ms}"


def build(
    state: bytes,
    *,
    index: int,
    term: int,
    now_ms: int,
    servers: list[dict[str, Any]] | None = None,
    configuration_index: int = 0,
) -> bytes:
    """A complete archive (gzipped tar) for `state` taken at `index`/`term`."""
    meta = {
        "Version": VERSION,
        "ID": snapshot_id(term, index, now_ms),
        "Index": index,
        "Term": term,
        "Peers": None,
        "Configuration": {"Servers": servers or []},
        "ConfigurationIndex": configuration_index,
        "Size": len(state),
    }
    meta_bytes = json.dumps(meta, separators=(",", ":")).encode()
    sums = "".join(f"{hashlib.sha256(data).hexdigest()}  {name}\n" for name, data in ((META, meta_bytes), (STATE, state)))
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in ((META, meta_bytes), (STATE, state), (SUMS, sums.encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o600
            info.mtime = now_ms // 1000
            tar.addfile(info, io.BytesIO(data))
    # mtime=0 keeps the gzip header deterministic for equal inputs. Level 6 is Go's default,
    # which Consul's archive uses; Python's default 9 took 4-6 s for a 10,000-node catalog
    # (issue 16) for about the same size.
    return gzip.compress(raw.getvalue(), compresslevel=6, mtime=0)


def read(blob: bytes) -> Archive:
    """Unpack and verify an archive; raises SnapshotError with a one-line reason."""
    try:
        raw = gzip.decompress(blob)
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        # zlib.error is not an OSError: a flipped byte inside the deflate stream raises it.
        raise SnapshotError(f"failed to decompress snapshot: {exc}") from None
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
            for info in tar:
                if not info.isfile():
                    raise SnapshotError(f"unexpected member {info.name!r} in snapshot archive")
                if info.name not in (META, STATE, SUMS):
                    raise SnapshotError(f"unexpected file {info.name!r} in snapshot archive")
                if info.name in members:
                    raise SnapshotError(f"duplicate file {info.name!r} in snapshot archive")
                fh = tar.extractfile(info)
                assert fh is not None
                members[info.name] = fh.read()
    except (tarfile.TarError, OSError, ValueError, UnicodeDecodeError) as exc:
        raise SnapshotError(f"failed to read snapshot archive: {exc}") from None
    for name in (META, STATE, SUMS):
        if name not in members:
            raise SnapshotError(f"snapshot archive is missing {name}")
    expected: dict[str, str] = {}
    for line in members[SUMS].decode("utf-8", "replace").splitlines():
        if not line.strip():
            continue
        digest, _, name = line.partition("  ")
        expected[name.strip()] = digest.strip().lower()
    for name in (META, STATE):
        if name not in expected:
            raise SnapshotError(f"file missing from SHA256SUMS: {name}")
        actual = hashlib.sha256(members[name]).hexdigest()
        if actual != expected[name]:
            raise SnapshotError(f"sha256 hash mismatch for {name}: expected {expected[name]}, got {actual}")
    try:
        meta = json.loads(members[META])
    except ValueError as exc:
        raise SnapshotError(f"failed to decode {META}: {exc}") from None
    if not isinstance(meta, dict) or meta.get("Version") != VERSION:
        raise SnapshotError(f"unsupported snapshot version {meta.get('Version') if isinstance(meta, dict) else meta!r}")
    return Archive(meta, members[STATE])


# --------------------------------------------------------------------------------- inspect


def state_stats(state: bytes) -> list[tuple[str, int, int]]:
    """(record type, count, encoded bytes) per table of a `Store.snapshot()` blob, largest first."""
    try:
        data = msgpack.unpackb(state, raw=False)
    except Exception as exc:
        raise SnapshotError(f"failed to decode {STATE}: {exc}") from None
    if not isinstance(data, dict):
        raise SnapshotError(f"failed to decode {STATE}: not a state store snapshot")
    rows: list[tuple[str, int, int]] = []
    for name, key in (
        ("Node", "nodes"), ("Service", "services"), ("Check", "checks"), ("KVS", "kv"),
        ("Session", "sessions"), ("Coordinate", "coordinates"), ("PreparedQuery", "prepared_queries"),
    ):
        items = data.get(key) or []
        rows.append((name, len(items), sum(len(msgpack.packb(i, use_bin_type=True)) for i in items)))
    acl = data.get("acl") or {}
    for name, key in (("ACLToken", "tokens"), ("ACLPolicy", "policies"), ("ACLRole", "roles")):
        items = acl.get(key) or [] if isinstance(acl, dict) else []
        rows.append((name, len(items), sum(len(msgpack.packb(i, use_bin_type=True)) for i in items)))
    tomb = data.get("tombstones") or {}
    rows.append(("Tombstone", len(tomb), len(msgpack.packb(tomb, use_bin_type=True)) if tomb else 0))
    index = data.get("table_index") or {}
    rows.append(("Index", len(index), len(msgpack.packb(index, use_bin_type=True)) if index else 0))
    rows = [r for r in rows if r[1]]
    rows.sort(key=lambda r: (-r[2], r[0]))
    return rows


def byte_size(n: int) -> str:
    """Consul's inspect sizes: 0, 313B, 1.6KB, 2MB (one decimal, `.0` dropped)."""
    if n == 0:
        return "0"
    unit, text = "B", f"{n:.1f}"
    for name, scale in (("TB", 1 << 40), ("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= scale:
            unit, text = name, f"{n / scale:.1f}"
            break
    if text.endswith(".0"):
        text = text[:-2]
    return text + unit


def _tab_block(rows: list[list[str]], minwidth: int = 8, padding: int = 6) -> list[str]:
    """Go's text/tabwriter (minwidth 8, padding 6, spaces) for a block of tab-terminated cells.

    Each row's cells before its last are padded to the column's width; the last cell is text.
    """
    ncols = max(len(r) for r in rows) - 1
    widths = []
    for c in range(ncols):
        cells = [len(r[c]) for r in rows if c < len(r) - 1]
        widths.append(max(minwidth, max(cells, default=0) + padding))
    out = []
    for r in rows:
        line = "".join(cell.ljust(widths[c]) for c, cell in enumerate(r[:-1]))
        out.append(line + r[-1])
    return out


def format_inspect(meta: dict[str, Any], stats: list[tuple[str, int, int]]) -> str:
    """`consul snapshot inspect`'s pretty output."""
    head = _tab_block([
        [" ID", str(meta.get("ID", ""))],
        [" Size", str(meta.get("Size", 0))],
        [" Index", str(meta.get("Index", 0))],
        [" Term", str(meta.get("Term", 0))],
        [" Version", str(meta.get("Version", 0))],
    ])
    table = [[" Type", "Count", "Size", ""], [" ----", "----", "----", ""]]
    table += [[f" {name}", str(count), byte_size(size), ""] for name, count, size in stats]
    table += [[" ----", "----", "----", ""], [" Total", "", byte_size(sum(s for _, _, s in stats)), ""]]
    return "\n".join(head + [""] + _tab_block(table))
