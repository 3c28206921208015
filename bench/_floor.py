"""Baselines measured in the same run as the figures they are divided by.

- :func:`raw_commits_per_second`: single-row ``BEGIN IMMEDIATE … COMMIT`` transactions on the
  broker's own schema (its migrations, its indexes), WAL, at a given ``synchronous``: the cost
  floor of one durable write on this disk.
- :func:`echo_floor`: the round trip of a JSON line through a trio echo server in its own
  process over a unix socket: the floor of any request/reply on the daemon's sockets.
- :func:`pattern_floor`: the benchmark's own traffic (pairs of a sender and a long-polling
  receiver) through a minimal trio server in its own process: one task per connection,
  JSON lines, an in-memory queue per receiver, no store and no checks. Its CPU per request
  is what trio, the sockets and the JSON cost at that concurrency, without the broker.
- :func:`prefill_history`: an old, acked message history written straight into a fresh
  ``broker.sqlite`` before the daemon starts (the state of a hive that ran for a long time).
- :func:`cpu_seconds`: user+system CPU of a process (all its threads), from ``/proc``.
- :func:`raw_commit_cpu`, :func:`handoff_cpu`: the CPU floors of one durable commit and of
  one job's trip through the database's writer (queued, run in an empty transaction, the
  caller woken).
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import trio

from hyperhive.store import BROKER_MIGRATIONS, connect, open_database

TICKS = os.sysconf("SC_CLK_TCK")


def _raw_commits(path: Path, synchronous: str, n: int) -> tuple[list[float], float]:
    """Seconds of each of ``n`` single-row ``BEGIN IMMEDIATE … COMMIT`` on the broker's own
    schema (migrations and indexes) in a fresh ``path``, at ``synchronous``; and the CPU
    seconds (user + system) of the ``n`` commits."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    conn = connect(path, synchronous=synchronous, migrations=BROKER_MIGRATIONS)
    times = []
    cpu = _own_cpu()
    for i in range(n):
        start = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "INSERT INTO messages (sender, recipient, body, sent_at) VALUES (?, ?, ?, ?)",
            ("s0", "r0", f"message {i}", time.time()),
        )
        conn.execute("COMMIT")
        times.append(time.perf_counter() - start)
    cpu = _own_cpu() - cpu
    conn.close()
    return times, cpu


def raw_commit_times(path: Path, synchronous: str, n: int) -> list[float]:
    return _raw_commits(path, synchronous, n)[0]


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # all threads of this process
    return usage.ru_utime + usage.ru_stime


def raw_commits_per_second(path: Path, synchronous: str, n: int) -> float:
    return n / sum(raw_commit_times(path, synchronous, n))


def raw_commit_cpu(path: Path, synchronous: str, n: int) -> float:
    """CPU seconds (user + system) of one raw single-row commit (:func:`raw_commit_times`)."""
    return _raw_commits(path, synchronous, n)[1] / n


def handoff_cpu(n: int) -> float:
    """CPU seconds of one empty job through :meth:`hyperhive.store.Database.transaction`:
    queued by a trio task, run by the writer in an empty transaction, the task woken again.
    What any request that writes pays on top of its commit, in this design."""

    async def jobs() -> float:
        with tempfile.TemporaryDirectory(prefix="hh-handoff-") as tmp:
            async with open_database(
                Path(tmp) / "handoff.sqlite", synchronous="FULL", migrations=BROKER_MIGRATIONS
            ) as db:
                for _ in range(50):  # warm-up
                    await db.transaction(lambda _conn: None)
                before = _own_cpu()
                for _ in range(n):
                    await db.transaction(lambda _conn: None)
                return (_own_cpu() - before) / n

    return trio.run(jobs)


def prefill_history(db: Path, messages: int, recipients: list[str]) -> None:
    """``messages`` acked messages, spread over ``recipients``, in a new broker database."""
    db.parent.mkdir(parents=True, exist_ok=True)
    conn = connect(db, synchronous="NORMAL", migrations=BROKER_MIGRATIONS)
    now = time.time() - 3600
    conn.execute("BEGIN")
    batch = 10_000
    for first in range(0, messages, batch):
        conn.executemany(
            "INSERT INTO messages (sender, recipient, body, sent_at, delivered_at, acked_at) "
            "VALUES ('manager', ?, ?, ?, ?, ?)",
            [
                (recipients[i % len(recipients)], f"old message {i}", now, now, now)
                for i in range(first, min(first + batch, messages))
            ],
        )
    conn.execute("COMMIT")
    conn.close()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


ECHO_SERVER = """
import sys, trio
async def handle(stream):
    buf = b""
    async for data in stream:
        buf += data
        while b"\\n" in buf:
            line, buf = buf.split(b"\\n", 1)
            await stream.send_all(line + b"\\n")
"""

#: What both servers end with: listen at ``argv[1]``, say ``ready``, serve ``handle``.
_SERVE = """
async def main(path):
    sock = trio.socket.socket(trio.socket.AF_UNIX)
    await sock.bind(path)
    sock.listen(128)
    print("ready", flush=True)
    await trio.serve_listeners(handle, [trio.SocketListener(sock)])
trio.run(main, sys.argv[1])
"""


def _start_server(script: str, path: Path) -> subprocess.Popen[bytes]:
    """``script`` (a ``handle`` for each connection) in its own process, listening at
    ``path``, once it says it is ready."""
    proc = subprocess.Popen(
        [sys.executable, "-c", script + _SERVE, os.fspath(path)], stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"ready"
    return proc


def start_echo(path: Path) -> subprocess.Popen[bytes]:
    """The trio echo server, in its own process, listening at ``path``."""
    return _start_server(ECHO_SERVER, path)


async def echo_floor(path: Path, samples: int, line: bytes) -> dict[str, Any]:
    """p50/p99 (ms) of a line's round trip through the echo server at ``path``."""
    times = []
    async with await trio.open_unix_socket(os.fspath(path)) as stream:
        for i in range(samples + 50):
            start = time.perf_counter()
            await stream.send_all(line)
            got = b""
            while not got.endswith(b"\n"):
                got += await stream.receive_some(65536)
            if i >= 50:  # warm-up
                times.append(time.perf_counter() - start)
    times.sort()
    return {
        "samples": samples,
        "p50_ms": statistics.median(times) * 1000,
        "p99_ms": times[int(len(times) * 0.99) - 1] * 1000,
    }


PATTERN_SERVER = """
import collections, os, sys, orjson, trio
queues = collections.defaultdict(collections.deque)
parked = {}
async def handle(stream):
    fd = stream.socket.fileno()
    buf = b""
    while True:
        await trio.lowlevel.wait_readable(fd)
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            continue
        if not data:
            return
        buf += data
        while b"\\n" in buf:
            line, _, buf = buf.partition(b"\\n")
            request = orjson.loads(line)
            if request["cmd"] == "send":
                queues[request["to"]].append({"id": 1, "from": "s", "body": request["body"]})
                waiting = parked.pop(request["to"], None)
                if waiting is not None:
                    waiting.set()
                reply = {"ok": True, "id": 1}
            else:
                inbox = queues[request["me"]]
                if not inbox:
                    parked[request["me"]] = woken = trio.Event()
                    with trio.move_on_after(request["wait_seconds"]):
                        await woken.wait()
                taken = [inbox.popleft() for _ in range(min(len(inbox), request["max"]))]
                reply = {"ok": True, "messages": taken}
            os.write(fd, orjson.dumps(reply) + b"\\n")
"""


async def _pattern_traffic(path: Path, pairs: int, per_pair: int) -> int:
    """The sends and long-polls of ``pairs`` pairs through the server at ``path``; the
    number of requests made."""
    requests = 0

    async def call(stream: trio.SocketStream, request: dict[str, Any], buf: list[bytes]) -> Any:
        await stream.send_all(orjson.dumps(request) + b"\n")
        while b"\n" not in buf[0]:
            buf[0] += await stream.receive_some(65536)
        line, _, buf[0] = buf[0].partition(b"\n")
        return orjson.loads(line)

    async def sender(i: int) -> None:
        nonlocal requests
        async with await trio.open_unix_socket(os.fspath(path)) as stream:
            buf = [b""]
            for k in range(per_pair):
                await call(stream, {"cmd": "send", "to": f"r{i}", "body": f"message {k}"}, buf)
                requests += 1

    async def receiver(i: int) -> None:
        nonlocal requests
        async with await trio.open_unix_socket(os.fspath(path)) as stream:
            buf, got = [b""], 0
            while got < per_pair:
                request = {"cmd": "recv", "me": f"r{i}", "wait_seconds": 30, "max": 32}
                got += len((await call(stream, request, buf))["messages"])
                requests += 1

    async with trio.open_nursery() as nursery:
        for i in range(pairs):
            nursery.start_soon(sender, i)
            nursery.start_soon(receiver, i)
    return requests


def pattern_floor(path: Path, pairs: int, messages: int) -> dict[str, float]:
    """The minimal server's CPU per message and per request for ``messages`` messages
    over ``pairs`` pairs, and its requests per message."""
    proc = _start_server(PATTERN_SERVER, path)
    try:
        per_pair = messages // pairs
        before = cpu_seconds(proc.pid)
        requests = trio.run(_pattern_traffic, path, pairs, per_pair)
        cpu = cpu_seconds(proc.pid) - before
    finally:
        proc.kill()
        proc.wait()
    sent = pairs * per_pair
    return {
        "pairs": pairs,
        "cpu_us_per_message": cpu / sent * 1e6,
        "cpu_us_per_request": cpu / requests * 1e6,
        "requests_per_message": requests / sent,
    }
