"""Bounded disk: logs rotated while the agent writes them, events dbs that shrink, the
space freed reported by ``vacuum``, the state dir's size and each agent's."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from hyperhive.client import Client
from hyperhive.config import Config
from hyperhive.disk import LogPolicy, generation, rotate_log, tree_bytes
from hyperhive.retention import sweep_events_db
from hyperhive.store import connect
from hyperhive.supervisor import open_hive
from hyperhive_harness.event_log import MIGRATIONS
from tests.conftest import DaemonProcess, make_paths, wait_until

CHATTY = (sys.executable, str(Path(__file__).parent / "payloads" / "chatty.py"))


def _write(path: Path, size: int, fill: bytes = b"a") -> None:
    path.write_bytes(fill * size)


def test_a_log_under_its_cap_is_left_alone(tmp_path: Path) -> None:
    log = tmp_path / "container.log"
    _write(log, 100)
    assert not rotate_log(log, LogPolicy(cap_bytes=100, keep=2))
    assert log.stat().st_size == 100
    assert not generation(log, 1).exists()
    assert not rotate_log(tmp_path / "missing.log", LogPolicy(cap_bytes=1, keep=1))


def test_generations_move_up_and_the_oldest_goes(tmp_path: Path) -> None:
    log = tmp_path / "container.log"
    policy = LogPolicy(cap_bytes=1000, keep=2)
    for fill in (b"1", b"2", b"3"):
        _write(log, 1500, fill)
        assert rotate_log(log, policy)
        assert log.stat().st_size == 0
    # Each generation keeps the newest cap bytes of its log.
    assert generation(log, 1).read_bytes() == b"3" * 1000
    assert generation(log, 2).read_bytes() == b"2" * 1000
    assert not generation(log, 3).exists()


def test_keep_zero_only_truncates(tmp_path: Path) -> None:
    log = tmp_path / "container.log"
    _write(log, 50)
    assert rotate_log(log, LogPolicy(cap_bytes=10, keep=0))
    assert log.stat().st_size == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["container.log"]


def test_a_symlinked_log_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    _write(victim, 5000)
    log = tmp_path / "container.log"
    log.symlink_to(victim)
    assert not rotate_log(log, LogPolicy(cap_bytes=10, keep=1))
    assert victim.stat().st_size == 5000
    # A planted link where the next generation goes makes the rotation fail, not write there.
    log.unlink()
    _write(log, 5000)
    generation(log, 1).symlink_to(victim)
    rotate_log(log, LogPolicy(cap_bytes=10, keep=2))  # moves the link up, writes a new .1
    assert victim.stat().st_size == 5000
    assert generation(log, 1).read_bytes() == b"a" * 10


def test_a_writer_appending_goes_on_at_the_new_end(tmp_path: Path) -> None:
    """The payload's descriptor is O_APPEND: after the truncation its writes land at 0."""
    log = tmp_path / "container.log"
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, b"x" * 4096)
        assert rotate_log(log, LogPolicy(cap_bytes=1024, keep=1))
        os.write(fd, b"after\n")
    finally:
        os.close(fd)
    assert log.read_bytes() == b"after\n"
    assert generation(log, 1).read_bytes() == b"x" * 1024


def test_tree_bytes_counts_files_not_links_and_stops(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    _write(tmp_path / "a" / "f", 64 * 1024)
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    _write(outside / "big", 1 << 20)
    (tmp_path / "link").symlink_to(outside)
    size = tree_bytes(tmp_path)
    assert 64 * 1024 <= size < (1 << 20)
    assert tree_bytes(tmp_path / "missing") == 0
    for i in range(50):
        (tmp_path / f"e{i}").touch()
    assert tree_bytes(tmp_path, max_entries=10) <= size


def _events_db(path: Path, rows: int, *, harness: bool) -> None:
    """An events db as the harness makes it (its own migrations), or a plain old one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if harness:
        conn = connect(path, synchronous="NORMAL", migrations=MIGRATIONS)
    else:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute(
            "CREATE TABLE events (id INTEGER PRIMARY KEY, ts REAL, kind TEXT, payload_json TEXT)"
        )
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO events (ts, kind, payload_json) VALUES (?, 'note', ?)",
        [(time.time(), json.dumps({"text": "y" * 2000})) for _ in range(rows)],
    )
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


@pytest.mark.parametrize("harness", [True, False], ids=["harness-made", "made-without-vacuum"])
def test_a_swept_events_db_shrinks_on_disk(tmp_path: Path, harness: bool) -> None:
    db = tmp_path / "hyperhive-events.sqlite"
    _events_db(db, 3000, harness=harness)
    before = db.stat().st_size
    swept = sweep_events_db(db, time.time(), keep=100)
    assert swept.deleted == 2900
    after = db.stat().st_size
    assert after < before / 5
    assert swept.freed == before - after
    # An old file was switched to incremental vacuum: the next sweep does not rewrite it.
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
    conn.close()


async def test_a_running_agent_keeps_a_bounded_log_dir(short_tmp: Path) -> None:
    cap, keep = 64 * 1024, 2
    cfg = Config(
        paths=make_paths(short_tmp),
        backend="process",
        harness_command=CHATTY,
        stop_agents_on_exit=True,
        log_cap_bytes=cap,
        log_keep=keep,
        log_check_seconds=0.05,
    )
    async with open_hive(cfg) as hive:
        await hive.spawn("chatty")
        logs = hive.config.paths.logs_dir("chatty")
        log = hive.config.paths.container_log("chatty")
        pid = hive.registry.get("chatty").pid

        def newest_line() -> int:
            for path in (log, generation(log, 1)):
                try:
                    tail = path.read_bytes()[-8192:].splitlines()
                except FileNotFoundError:
                    continue
                numbers = [int(x.split()[0]) for x in tail if x.strip()[:1].isdigit()]
                if numbers:
                    return max(numbers)
            return 0

        async def rotated_a_while() -> bool:
            return generation(log, keep).exists() and newest_line() * 4096 > 20 * cap

        await wait_until(rotated_a_while, limit=60)
        # The same payload still runs and still writes into container.log.
        assert hive.registry.get("chatty").pid == pid
        names = sorted(p.name for p in logs.iterdir())
        assert names == ["container.log", "container.log.1", "container.log.2"]
        for n in (1, 2):
            assert generation(log, n).stat().st_size <= cap
        # Far less than was written is kept: the live file was cut while it was written.
        assert sum(p.stat().st_size for p in logs.iterdir()) < newest_line() * 4096 - keep * cap
        # Each generation holds consecutive lines (the newest part of its log).
        lines = [int(x.split()[0]) for x in generation(log, 1).read_bytes().splitlines()[1:]]
        assert lines == list(range(lines[0], lines[0] + len(lines)))


async def test_vacuum_reports_rows_and_bytes_freed(daemon: DaemonProcess) -> None:
    """Through host.sock and the CLI: the operator's retention pass says what it freed."""
    # Restarted with retention windows of zero.
    await daemon.stop()
    daemon.args = ["--retention-days", "0", "--events-days", "0", "--events-keep", "0"]
    async with trio.open_nursery() as nursery:
        await daemon.start(nursery)
        await daemon.call({"cmd": "spawn", "name": "alice", "backend": "external"})
        body = "z" * 4000
        async with await Client.connect(daemon.paths.agent_socket("alice")) as alice:
            for _ in range(300):
                await daemon.call({"cmd": "send", "to": "alice", "body": body})
            received = 0
            while received < 300:
                got = await alice.request({"cmd": "recv", "max": 32, "ack": False})
                ids = [m["id"] for m in got["messages"]]
                assert ids, got
                await alice.request({"cmd": "ack", "ids": ids})
                received += len(ids)
        _events_db(daemon.paths.events_db("alice"), 500, harness=True)
        out = await trio.to_thread.run_sync(
            lambda: (
                subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "hyperhive",
                        "vacuum",
                        "--json",
                        "--run-dir",
                        str(daemon.paths.run_dir),
                        "--state-dir",
                        str(daemon.paths.state_dir),
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
            )
        )
        report = json.loads(out)
        assert report["deleted"] == 300
        assert report["events_deleted"] == 500
        assert report["freed_bytes"] > 300 * 4000
        status = await daemon.call({"cmd": "status"})
        assert status["state_dir_bytes"] > 0
        [alice_info] = [
            a for a in (await daemon.call({"cmd": "list"}))["agents"] if a["name"] == "alice"
        ]
        assert alice_info["disk_bytes"] > 0
        await daemon.stop()
