"""SPEC §4 against a real daemon process: bad input gets a reason, the connection lives on."""

from __future__ import annotations

import json
import socket

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hyperhive.client import Client
from tests.conftest import DaemonProcess, SyncDaemon

MALFORMED = [
    (b"\xff\xfe\n", "not valid UTF-8"),
    (b"{not json\n", "not valid JSON"),
    (b"\n", "not valid JSON"),
    (b"[1]\n", "must be a JSON object"),
    (b'{"cmd": "launch_missiles"}\n', "unknown command"),
    (b'{"cmd": "approve", "id": 1}\n', "unknown command 'approve' on the manager socket"),
    (b'{"cmd": "send", "to": "manager"}\n', "required field missing @ $.body"),
    (b'{"cmd": "send", "to": "manager", "body": "x", "from": "bob"}\n', "unknown fields: from"),
    (b'{"cmd": "recv", "max": "5"}\n', "expected an integer"),
    (b'{"cmd": "recv", "wait_seconds": 999}\n', "wait_seconds must be between 0 and 180"),
    (b'{"cmd": "recv", "max": 33}\n', "max must be between 1 and 32"),
    (b'{"cmd": "hello", "role": "harness", "protocol": 7}\n', "protocol 7 is not supported"),
    (b'{"cmd": "send", "to": "nobody", "body": "x"}\n', "unknown recipient 'nobody'"),
    (b'{"cmd": "send", "to": "../etc", "body": "x"}\n', "invalid agent name"),
]


async def test_malformed_inputs_get_reasons_and_the_connection_survives(
    daemon: DaemonProcess,
) -> None:
    async with await Client.connect(daemon.paths.agent_socket("manager")) as client:
        for line, reason in MALFORMED:
            reply = await client.raw(line)
            assert reply["ok"] is False, line
            assert reason in reply["error"], (line, reply)
            # The same connection then serves a valid request.
            assert await client.request({"cmd": "status"}) == {"ok": True, "unread": 0}


async def test_oversized_line_is_refused_and_memory_stays_bounded(daemon: DaemonProcess) -> None:
    async with await Client.connect(daemon.paths.agent_socket("manager")) as client:
        assert (await client.request({"cmd": "status"}))["ok"]
        before = daemon.rss_bytes()
        big = b'{"cmd": "send", "to": "operator", "body": "' + b"x" * (2 * 1024 * 1024) + b'"}\n'
        for _ in range(20):
            reply = await client.raw(big)
            assert reply["ok"] is False
            assert "longer than 1048576 bytes" in reply["error"]
        grown = daemon.rss_bytes() - before
        # 20 lines of 2 MiB went through; a buffer without a bound would hold 40 MiB.
        assert grown < 8 * 1024 * 1024, f"daemon RSS grew by {grown} bytes"
        assert (await client.request({"cmd": "status"}))["ok"]
        inbox = await daemon.call({"cmd": "inbox"})
        assert inbox["messages"] == []


async def test_body_over_the_limit_is_refused_inside_one_line(daemon: DaemonProcess) -> None:
    async with await Client.connect(daemon.paths.agent_socket("manager")) as client:
        reply = await client.request({"cmd": "send", "to": "operator", "body": "y" * 1_045_000})
        assert reply["ok"] is False and "over the" in reply["error"] and "path" in reply["error"]


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    chunks=st.lists(
        st.one_of(
            st.binary(max_size=200),
            st.builds(
                lambda v: json.dumps(v).encode() + b"\n",
                st.dictionaries(
                    st.sampled_from(["cmd", "to", "body", "ids", "id", "max", "x"]),
                    st.one_of(
                        st.none(),
                        st.integers(),
                        st.sampled_from(["send", "recv", "ack", "status", "manager", "*"]),
                        st.text(max_size=8),
                        st.lists(st.integers(), max_size=3),
                    ),
                    max_size=4,
                ),
            ),
        ),
        max_size=6,
    )
)
def test_random_bytes_never_crash_the_daemon(sync_daemon: SyncDaemon, chunks: list[bytes]) -> None:
    sock_path = str(sync_daemon.paths.agent_socket("manager"))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(sock_path)
        for chunk in chunks:
            sock.sendall(chunk)
        # Hang up mid-line, maybe with replies unread: the daemon just drops the connection.
    assert sync_daemon.alive()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(sock_path)
        sock.sendall(b'{"cmd": "status"}\n')
        reply = b""
        while not reply.endswith(b"\n"):
            data = sock.recv(65536)
            assert data, "daemon closed the connection"
            reply += data
    assert json.loads(reply)["ok"] is True


async def test_framed_garbage_gets_one_reply_per_line(daemon: DaemonProcess) -> None:
    async with await Client.connect(daemon.paths.agent_socket("manager")) as client:
        lines = [b"\x00\x01", b"{}", b'{"cmd":"status"}', b"null"]
        replies = []
        await client._stream.send_all(b"\n".join(lines) + b"\n")
        for _ in lines:
            replies.append(await client._read_reply())
        assert [r["ok"] for r in replies] == [False, False, True, False]
