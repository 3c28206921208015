"""The MCP server command claude starts each turn: a byte pump to the harness's tool socket.

    python -I -S /path/to/mcp_shim.py      (env: HYPERHIVE_MCP_SOCKET, HYPERHIVE_MCP_TOKEN)

Standard library only and run with ``-I -S`` (no site-packages, no environment), so it
starts in a few milliseconds instead of importing an MCP server every turn. It connects to
the harness's unix socket, presents the turn's secret on the first line, waits for ``ok``,
then copies claude's stdin to the socket and the socket to claude's stdout until either side
closes. The MCP session itself is served by the harness (:mod:`hyperhive_harness.mcp_host`).

Exit status: 0 when the session ended, 1 when the harness refused or could not be reached
(the reason on stderr, which claude shows as the server's failure).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import sys

SOCKET_ENV = "HYPERHIVE_MCP_SOCKET"
TOKEN_ENV = "HYPERHIVE_MCP_TOKEN"
#: How long connecting and the harness's ``ok`` may take.
CONNECT_TIMEOUT = 5.0
CHUNK = 65536


def fail(text: str) -> int:
    sys.stderr.write(f"hyperhive-mcp-shim: {text}\n")
    sys.stderr.flush()
    return 1


def handshake(sock: socket.socket, token: str) -> str:
    """Send the token line; the harness's answer line (``ok`` or a refusal)."""
    sock.sendall(token.encode("ascii", "replace") + b"\n")
    answer = b""
    while not answer.endswith(b"\n") and len(answer) < 512:
        data = sock.recv(512)
        if not data:
            break
        answer += data
    return answer.decode("utf-8", "replace").strip()


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def pump(sock: socket.socket, stdin: int, stdout: int) -> None:
    """Copy ``stdin`` → ``sock`` and ``sock`` → ``stdout`` until the socket closes."""
    sel = selectors.DefaultSelector()
    sel.register(stdin, selectors.EVENT_READ)
    sel.register(sock, selectors.EVENT_READ)
    while True:
        for key, _ in sel.select():
            if key.fileobj is sock:
                data = sock.recv(CHUNK)
                if not data:
                    return
                write_all(stdout, data)
            else:
                data = os.read(stdin, CHUNK)
                if not data:  # claude closed our stdin: the session ends
                    sel.unregister(stdin)
                    sock.shutdown(socket.SHUT_WR)
                else:
                    sock.sendall(data)


def main() -> int:
    path = os.environ.get(SOCKET_ENV)
    token = os.environ.get(TOKEN_ENV, "")
    if not path:
        return fail(f"{SOCKET_ENV} is not set")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(CONNECT_TIMEOUT)
    try:
        sock.connect(path)
        answer = handshake(sock, token)
    except OSError as exc:
        return fail(f"cannot reach the harness's tool socket {path}: {exc}")
    if answer != "ok":
        return fail(f"the harness refused this session: {answer or 'connection closed'}")
    sock.settimeout(None)
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        pump(sock, sys.stdin.fileno(), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
