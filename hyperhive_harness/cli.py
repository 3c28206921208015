"""``hyperhive-harness``: ``serve`` (the turn loop and UI), ``mcp`` (the stdio MCP server
claude starts) and ``wake`` (inject a message into this agent's own inbox).

Commands are plain functions that call ``trio.run`` (typer has no async commands).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from functools import partial
from typing import Annotated

import trio
import typer

from hyperhive import contract
from hyperhive.client import call_once
from hyperhive.errors import ClientError, ConnectionLost
from hyperhive.protocol import IdReply, Wake
from hyperhive_harness.config import ConfigError, HarnessConfig

app = typer.Typer(
    help="The hyperhive agent harness: run inside each agent's container.",
    no_args_is_help=True,
    add_completion=False,
)

SocketOpt = Annotated[
    str | None,
    typer.Option(
        "--socket", help=f"The agent socket (default: ${contract.SOCKET_ENV} or {contract.SOCKET})."
    ),
]


@app.command()
def serve(
    socket: SocketOpt = None,
    port: Annotated[
        int | None,
        typer.Option(
            "--ui-port",
            help="Also serve the web UI on this TCP port (0: one the OS picks), for debugging "
            "a harness run by hand. Off by default: the UI is on its unix socket "
            "(ui.sock beside the agent socket), which the daemon's dashboard serves.",
        ),
    ] = None,
    host: Annotated[
        str | None,
        typer.Option("--ui-host", help="Bind address of --ui-port (default 127.0.0.1)."),
    ] = None,
) -> None:
    """Run the turn loop, the event log and the per-agent web UI until SIGTERM/SIGINT."""
    from hyperhive_harness.serve import serve as serve_harness

    try:
        cfg = HarnessConfig.from_env(os.environ, socket=socket, port=port, host=host)
    except ConfigError as exc:
        typer.echo(f"hyperhive-harness: {exc}", err=True)
        raise typer.Exit(2) from None

    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="hyperhive-harness: %(message)s"
    )

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                await nursery.start(partial(serve_harness, cfg, out=sys.stdout))
                async for _ in signals:
                    break
                nursery.cancel_scope.cancel()
        print("hyperhive-harness: stopped", flush=True)

    trio.run(main)


@app.command()
def mcp(socket: SocketOpt = None) -> None:
    """Serve the hyperhive MCP tools on stdio (claude starts this every turn)."""
    from hyperhive_harness.mcp_server import main as mcp_main

    mcp_main(socket)


@app.command()
def wake(
    from_: Annotated[
        str, typer.Option("--from", help="A free label naming the source, e.g. 'forge: PR #4'.")
    ],
    body: Annotated[str, typer.Option(help="The message body; '-' reads it from stdin.")],
    transient: Annotated[
        bool, typer.Option(help="Do not keep the message once it has been acked.")
    ] = False,
    socket: SocketOpt = None,
) -> None:
    """Inject a message into this agent's own inbox (it wakes the turn loop)."""
    text = sys.stdin.read() if body == "-" else body
    path = socket or os.environ.get(contract.SOCKET_ENV) or contract.SOCKET

    async def go() -> int:
        reply = await call_once(path, Wake(from_=from_, body=text, transient=transient))
        assert isinstance(reply, IdReply)
        return reply.id

    try:
        message_id = trio.run(go)
    except ConnectionLost as exc:
        typer.echo(f"hyperhive-harness wake: {exc}", err=True)
        raise typer.Exit(2) from None
    except ClientError as exc:
        typer.echo(f"hyperhive-harness wake: refused: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(str(message_id))


def main() -> None:
    with contextlib.suppress(KeyboardInterrupt):
        app()
