"""The bare aiohttp baseline: one TLS site whose only handler answers a POST with a fixed body.

It is what the update check would cost if the service did nothing of its own: the same
aiohttp, the same event loop (uvloop), the same TLS context (``lab.net.pki.CertPair``'s, made
from the same certificate and key) and an answer of the same size and type, but no
firewall check, no XML parsing, no store decision and no audit line. The body of the
request is read, as any POST handler must before answering on a kept-alive connection.

Run as ``python -m bench.baselines --cert C --key K --host H --body FILE``: prints
``ready PORT`` once listening on port 0 of ``H`` and serves until its stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from aiohttp import web

from lab.net.pki import CertPair
from lab.ops.runner import run_event_loop

CONTENT_TYPE = "text/xml; charset=utf-8"


def make_app(body: bytes) -> web.Application:
    """An application answering every POST with ``body``."""

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    app = web.Application()
    app.router.add_post("/{path:.*}", answer)
    return app


async def serve(cert: Path, key: Path, host: str, body: bytes) -> None:
    """Serve until stdin reaches its end, having printed ``ready PORT``."""
    context = CertPair(cert, key, ()).server_context()
    runner = web.AppRunner(make_app(body), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, 0, ssl_context=context)
        await site.start()
        print(f"ready {runner.addresses[0][1]}", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    finally:
        await runner.cleanup()


def main() -> None:
    """Parse the arguments and serve."""
    parser = argparse.ArgumentParser(prog="python -m bench.baselines", description=__doc__)
    parser.add_argument("--cert", type=Path, required=True, help="certificate (PEM)")
    parser.add_argument("--key", type=Path, required=True, help="private key (PEM)")
    parser.add_argument("--host", required=True, help="loopback address to listen on")
    parser.add_argument("--body", type=Path, required=True, help="file holding the answer")
    args = parser.parse_args()
    body = args.body.read_bytes()
    run_event_loop(lambda: serve(args.cert, args.key, args.host, body))


if __name__ == "__main__":
    main()
