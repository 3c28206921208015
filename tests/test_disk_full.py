"""A full disk is an outage of writes, not of the daemon.

The state dir is a small tmpfs (mounted for the test; that needs root, and CI runs as
root) that the test fills up with a file. Writes are then refused with ``disk full: …``;
reads, parked long-polls, the other sockets and the dashboard keep working; once the file
is removed, writes succeed again without a restart, and every acknowledged message is
there. The run dir is elsewhere (it is not the disk that fills).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from hyperhive.client import Client
from hyperhive.config import Paths
from hyperhive.errors import DiskFull
from hyperhive.store import open_database
from hyperhive.web._auth import CSRF_HEADER
from tests.conftest import DaemonProcess, connect_agent, need, wait_until
from tests.dashboard.conftest import http, login

MIB = 1024 * 1024


@pytest.fixture
def small_fs(short_tmp: Path) -> Iterator[Path]:
    """A 32 MiB tmpfs: a file system the test can fill."""
    need(os.geteuid() == 0, "mounting a tmpfs needs root")
    need(shutil.which("mount") is not None, "mount (util-linux)")
    path = short_tmp / "state"
    path.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=32m,mode=0700", "tmpfs", str(path)],
        check=True,
        capture_output=True,
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def fill(directory: Path) -> Path:
    """Write a file until the file system has no space left; its path."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        for size in (MIB, 4096, 512, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    st = os.statvfs(directory)
    assert st.f_bavail == 0
    return filler


def _schema(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE rows (id INTEGER PRIMARY KEY, body TEXT, seen INTEGER)")


async def test_database_refuses_writes_when_full_and_takes_them_again_after(
    small_fs: Path,
) -> None:
    db_path = small_fs / "t.sqlite"
    async with open_database(
        db_path, synchronous="FULL", migrations=[_schema], reserve_bytes=2 * MIB
    ) as db:

        def insert(body: str) -> Any:
            return lambda conn: (
                conn.execute("INSERT INTO rows (body) VALUES (?)", (body,)).lastrowid
            )

        acked = [await db.transaction(insert(f"before {i}")) for i in range(5)]
        filler = fill(small_fs)
        assert not db.full

        # One batch: a read, a non-durable mark (like recv) and a durable insert (like send).
        results: dict[str, Any] = {}

        async def run(key: str, fn: Any, durable: bool = True, slow: bool = False) -> None:
            try:
                results[key] = await db.transaction(fn, durable=durable, slow=slow)
            except DiskFull as exc:
                results[key] = exc

        # The writer takes whatever is queued when it is free: it is held by a long job
        # (in its thread) until all three are queued, so they meet in its next batch.
        entered, gate = threading.Event(), threading.Event()

        def hold(_conn: sqlite3.Connection) -> bool:
            entered.set()
            return gate.wait(30)

        async def holding() -> bool:
            return entered.is_set()

        async def queued_all() -> bool:
            return db.statistics().queued == 3

        batches = db.statistics().batches
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, "gate", hold, False, True)
            await wait_until(holding)
            batches += 1  # the holding job's own
            nursery.start_soon(
                run, "read", lambda c: c.execute("SELECT count(*) FROM rows").fetchone()[0]
            )
            nursery.start_soon(
                run,
                "mark",
                lambda c: c.execute("UPDATE rows SET seen = 1 WHERE id = 1").rowcount,
                False,
            )
            nursery.start_soon(run, "insert", insert("during"))
            await wait_until(queued_all)
            gate.set()
        assert db.statistics().batches == batches + 1, "the three jobs were not one batch"
        assert isinstance(results["insert"], DiskFull)
        assert str(results["insert"]).startswith("disk full: ")
        assert results["read"] == 5 and results["mark"] == 1  # not poisoned by the insert
        assert db.full
        with pytest.raises(DiskFull):
            await db.transaction(insert("still full"))
        assert (
            await db.transaction(
                lambda c: c.execute("SELECT seen FROM rows WHERE id = 1").fetchone()[0]
            )
            == 1
        )

        filler.unlink()
        acked.append(await db.transaction(insert("after")))  # no restart, no reopening
        assert not db.full
        assert db.reserve_file is not None and db.reserve_file.stat().st_size == 2 * MIB
        rows = await db.transaction(lambda c: c.execute("SELECT id, body FROM rows").fetchall())
    assert [r[0] for r in rows] == acked
    assert [r[1] for r in rows] == [*(f"before {i}" for i in range(5)), "after"]


async def test_daemon_refuses_writes_on_a_full_disk_and_keeps_serving(
    small_fs: Path, short_tmp: Path, nursery: trio.Nursery
) -> None:
    paths = Paths(state_dir=small_fs, run_dir=short_tmp / "run")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYPERHIVE_MIN_FREE": "12M"}
    env.pop("NOTIFY_SOCKET", None)
    d = DaemonProcess(paths, env)
    await d.start(nursery)
    try:
        await _full_disk_scenario(d, nursery)
    finally:
        if d.proc is not None and d.proc.returncode is None:
            await d.stop()


async def _full_disk_scenario(d: DaemonProcess, nursery: trio.Nursery) -> None:
    paths = d.paths
    for name in ("alice", "bob", "carol"):
        assert (await d.call({"cmd": "spawn", "name": name}))["ok"]
    alice = await connect_agent(paths, "alice")
    bob = await connect_agent(paths, "bob")
    carol = await connect_agent(paths, "carol")
    acked: list[int] = []
    for i in range(3):
        reply = await alice.request({"cmd": "send", "to": "bob", "body": f"before {i}"})
        assert reply["ok"], reply
        acked.append(reply["id"])
    assert (await d.call({"cmd": "status"}))["problems"] == []

    # Carol waits in a long-poll across the whole outage.
    parked: list[dict[str, Any]] = []
    woken = trio.Event()

    async def park() -> None:
        parked.append(await carol.request({"cmd": "recv", "wait_seconds": 120, "max": 1}))
        woken.set()

    nursery.start_soon(park)
    await d.wait_parked(1)

    filler = fill(paths.state_dir)
    refused = await alice.request({"cmd": "send", "to": "bob", "body": "during"})
    assert not refused["ok"] and refused["error"].startswith("disk full: "), refused
    host_send = await d.call({"cmd": "send", "to": "bob", "body": "from the operator"})
    assert not host_send["ok"] and host_send["error"].startswith("disk full: "), host_send

    # Reads work: recv of an existing message, status, list, the other sockets.
    got = await bob.request({"cmd": "recv", "max": 1})
    assert got["ok"] and [m["body"] for m in got["messages"]] == ["before 0"], got
    listed = await d.call({"cmd": "list"})
    assert listed["ok"] and {a["name"] for a in listed["agents"]} >= {"alice", "bob", "carol"}
    async with await connect_agent(paths, "carol") as carol_again:  # carol's first one waits
        assert (await carol_again.request({"cmd": "status"}))["ok"]

    async def warned() -> bool:
        problems = (await d.call({"cmd": "status"}))["problems"]
        return any(p.startswith("disk full") for p in problems) and any(
            p.startswith("low disk space") for p in problems
        )

    await wait_until(warned, limit=10, interval=0.1)
    cli = await trio.run_process(
        [sys.executable, "-m", "hyperhive", "status", "--run-dir", str(paths.run_dir)],
        capture_stdout=True,
        env=d.env,
    )
    assert b"! disk full: writes to " in cli.stdout, cli.stdout
    status = await d.call({"cmd": "status"})
    assert status["parked_receivers"] == 1 and not parked

    # The dashboard reads too, and shows the same problems.
    base, cookie = await login(d)
    state = await http(base, "GET", "/api/state", headers={"cookie": cookie})
    assert state.status == 200
    assert any(p.startswith("disk full") for p in state.json()["problems"])
    # A write through the dashboard is refused the same way: 507 Insufficient Storage.
    refused_web = await http(
        base,
        "POST",
        "/api/send",
        headers={
            "cookie": cookie,
            "content-type": "application/json",
            CSRF_HEADER: state.json()["csrf"],
        },
        body=json.dumps({"cmd": "send", "to": "bob", "body": "from the dashboard"}).encode(),
    )
    assert refused_web.status == 507, refused_web
    assert refused_web.json()["error"].startswith("disk full: ")
    metrics = await http(base, "GET", "/metrics", headers={"cookie": cookie})
    assert b"hyperhive_state_dir_low_space 1" in metrics.body
    assert b"hyperhive_disk_full 1" in metrics.body

    # Space comes back: writes succeed again, without a restart.
    pid = d.pid
    filler.unlink()
    after = await alice.request({"cmd": "send", "to": "carol", "body": "after"})
    assert after["ok"], after
    with trio.fail_after(10):
        await woken.wait()
    assert [m["body"] for m in parked[0]["messages"]] == ["after"]
    more = await alice.request({"cmd": "send", "to": "bob", "body": "after 2"})
    assert more["ok"], more
    acked += [after["id"], more["id"]]

    async def healthy() -> bool:
        return (await d.call({"cmd": "status"}))["problems"] == []

    await wait_until(healthy, limit=10, interval=0.1)
    assert d.pid == pid and d.proc is not None and d.proc.returncode is None

    # Every acknowledged message is there, and nothing refused slipped in.
    rest = await bob.request({"cmd": "recv", "max": 32})
    received = [*got["messages"], *parked[0]["messages"], *rest["messages"]]
    assert sorted(m["id"] for m in received) == sorted(acked)
    assert {m["body"] for m in received}.isdisjoint(
        {"during", "from the operator", "from the dashboard"}
    )
    for client in (alice, bob, carol):
        await client.aclose()
    async with await Client.connect(paths.host_socket) as host:
        assert (await host.request({"cmd": "status"}))["ok"]
