"""``hyperhive watch`` and the host socket's ``watch`` feed, and the protocol version every
host reply carries: against a real ``hyperhive run`` process.

The operator acts through the CLI and host.sock, agents through their own sockets.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from typing import Any

import pytest
import trio

from hyperhive.client import Client
from hyperhive.config import PROTOCOL_VERSION
from hyperhive.protocol import json_schema
from hyperhive.supervisor import Hive
from tests.conftest import DaemonProcess, wait_until


class LineReader:
    """JSON lines from a stream (a raw host connection or a CLI's stdout)."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.buf = b""

    async def next(self) -> dict[str, Any] | None:
        while b"\n" not in self.buf:
            data = await self.stream.receive_some(65536)
            if not data:
                return None
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        obj = json.loads(line)
        assert isinstance(obj, dict)
        return obj


async def raw_host(daemon: DaemonProcess) -> tuple[trio.SocketStream, LineReader]:
    stream = await trio.open_unix_socket(str(daemon.paths.host_socket))
    reader = LineReader(stream)
    await stream.send_all(b'{"cmd":"hello","role":"cli","protocol":1}\n')
    hello = await reader.next()
    assert hello is not None and hello["ok"], hello
    return stream, reader


async def test_watch_cli_sees_spawn_approvals_questions_and_pause_in_order(
    daemon: DaemonProcess,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYPERHIVE_")}
    argv = [sys.executable, "-m", "hyperhive", "watch", "--json"]
    argv += ["--run-dir", str(daemon.paths.run_dir)]
    proc = await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    lines = LineReader(proc.stdout)
    try:
        # Until the watcher is subscribed, spawns go unseen: spawn until one is seen.
        first: dict[str, Any] | None = None
        with trio.fail_after(20):
            for i in range(1000):
                assert (await daemon.call({"cmd": "spawn", "name": f"warm{i}"}))["ok"]
                with trio.move_on_after(0.5):
                    first = await lines.next()
                if first is not None:
                    break
        seen: list[dict[str, Any]] = []

        async def until(kind: str, name: str | None = None) -> None:
            with trio.fail_after(20):
                while True:
                    line = await lines.next()
                    assert line is not None, "the watch ended"
                    seen.append(line)
                    if line["kind"] == kind and name in (None, line["data"].get("name")):
                        return

        assert (await daemon.call({"cmd": "spawn", "name": "alice"}))["ok"]
        await until("agent_registered", "alice")
        await until("agent_changed", "alice")  # its spawning transient ends
        approval = await daemon.call({"cmd": "request_spawn", "name": "bob"})
        await until("approval_added")
        assert (await daemon.call({"cmd": "approve", "id": approval["approval"]["id"]}))["ok"]
        await until("approval_resolved")
        async with await Client.connect(daemon.paths.agent_socket("alice")) as alice:
            asked = await alice.request({"cmd": "ask", "question": "Deploy?"})
        await until("question_added")
        assert (await daemon.call({"cmd": "answer", "id": asked["id"], "answer": "yes"}))["ok"]
        await until("question_resolved")
        paused = await daemon.call({"cmd": "pause", "names": ["alice"], "reason": "budget"})
        assert paused["ok"]
        await until("agent_paused")
        assert (await daemon.call({"cmd": "resume", "names": ["alice"]}))["ok"]
        await until("agent_resumed")
    finally:
        proc.send_signal(signal.SIGINT)
        with trio.fail_after(10):
            code = await proc.wait()
    assert code == 0
    seqs = [line["seq"] for line in seen]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    kinds = [line["kind"] for line in seen]
    assert "sent" not in kinds and "delivered" not in kinds  # message traffic is not watched
    order = ["approval_added", "approval_resolved", "question_added", "question_resolved"]
    order += ["agent_paused", "agent_resumed"]
    assert [k for k in kinds if k in order] == order
    registered = [line["data"]["name"] for line in seen if line["kind"] == "agent_registered"]
    assert registered == ["alice", "bob"]  # the spawn, then the approved spawn
    (pause,) = [line for line in seen if line["kind"] == "agent_paused"]
    assert pause["data"]["name"] == "alice" and pause["data"]["reason"] == "budget"
    (question,) = [line for line in seen if line["kind"] == "question_resolved"]
    assert question["data"]["question"]["answer"] == "yes"


async def test_watch_human_output_and_interrupt(daemon: DaemonProcess) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYPERHIVE_")}
    argv = [sys.executable, "-m", "hyperhive", "watch", "--run-dir", str(daemon.paths.run_dir)]
    proc = await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    out = b""
    assert (await daemon.call({"cmd": "spawn", "name": "carl"}))["ok"]
    try:
        # Pause and resume until the watcher (once subscribed) has printed a pause.
        with trio.fail_after(20):
            while not re.search(
                rb" agent_paused carl by operator: lunch\n.*resumed carl", out, re.S
            ):
                await daemon.call({"cmd": "pause", "names": ["carl"], "reason": "lunch"})
                await daemon.call({"cmd": "resume", "names": ["carl"]})
                with trio.move_on_after(0.5):
                    out += await proc.stdout.receive_some(65536)
    finally:
        proc.send_signal(signal.SIGINT)
        with trio.fail_after(10):
            code = await proc.wait()
    assert code == 0
    assert re.search(rb"\d\d:\d\d:\d\d agent_resumed carl operator\n", out)


@pytest.mark.serial  # asserts a latency: runs alone (docs/development.md)
async def test_a_watcher_that_never_reads_is_dropped_and_never_slows_a_send(
    daemon: DaemonProcess,
) -> None:
    stream, reader = await raw_host(daemon)
    await stream.send_all(b'{"cmd":"watch"}\n')
    reply = await reader.next()
    assert reply is not None and reply["ok"] and reply["protocol"] == PROTOCOL_VERSION
    assert isinstance(reply["seq"], int)
    # The watcher reads nothing from here on. An agent makes many changes (each a line of
    # about 250 bytes): more than the socket buffers and the watcher's queue hold.
    assert (await daemon.call({"cmd": "spawn", "name": "dora"}))["ok"]
    changes = 4000
    text = "x" * 180

    async def churn(worker: int) -> None:
        async with await Client.connect(daemon.paths.agent_socket("dora")) as dora:
            for i in range(worker, changes, 4):
                reply = await dora.request({"cmd": "set_status", "text": f"{text} {i}"})
                assert reply["ok"], reply

    async with trio.open_nursery() as nursery:
        for worker in range(4):
            nursery.start_soon(churn, worker)
    # The daemon was never held up by the stuck watcher: a send is as quick as ever.
    start = time.monotonic()
    sent = await daemon.call({"cmd": "send", "to": "dora", "body": "still quick"})
    assert sent["ok"] and time.monotonic() - start < 2
    # Now the watcher reads: what was queued for it, then one final line, then the end.
    received: list[dict[str, Any]] = []
    with trio.fail_after(30):
        while (line := await reader.next()) is not None:
            received.append(line)
    await stream.aclose()
    last = received[-1]
    assert last["ok"] is False and "watch dropped" in last["error"], last
    assert last["protocol"] == PROTOCOL_VERSION
    statuses = [line for line in received[:-1] if line["kind"] == "status_changed"]
    assert 0 < len(statuses) < changes  # cut off: it never got them all
    # The daemon is fine, and a new watcher works.
    stream, reader = await raw_host(daemon)
    async with stream:
        await stream.send_all(b'{"cmd":"watch"}\n')
        assert (await reader.next() or {}).get("ok") is True
        assert (await daemon.call({"cmd": "pause", "names": ["dora"]}))["ok"]
        with trio.fail_after(10):
            while (line := await reader.next()) is not None and line["kind"] != "agent_paused":
                pass
        assert line is not None and line["data"]["name"] == "dora"


async def test_only_the_host_socket_may_watch(daemon: DaemonProcess) -> None:
    assert (await daemon.call({"cmd": "spawn", "name": "eve"}))["ok"]
    for socket in (daemon.paths.agent_socket("eve"), daemon.paths.agent_socket("manager")):
        async with await Client.connect(socket) as agent:
            reply = await agent.request({"cmd": "watch"})
            assert reply["ok"] is False and "unknown command 'watch'" in reply["error"]


async def test_a_watching_connection_takes_no_more_requests(daemon: DaemonProcess) -> None:
    stream, reader = await raw_host(daemon)
    async with stream:
        await stream.send_all(b'{"cmd":"watch"}\n')
        assert (await reader.next() or {}).get("ok") is True
        await stream.send_all(b'{"cmd":"status"}\n')
        with trio.fail_after(10):
            last = await reader.next()
            assert last is not None and last["ok"] is False
            assert "no further requests" in last["error"]
            assert await reader.next() is None


@pytest.mark.parametrize(
    "request_line",
    [
        b'{"cmd":"status"}',
        b'{"cmd":"list"}',
        b'{"cmd":"pending"}',
        b'{"cmd":"approvals"}',
        b'{"cmd":"questions"}',
        b'{"cmd":"tombstones"}',
        b'{"cmd":"inbox"}',
        b'{"cmd":"hello","role":"cli","protocol":1}',
        b'{"cmd":"pause","names":[]}',
        b'{"cmd":"nonsense"}',
        b"not json",
    ],
)
async def test_every_host_reply_carries_the_protocol_version(
    daemon: DaemonProcess, request_line: bytes
) -> None:
    stream, reader = await raw_host(daemon)
    async with stream:
        await stream.send_all(request_line + b"\n")
        reply = await reader.next()
    assert reply is not None and reply["protocol"] == PROTOCOL_VERSION, reply


async def test_agent_socket_replies_are_unchanged(daemon: DaemonProcess) -> None:
    async with await Client.connect(daemon.paths.agent_socket("manager")) as manager:
        assert await manager.request({"cmd": "status"}) == {"ok": True, "unread": 0}


def test_the_schema_shows_the_protocol_on_host_replies() -> None:
    schema = json_schema()
    for cmd, entry in schema["sockets"]["host"].items():
        reply = entry["reply"]
        assert "protocol" in reply["required"], cmd
        if cmd not in ("hello", "status"):  # these two always had it as their own field
            assert reply["properties"]["protocol"] == {"const": PROTOCOL_VERSION}, cmd
    for cmd, entry in schema["sockets"]["agent"].items():
        if cmd != "hello":  # hello's own field
            assert "protocol" not in entry["reply"]["properties"], cmd
    assert schema["error"]["properties"]["protocol"] == {"const": PROTOCOL_VERSION}
    assert set(schema["watch_line"]["required"]) == {"seq", "ts", "kind", "data"}


async def test_a_watcher_that_leaves_is_unsubscribed(hive: Hive) -> None:
    before = hive.events.statistics().subscribers

    async def subscribers() -> bool:
        # The hub lets go of a closed subscription at its next event: the operator's
        # vacuum publishes one.
        async with await Client.connect(hive.config.paths.host_socket) as other:
            assert (await other.request({"cmd": "vacuum"}))["ok"]
        return hive.events.statistics().subscribers == before

    async with await Client.connect(hive.config.paths.host_socket, hello_role="cli") as op:
        assert (await op.request({"cmd": "watch"}))["ok"]
        assert hive.events.statistics().subscribers == before + 1
        await hive.spawn("fred")
        assert (await op.receive())["kind"] == "agent_registered"
        assert not await subscribers()
    await wait_until(subscribers)
    # One that hangs up before reading even the reply is unsubscribed too.
    stream = await trio.open_unix_socket(str(hive.config.paths.host_socket))
    await stream.send_all(b'{"cmd":"watch"}\n')
    await stream.aclose()
    await wait_until(subscribers)
