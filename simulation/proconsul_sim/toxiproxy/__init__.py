"""A toxiproxy-compatible server in Python (asyncio): toxiproxy's v2 HTTP API and its TCP data plane.

No `toxiproxy-server` binary can be installed from Debian, PyPI or npm, so the simulation harness
brings this one. It speaks the API any toxiproxy client uses (toxiproxy-python, the Go client,
plain HTTP) on port 8474 by default:

- `GET/POST /proxies`, `GET/POST/PATCH/DELETE /proxies/{name}`,
  `GET/POST /proxies/{name}/toxics`, `GET/POST/PATCH/DELETE /proxies/{name}/toxics/{toxic}`,
  `POST /populate`, `POST /reset`, `GET /version` (see `server.py` for statuses and shapes);
- toxics `latency`, `bandwidth`, `slow_close`, `timeout`, `reset_peer`, `slicer`, `limit_data`
  (and `noop`), on the `upstream` (client -> server) or `downstream` stream, applied to a connection
  with probability `toxicity` (see `toxics.py`); `enabled: false` takes a proxy down.

Run it as a process with `python -m proconsul_sim.toxiproxy [--host 127.0.0.1] [--port 8474]`
(toxiproxy's single-dash `-host`/`-port`/`-config`/`-seed` flags work too), or in-process:

    async with ToxiproxyServer("127.0.0.1", 0) as server:   # port 0: a free port
        ...  # server.url, server.api_port

Which server the harness runs is one setting, `proconsul-sim run --toxiproxy=auto|builtin|PATH`
(`proconsul_sim.proxies.resolve_toxiproxy`): `auto` (the default) runs a real `toxiproxy-server`
when one is on `PATH` (`find_real_toxiproxy()`), else this one; `builtin` always runs this one;
a PATH runs that binary. The harness drives either only through the HTTP API, so they are
interchangeable.

Known differences from toxiproxy: no `/metrics`; error bodies are sent as application/json (toxiproxy
sends the same JSON as text/plain); a slicer with `average_size` <= 0 is refused with 400 (toxiproxy
recurses forever); `reset_peer` always closes with RST, even when added to an open connection
(toxiproxy sets SO_LINGER only on connections opened while the toxic exists); an empty listen host
binds IPv4 only.
"""

from __future__ import annotations

import shutil

from .server import VERSION, ToxiproxyServer

__all__ = ["VERSION", "ToxiproxyServer", "find_real_toxiproxy"]


def find_real_toxiproxy() -> str | None:
    """The path of a real `toxiproxy-server` on PATH, or None when there is none."""
    return shutil.which("toxiproxy-server")
