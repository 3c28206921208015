"""``hyperhive run`` on PostgreSQL: a real daemon process whose store is a real server.

Two agents exchange messages over their own sockets; the daemon is killed (SIGKILL) and
started again on the same database; every acknowledged message is still there, nothing is
kept in a ``broker.sqlite``, and the URL's password shows nowhere (output, ``status``).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
from pathlib import Path

import psycopg
import trio

from bench._pg import PgServer
from hyperhive.client import Client
from hyperhive.protocol import Recv, Send, Spawn
from tests.conftest import DaemonProcess, make_paths

PASSWORD = "pg-s3cret-Pw"


async def test_two_agents_exchange_messages_that_survive_a_daemon_restart(
    short_tmp: Path, pg_url: str, nursery: trio.Nursery
) -> None:
    url = pg_url.replace("hyperhive@", f"hyperhive:{PASSWORD}@")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYPERHIVE_DATABASE": url}
    env.pop("NOTIFY_SOCKET", None)
    daemon = DaemonProcess(make_paths(short_tmp), env)
    await daemon.start(nursery)
    try:
        async with await daemon.host() as host:
            for name in ("alice", "bob"):
                await host.call(Spawn(name))
        async with (
            await Client.connect(daemon.paths.agent_socket("alice")) as alice,
            await Client.connect(daemon.paths.agent_socket("bob")) as bob,
        ):
            sent = [await alice.call(Send("bob", f"m{i}")) for i in range(3)]
            first = await bob.call(Recv(max=1))
            assert [m.body for m in first.messages] == ["m0"]  # type: ignore[attr-defined]
            await bob.call(Send("alice", "got m0"))
        status = await daemon.call({"cmd": "status"})
        os.kill(daemon.pid, signal.SIGKILL)
        assert await daemon.proc.wait() == -signal.SIGKILL  # type: ignore[union-attr]

        # The messages are rows of the PostgreSQL database, and there is no sqlite store.
        with psycopg.connect(pg_url) as conn:
            stored = {
                row[0]: row[1] for row in conn.execute("SELECT id, body FROM messages").fetchall()
            }
        assert {s.id for s in sent} <= set(stored)  # type: ignore[attr-defined]
        assert "got m0" in stored.values()
        assert not daemon.paths.broker_db.exists()

        await daemon.start(nursery)
        async with (
            await Client.connect(daemon.paths.agent_socket("alice")) as alice,
            await Client.connect(daemon.paths.agent_socket("bob")) as bob,
        ):
            to_bob = await bob.call(Recv(max=10))
            to_alice = await alice.call(Recv(max=10))
        bodies = [m.body for m in to_bob.messages]  # type: ignore[attr-defined]
        # m0 was handed out but not acknowledged: at-least-once gives it again, in order.
        assert bodies[-2:] == ["m1", "m2"] and set(bodies) <= {"m0", "m1", "m2"}
        assert [m.body for m in to_alice.messages] == ["got m0"]  # type: ignore[attr-defined]
        listed = await daemon.call({"cmd": "list"})
        assert [a["name"] for a in listed["agents"]] == ["manager", "alice", "bob"]
        assert await daemon.stop(signal.SIGTERM) == 0
    finally:
        if daemon.proc is not None and daemon.proc.returncode is None:
            daemon.proc.send_signal(signal.SIGKILL)
            with trio.CancelScope(shield=True), trio.fail_after(15):
                await daemon.proc.wait()
    output = "".join(daemon.output)
    assert PASSWORD not in output and PASSWORD not in json.dumps(status)
    assert "hyperhive:***@" in output  # the store it uses is logged, redacted


async def test_an_unknown_database_url_is_refused_at_start(
    short_tmp: Path, nursery: trio.Nursery
) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("NOTIFY_SOCKET", None)
    daemon = DaemonProcess(make_paths(short_tmp), env)
    for args in (
        ["--database", f"mysql://hive:{PASSWORD}@db/hive"],
        ["--env-file", str(env_file(short_tmp, f"HYPERHIVE_DATABASE=sqlite://{PASSWORD}@x"))],
    ):
        daemon.args = args
        proc = await trio.run_process(
            daemon.command(), env=env, capture_stdout=True, capture_stderr=True, check=False
        )
        assert proc.returncode == 1
        err = proc.stderr.decode()
        assert "not a postgresql:// or postgres:// URL" in err, err
        assert PASSWORD not in err + proc.stdout.decode()
        assert not daemon.paths.state_dir.exists()


def env_file(directory: Path, line: str) -> Path:
    path = directory / "hyperhive.env"
    path.write_text(line + "\n")
    path.chmod(0o600)
    return path


def test_the_nixos_option_reaches_the_command_line_and_refuses_a_password(
    tmp_path: Path,
) -> None:
    from tests.test_deployment import _eval_module

    url = "postgresql:///hyperhive?host=/run/postgresql"
    out = _eval_module(tmp_path, {"enable": True, "database": url})
    argv = shlex.split(out["systemd"]["services"]["hyperhive"]["serviceConfig"]["ExecStart"])
    assert argv[argv.index("--database") + 1] == url
    assert all(a["assertion"] for a in out["assertions"])
    default = _eval_module(tmp_path, {"enable": True})
    assert (
        "--database"
        not in default["systemd"]["services"]["hyperhive"]["serviceConfig"]["ExecStart"]
    )
    leaky = _eval_module(tmp_path, {"enable": True, "database": f"postgres://h:{PASSWORD}@db/h"})
    failed = [a["message"] for a in leaky["assertions"] if not a["assertion"]]
    assert len(failed) == 1 and "must hold no password" in failed[0]


def test_the_env_file_may_name_the_store_which_agents_never_see() -> None:
    from hyperhive.containers._backends import PASSTHROUGH_ENV
    from hyperhive.envfile import parse_env_file

    values = parse_env_file(f"HYPERHIVE_DATABASE=postgresql://h:{PASSWORD}@db/h\n")
    assert values == {"HYPERHIVE_DATABASE": f"postgresql://h:{PASSWORD}@db/h"}
    assert "HYPERHIVE_DATABASE" not in PASSTHROUGH_ENV


async def test_a_newer_schema_or_a_missing_database_is_refused_before_anything_is_made(
    short_tmp: Path, pg_server: PgServer, pg_url: str
) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE hyperhive_schema (version BIGINT NOT NULL)")
        conn.execute("INSERT INTO hyperhive_schema VALUES (999)")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("NOTIFY_SOCKET", None)
    daemon = DaemonProcess(make_paths(short_tmp), env)
    missing = pg_server.url("no_such_db", password=PASSWORD)
    for url, expected in (
        (pg_url.replace("hyperhive@", f"hyperhive:{PASSWORD}@"), "schema version 999, newer"),
        (missing, '"no_such_db" does not exist'),
    ):
        daemon.args = ["--database", url]
        proc = await trio.run_process(
            daemon.command(), env=env, capture_stdout=True, capture_stderr=True, check=False
        )
        err = proc.stderr.decode()
        assert proc.returncode == 1 and expected in err, err
        assert "hyperhive:***@" in err and PASSWORD not in err + proc.stdout.decode()
        assert not daemon.paths.state_dir.exists() and not daemon.paths.run_dir.exists()
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT version FROM hyperhive_schema").fetchall() == [(999,)]
