"""What an agent (or the manager) leaves in the directories it can write, read back by a real
``hyperhive run``: never a way to read or write host files, hang the daemon or run code.

The agent's ``/state`` is ``<state>/agents/<name>/state`` on the host and the manager's
``/agents`` is ``<state>/proposed``; the files below are what a payload can put there
through those binds (the external backend has no container, so the test puts them in the
same directories). Each request goes through the agent's, the manager's or the operator's
own socket.
"""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import stat
import sys
import threading
import time
from pathlib import Path

import pytest
import trio

from hyperhive.client import Client
from hyperhive.config import Config
from hyperhive.containers._backend import MAX_TAIL_BYTES
from hyperhive.retention import sweep_events_db
from hyperhive.server import set_socket_mode
from hyperhive.supervisor import Hive, open_hive
from tests.conftest import DaemonProcess, git, make_paths, wait_until

SECRET = "root:$6$not-for-agents$hash:19000:0:99999:7:::"


def host_secret(root: Path) -> Path:
    """A file only the host should read: two lines, both secret (git quotes the second)."""
    path = root / "host-secret"
    path.write_text(f"{SECRET}\nsecond line, not-for-agents either\n")
    return path


async def spawn(daemon: DaemonProcess, name: str) -> Path:
    reply = await daemon.call({"cmd": "spawn", "name": name})
    assert reply["ok"], reply
    return daemon.paths.agent_dir(name) / "state"


async def test_model_file_symlink_never_shows_a_host_file(
    daemon: DaemonProcess, short_tmp: Path
) -> None:
    state = await spawn(daemon, "mal")
    model = state / "hyperhive-model"
    model.unlink()
    model.symlink_to(host_secret(short_tmp))
    async with await Client.connect(daemon.paths.agent_socket("mal")) as agent:
        meta = await agent.request({"cmd": "get_agent_meta"})
    assert meta["ok"], meta
    assert meta["model"] == "haiku"  # the default, not the file the link points at
    listed = await daemon.call({"cmd": "list"})
    assert all(SECRET not in a["model"] for a in listed["agents"])


@pytest.mark.parametrize("kind", ["fifo", "device", "huge"])
async def test_model_file_that_blocks_or_floods_leaves_the_daemon_answering(
    daemon: DaemonProcess, kind: str
) -> None:
    state = await spawn(daemon, "mal")
    model = state / "hyperhive-model"
    model.unlink()
    if kind == "fifo":
        os.mkfifo(model)  # a read would wait for a writer forever
    elif kind == "device":
        model.symlink_to("/dev/zero")  # a read would never end
    else:
        model.write_text("x" * (8 * 1024 * 1024))
    async with await Client.connect(daemon.paths.agent_socket("mal")) as agent:
        with trio.fail_after(5):
            meta = await agent.request({"cmd": "get_agent_meta"})
    assert meta["ok"] and meta["model"] == "haiku", meta
    with trio.fail_after(5):
        status = await daemon.call({"cmd": "status"})
    assert status["ok"]
    assert daemon.rss_bytes() < 200 * 1024 * 1024


async def test_set_model_never_writes_through_a_planted_symlink(
    daemon: DaemonProcess, short_tmp: Path
) -> None:
    state = await spawn(daemon, "mal")
    victim = short_tmp / "host-file"
    victim.write_text("host content\n")
    # The names a writer of hyperhive-model could use for its temporary file, all planted.
    for name in ("hyperhive-model.tmp", ".hyperhive-model.tmp"):
        (state / name).symlink_to(victim)
    reply = await daemon.call({"cmd": "set_model", "name": "mal", "model": "sonnet"})
    assert reply["ok"], reply
    assert victim.read_text() == "host content\n"
    assert (state / "hyperhive-model").read_text() == "sonnet\n"
    # A symlink at the model file itself is replaced, not written through.
    (state / "hyperhive-model").unlink()
    (state / "hyperhive-model").symlink_to(victim)
    reply = await daemon.call({"cmd": "set_model", "name": "mal", "model": "opus"})
    assert reply["ok"], reply
    assert victim.read_text() == "host content\n"
    assert not (state / "hyperhive-model").is_symlink()
    async with await Client.connect(daemon.paths.agent_socket("mal")) as agent:
        assert (await agent.request({"cmd": "get_agent_meta"}))["model"] == "opus"


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
@pytest.mark.parametrize("planted", ["packed-refs", "refs/heads/x"])
async def test_apply_commit_never_tells_the_manager_a_host_file(
    daemon: DaemonProcess, short_tmp: Path, planted: str
) -> None:
    await spawn(daemon, "alice")
    repo = daemon.paths.proposed_dir("alice")
    head = git(repo, "rev-parse", "HEAD")
    link = repo / ".git" / planted
    link.unlink(missing_ok=True)
    link.symlink_to(host_secret(short_tmp))
    async with await Client.connect(daemon.paths.agent_socket("manager")) as manager:
        reply = await manager.request(
            {"cmd": "request_apply_commit", "agent": "alice", "commit_ref": head}
        )
        assert not reply["ok"]
        assert "symlink" in reply["error"]
        assert "not-for-agents" not in reply["error"]
        link.unlink()
        approvals = await daemon.call({"cmd": "approvals", "include_resolved": True})
        assert all("not-for-agents" not in (a["note"] or "") for a in approvals["approvals"])
        reply = await manager.request(
            {"cmd": "request_apply_commit", "agent": "alice", "commit_ref": head}
        )
        assert reply["ok"], reply


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
async def test_a_failed_fetch_reports_no_git_message_to_the_manager(
    daemon: DaemonProcess,
) -> None:
    """git quotes lines it cannot parse; a racing manager could point them anywhere, so the
    fetch's own failure is reported without git's text (the daemon's log has it)."""
    await spawn(daemon, "alice")
    repo = daemon.paths.proposed_dir("alice")
    head = git(repo, "rev-parse", "HEAD")
    (repo / ".git" / "packed-refs").write_text(f"{SECRET}\nsecond line, not-for-agents either\n")
    async with await Client.connect(daemon.paths.agent_socket("manager")) as manager:
        reply = await manager.request(
            {"cmd": "request_apply_commit", "agent": "alice", "commit_ref": head}
        )
    assert not reply["ok"]
    assert "fetching from the proposed config repo of alice failed" in reply["error"]
    assert "not-for-agents" not in reply["error"]
    assert any("not-for-agents" in line for line in daemon.output)  # the operator sees it


def make_events_db(path: Path, *schema: str) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(
        "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, ts REAL NOT NULL, "
        "kind TEXT NOT NULL, payload_json TEXT NOT NULL)"
    )
    conn.executemany(
        "INSERT INTO events (ts, kind, payload_json) VALUES (?, 'note', '{}')",
        [(0.0,), (time.time(),)],
    )
    for statement in schema:
        conn.execute(statement)
    conn.close()


#: A trigger that makes every deleted row cost 3000³ steps: a sweep that never ends.
ENDLESS_TRIGGER = (
    "CREATE TABLE big (x)",
    "WITH RECURSIVE n(v) AS (SELECT 1 UNION ALL SELECT v + 1 FROM n WHERE v < 3000) "
    "INSERT INTO big SELECT v FROM n",
    "CREATE TABLE sink (n)",
    "CREATE TRIGGER slow BEFORE DELETE ON events BEGIN "
    "INSERT INTO sink SELECT count(*) FROM big a, big b, big c; END",
)


async def test_events_db_made_hostile_never_holds_the_sweep(hive: Hive) -> None:
    await hive.spawn("mal")
    await hive.spawn("good")
    state = hive.config.paths.agent_dir("mal") / "state"
    make_events_db(state / "hyperhive-events.sqlite", *ENDLESS_TRIGGER)
    good = hive.config.paths.agent_dir("good") / "state" / "hyperhive-events.sqlite"
    make_events_db(good)
    with trio.fail_after(20):
        deleted = await hive.sweep_events()
    assert deleted.deleted == 1  # good's old row; mal's db is refused, not swept
    conn = sqlite3.connect(state / "hyperhive-events.sqlite")
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 2
    conn.close()


def test_events_db_symlink_is_not_followed_nor_created(tmp_path: Path) -> None:
    host_db = tmp_path / "host.sqlite"
    make_events_db(host_db)
    link = tmp_path / "hyperhive-events.sqlite"
    link.symlink_to(host_db)
    with pytest.raises(sqlite3.DatabaseError, match="not a regular file"):
        sweep_events_db(link, time.time())
    conn = sqlite3.connect(host_db)
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 2
    conn.close()
    # A dangling link: the sweep creates nothing at its target.
    dangling = tmp_path / "other" / "hyperhive-events.sqlite"
    dangling.parent.mkdir()
    dangling.symlink_to(tmp_path / "nologin")
    with pytest.raises(sqlite3.DatabaseError):
        sweep_events_db(dangling, time.time())
    assert not (tmp_path / "nologin").exists()


#: Past the sweep's bound on one value (64 MiB), far from sqlite's own (1 GB).
FAT = 70 * 1024 * 1024


@pytest.mark.parametrize(
    "schema",
    [
        (f"CREATE INDEX fat ON events (length(zeroblob({FAT} + id)))",),
        ("DROP TABLE events", "CREATE VIEW events AS SELECT 1 AS id, 0.0 AS ts"),
        ("CREATE TABLE big (x)", "CREATE VIEW v AS SELECT 1", *ENDLESS_TRIGGER[1:]),
    ],
    ids=["huge-index-values", "view", "trigger"],
)
def test_events_db_schema_cannot_make_the_sweep_costly(
    tmp_path: Path, schema: tuple[str, ...]
) -> None:
    db = tmp_path / "hyperhive-events.sqlite"
    make_events_db(db, *schema)
    before = _count(db)
    outcome: list[object] = []

    def sweep() -> None:
        try:
            outcome.append(sweep_events_db(db, time.time()))
        except sqlite3.Error as exc:
            outcome.append(exc)

    worker = threading.Thread(target=sweep, daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert outcome, "the sweep did not end"
    assert isinstance(outcome[0], sqlite3.Error), outcome
    assert _count(db) == before


def _count(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
    finally:
        conn.close()


def test_a_sweep_past_its_time_limit_is_interrupted(tmp_path: Path) -> None:
    db = tmp_path / "hyperhive-events.sqlite"
    make_events_db(
        db,
        "WITH RECURSIVE n(v) AS (SELECT 1 UNION ALL SELECT v + 1 FROM n WHERE v < 5000) "
        "INSERT INTO events (ts, kind, payload_json) SELECT 0, 'note', '{}' FROM n",
    )
    ticks = iter(range(10**9))  # a clock that moves one second per reading
    with pytest.raises(sqlite3.OperationalError, match="interrupted"):
        sweep_events_db(db, time.time(), time_limit=0.5, clock=lambda: float(next(ticks)))
    assert _count(db) == 5002  # rolled back as a whole
    assert (
        sweep_events_db(db, time.time()).deleted == 5001
    )  # with time, the same sweep goes through


#: A payload whose output is one endless line (16 MiB without a newline), then waits.
ENDLESS_LINE = (
    sys.executable,
    "-c",
    "import sys, time; sys.stdout.write('x' * (16 << 20)); sys.stdout.flush(); time.sleep(600)",
)


async def test_logs_of_one_endless_line_are_read_in_part(short_tmp: Path) -> None:
    cfg = Config(
        paths=make_paths(short_tmp),
        backend="process",
        harness_command=ENDLESS_LINE,
        stop_agents_on_exit=True,
        log_cap_bytes=64 << 20,  # not rotated away while the test reads it
    )
    async with open_hive(cfg) as hive:
        await hive.spawn("mal")
        log = hive.config.paths.container_log("mal")

        async def written() -> bool:
            return log.exists() and log.stat().st_size >= 16 << 20

        await wait_until(written, limit=60)
        async with await Client.connect(hive.config.paths.agent_socket("manager")) as manager:
            with trio.fail_after(10):
                reply = await manager.request({"cmd": "get_logs", "agent": "mal", "lines": 500})
        assert reply["ok"], str(reply)[:200]
        assert 0 < sum(len(line) for line in reply["lines"]) <= MAX_TAIL_BYTES


def test_a_socket_is_never_chmodded_through_a_planted_symlink(short_tmp: Path) -> None:
    """Between the bind of an agent's socket and its chmod, the agent (which writes that
    directory) could swap the socket for a symlink to a host file."""
    victim = short_tmp / "setuid-program"
    victim.write_text("#!/bin/sh\n")
    victim.chmod(0o4755)
    path = short_tmp / "mcp.sock"
    path.symlink_to(victim)
    with pytest.raises(OSError, match="replaced by something else than a socket"):
        set_socket_mode(path, 0o600)
    assert stat.S_IMODE(victim.stat().st_mode) == 0o4755
    path.unlink()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        set_socket_mode(path, 0o600, os.getgid())
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
