"""The dashboard's TCP port against a local process without the token (any agent: they
share the host's network): connections are capped, the daemon's descriptors and memory
stay bounded, and the dashboard serves again once they are gone."""

from __future__ import annotations

import contextlib
import os
from urllib.parse import urlsplit

import trio

from hyperhive.web._serve import MAX_DASHBOARD_CONNECTIONS
from tests.conftest import DaemonProcess, wait_until

FLOOD = 1000
#: A request head started and never finished.
PARTIAL = b"GET /api/state HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


async def _get(host: str, port: int, target: str) -> bytes:
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            await stream.send_all(f"GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            return await stream.receive_some(65536)


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def test_dashboard_connections_are_capped(daemon: DaemonProcess) -> None:
    assert daemon.dashboard_login is not None
    url = urlsplit(daemon.dashboard_login)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    assert (await _get(host, port, "/login")).startswith(b"HTTP/1.1 401")
    fds_before, rss_before = _fds(daemon.pid), daemon.rss_bytes()
    streams: list[trio.SocketStream] = []
    try:
        for _ in range(FLOOD):
            try:
                stream = await trio.open_tcp_stream(host, port)
            except OSError:
                continue  # a full backlog: the daemon has not accepted the last ones yet
            streams.append(stream)
            with contextlib.suppress(trio.BrokenResourceError):  # closed: over the cap
                await stream.send_all(PARTIAL)

        async def settled() -> bool:
            status = await daemon.call({"cmd": "status"})  # answers throughout
            assert status["ok"]
            return _fds(daemon.pid) <= fds_before + MAX_DASHBOARD_CONNECTIONS + 8

        await wait_until(settled, limit=30)
        assert _fds(daemon.pid) <= fds_before + MAX_DASHBOARD_CONNECTIONS + 8
        assert daemon.rss_bytes() - rss_before < 64 * 1024 * 1024
    finally:
        for stream in streams:
            await stream.aclose()

    async def serves_again() -> bool:
        try:
            return (await _get(host, port, "/login")).startswith(b"HTTP/1.1 401")
        except (OSError, trio.BrokenResourceError):
            return False

    await wait_until(serves_again, limit=30)
