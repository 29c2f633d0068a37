"""The ceiling for one Python process on this machine: an aiohttp server with one handler.

Same event-loop setup as the agent (`proconsul.agent.agent.run_agent`): uvloop if it is importable,
`AppRunner(access_log=None)`, one `TCPSite`. The handler returns a small fixed JSON body about
the size of a one-key KV answer, so `bench/kv_http.py` can compare the agent with it.

    python bench/trivial_server.py --port 18080 [--host 127.0.0.1]

Runs until SIGTERM/SIGINT. Prints `ready <host>:<port>` on stdout once the socket is bound.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from aiohttp import web

# 164 bytes: about the size of the agent's one-key KV answer (`[{"LockIndex":0,...}]`).
BODY = (
    b'[{"LockIndex":0,"Key":"bench/key0000","Flags":0,'
    b'"Value":"eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eA==",'
    b'"CreateIndex":5,"ModifyIndex":5}]'
)


async def handle(request: web.Request) -> web.Response:
    return web.Response(body=BODY, content_type="application/json")


async def serve(host: str, port: int) -> None:
    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"ready {host}:{port} loop={type(loop).__module__}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    try:
        import uvloop  # type: ignore[import-not-found]

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
