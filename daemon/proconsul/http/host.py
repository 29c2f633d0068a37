"""`GET /v1/agent/host`: facts about the machine the agent runs on, in Consul's shape.

Consul fills this from gopsutil; proconsul reads the same facts from `/proc`, `os.uname`,
`/etc/os-release` and `statvfs` of the data dir (or `/` without one), with no extra dependency.
The answer has Consul's sections and field names: `Memory`, `CPU` (one entry per logical CPU),
`Host`, `Disk`, `CollectionTime` (Unix nanoseconds) and `Errors` (collector -> message, null when
every collector succeeded). A fact the host does not expose is left at its zero value.
"""

from __future__ import annotations

import os
import time
from typing import Any

from aiohttp import web

from proconsul.http.appkeys import AGENT
from proconsul.http.common import json_response


def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def _pct(part: float, whole: float) -> float:
    return 100.0 * part / whole if whole else 0.0


def memory() -> dict[str, Any]:
    info: dict[str, int] = {}
    for line in _read("/proc/meminfo").splitlines():
        key, _, rest = line.partition(":")
        fields = rest.split()
        if fields:
            info[key] = int(fields[0]) * (1024 if len(fields) > 1 else 1)
    total = info.get("MemTotal", 0)
    free = info.get("MemFree", 0)
    available = info.get("MemAvailable", free)
    buffers, cached = info.get("Buffers", 0), info.get("Cached", 0) + info.get("SReclaimable", 0)
    used = max(0, total - free - buffers - cached)
    return {
        "total": total, "available": available, "used": used, "usedPercent": _pct(used, total), "free": free,
        "active": info.get("Active", 0), "inactive": info.get("Inactive", 0), "buffers": buffers,
        "cached": cached, "shared": info.get("Shmem", 0), "swapTotal": info.get("SwapTotal", 0),
        "swapFree": info.get("SwapFree", 0), "swapCached": info.get("SwapCached", 0),
        "dirty": info.get("Dirty", 0), "slab": info.get("Slab", 0),
    }


def cpus() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for block in _read("/proc/cpuinfo").strip().split("\n\n"):
        kv = {}
        for line in block.splitlines():
            key, _, value = line.partition(":")
            kv[key.strip()] = value.strip()
        if "processor" not in kv:
            continue

        def num(key: str, kind: type = int, kv: dict[str, str] = kv) -> Any:
            try:
                return kind(kv.get(key, "0").split()[0])
            except (ValueError, IndexError):
                return kind(0)

        out.append({
            "cpu": num("processor"), "vendorId": kv.get("vendor_id", ""), "family": kv.get("cpu family", ""),
            "model": kv.get("model", ""), "stepping": num("stepping"), "physicalId": kv.get("physical id", ""),
            "coreId": kv.get("core id", ""), "cores": num("cpu cores") or 1, "modelName": kv.get("model name", ""),
            "mhz": num("cpu MHz", float), "cacheSize": num("cache size"), "flags": kv.get("flags", "").split(),
            "microcode": kv.get("microcode", ""),
        })
    return out


def host() -> dict[str, Any]:
    uname = os.uname()
    uptime = int(float(_read("/proc/uptime").split()[0]))
    boot = next((int(line.split()[1]) for line in _read("/proc/stat").splitlines() if line.startswith("btime ")), 0)
    release: dict[str, str] = {}
    try:
        for line in _read("/etc/os-release").splitlines():
            key, _, value = line.partition("=")
            release[key] = value.strip().strip('"')
    except OSError:
        pass
    try:
        host_id = _read("/etc/machine-id").strip()
    except OSError:
        host_id = ""
    procs = sum(1 for d in os.listdir("/proc") if d.isdigit())
    return {
        "hostname": uname.nodename, "uptime": uptime, "bootTime": boot, "procs": procs,
        "os": uname.sysname.lower(), "platform": release.get("ID", ""),
        "platformFamily": release.get("ID_LIKE", release.get("ID", "")).split()[0] if release else "",
        "platformVersion": release.get("VERSION_ID", ""), "kernelVersion": uname.release,
        "kernelArch": uname.machine, "virtualizationSystem": "", "virtualizationRole": "", "hostId": host_id,
    }


def disk(path: str) -> dict[str, Any]:
    st = os.statvfs(path)
    total = st.f_blocks * st.f_frsize
    free = st.f_bavail * st.f_frsize
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    inodes_used = st.f_files - st.f_ffree
    fstype = ""
    try:
        best = ""
        for line in _read("/proc/mounts").splitlines():
            parts = line.split()
            real = os.path.realpath(path)
            if len(parts) > 2 and (real == parts[1] or real.startswith(parts[1].rstrip("/") + "/")) \
                    and len(parts[1]) >= len(best):
                best, fstype = parts[1], parts[2]
    except OSError:
        pass
    return {
        "path": path, "fstype": fstype, "total": total, "free": free, "used": used,
        "usedPercent": _pct(used, used + free), "inodesTotal": st.f_files, "inodesUsed": inodes_used,
        "inodesFree": st.f_ffree, "inodesUsedPercent": _pct(inodes_used, st.f_files),
    }


def collect(data_dir: str) -> dict[str, Any]:
    """Every section; a collector that fails leaves its section empty and says why in Errors."""
    errors: dict[str, str] = {}
    out: dict[str, Any] = {}
    collectors = (("Memory", "memory", memory), ("CPU", "cpu", cpus), ("Host", "host", host),
                  ("Disk", "disk", lambda: disk(data_dir or "/")))
    for section, name, fn in collectors:
        try:
            out[section] = fn()
        except (OSError, ValueError, IndexError) as exc:
            out[section] = None
            errors[name] = str(exc)
    out["CollectionTime"] = time.time_ns()
    out["Errors"] = errors or None
    return out


async def host_info(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    data_dir = agent.config.data_dir or ""
    return json_response(request, collect(data_dir))


def routes() -> list[web.RouteDef]:
    return [web.get("/v1/agent/host", host_info)]
