"""`python -m proconsul_sim.toxiproxy`: run the toxiproxy-compatible server until SIGTERM or SIGINT.

Flags mirror toxiproxy-server's (`-host`, `-port`, `-config`, `-seed`; double dashes work too), so
a harness can start either with the same arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import signal
import sys
from pathlib import Path

from . import errors
from .server import VERSION, ToxiproxyServer

log = logging.getLogger("proconsul_sim.toxiproxy")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m proconsul_sim.toxiproxy", description="A toxiproxy-compatible server (API v2)."
    )
    parser.add_argument("--host", "-host", default="127.0.0.1", help="API listen host (default 127.0.0.1)")
    parser.add_argument(
        "--port", "-port", type=int, default=8474, help="API listen port (default 8474; 0 = any)"
    )
    parser.add_argument(
        "--config", "-config", type=Path, help="JSON file: a list of proxies to create at start"
    )
    parser.add_argument("--seed", "-seed", type=int, help="seed for toxicity rolls, jitter and slice sizes")
    parser.add_argument("--version", "-version", action="store_true", help="print the version and exit")
    return parser


async def _serve(args: argparse.Namespace) -> int:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    server = ToxiproxyServer(args.host, args.port, rng=random.Random(args.seed))
    try:
        await server.start()
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", args.host, args.port, exc)
        return 1
    try:
        if args.config is not None:
            try:
                body = json.loads(args.config.read_text())
            except (OSError, ValueError) as exc:
                log.error("config %s: %s", args.config, exc)
                return 1
            proxies, error = await server.populate(body)
            if error is not None:
                log.error("config %s: %s", args.config, error.message)
                return 1
            log.info("populated %d proxies from %s", len(proxies), args.config)
        log.info("toxiproxy API %s listening on %s", VERSION, server.url)
        await stopping.wait()
        return 0
    except errors.ApiError as exc:
        log.error("%s", exc.message)
        return 1
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.version:
        print(VERSION)
        return 0
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    return asyncio.run(_serve(args))


if __name__ == "__main__":
    sys.exit(main())
