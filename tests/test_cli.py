"""The admin CLI against a real daemon: tables for people, --json for scripts, errors exit 1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import attrs
import trio

from hyperhive.client import Client
from hyperhive.config import PROTOCOL_VERSION
from hyperhive.protocol import Recv
from tests.conftest import DaemonProcess


@attrs.frozen
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


async def cli(
    daemon: DaemonProcess, *args: str, via_env: bool = False, stdin: bytes = b""
) -> Result:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYPERHIVE_")}
    argv = [sys.executable, "-m", "hyperhive", *args]
    if via_env:
        env["HYPERHIVE_RUN_DIR"] = str(daemon.paths.run_dir)
    else:
        argv += ["--run-dir", str(daemon.paths.run_dir)]
    proc = await trio.run_process(
        argv, env=env, stdin=stdin, capture_stdout=True, capture_stderr=True, check=False
    )
    return Result(proc.returncode, proc.stdout.decode(), proc.stderr.decode())


async def test_operator_workflow(daemon: DaemonProcess) -> None:
    r = await cli(daemon, "spawn", "alice")
    assert (r.code, r.out.strip()) == (0, "spawned alice (registered)")
    r = await cli(daemon, "list")
    assert r.code == 0
    lines = r.out.splitlines()
    assert lines[0].split() == [
        "NAME",
        "ROLE",
        "PARENT",
        "STATE",
        "BACKEND",
        "HARNESS",
        "UNREAD",
        "MODEL",
        "STATUS",
    ]
    assert [line.split()[0] for line in lines[1:]] == ["manager", "alice"]
    r = await cli(daemon, "list", "--json", via_env=True)
    assert [a["name"] for a in r.json()["agents"]] == ["manager", "alice"]

    r = await cli(daemon, "send", "alice", "-", stdin=b"from stdin\n")
    assert r.code == 0 and r.out.startswith("sent message ")
    async with await Client.connect(daemon.paths.agent_socket("alice")) as alice:
        got = await alice.call(Recv())
        assert got.messages[0].body == "from stdin\n"  # type: ignore[attr-defined]
        assert got.messages[0].from_ == "operator"  # type: ignore[attr-defined]
        await alice.request({"cmd": "send", "to": "operator", "body": "hello operator"})
        asked = await alice.request({"cmd": "ask", "question": "Ship it?", "options": ["y", "n"]})

    r = await cli(daemon, "status")
    assert "unread for operator: 1" in r.out and "open questions: 1" in r.out
    r = await cli(daemon, "inbox")
    assert "hello operator" in r.out and "alice" in r.out
    r = await cli(daemon, "inbox", "--json")
    assert r.json()["messages"][0]["acked_at"] is not None  # read by the first inbox

    r = await cli(daemon, "questions")
    assert "Ship it?" in r.out and "y | n" in r.out
    r = await cli(daemon, "answer", str(asked["id"]), "y")
    assert r.code == 0 and "resolved: y (by operator)" in r.out
    r = await cli(daemon, "answer", str(asked["id"]), "n")
    assert r.code == 1 and "already resolved" in r.err and r.out == ""

    r = await cli(daemon, "request-spawn", "bob", "--description", "tester")
    assert r.code == 0 and "spawn bob is pending" in r.out
    r = await cli(daemon, "pending", "--json")
    [approval] = r.json()["approvals"]
    assert approval["description"] == "tester"
    r = await cli(daemon, "deny", str(approval["id"]), "--note", "not now")
    assert r.code == 0 and "denied — not now" in r.out
    r = await cli(daemon, "pending")
    assert r.out.strip() == "no pending approvals"

    r = await cli(daemon, "set-model", "alice", "sonnet")
    assert r.code == 0
    assert daemon.paths.model_file("alice").read_text().strip() == "sonnet"
    r = await cli(daemon, "vacuum", "--json")
    # --json prints the daemon's reply: with the protocol version every host reply carries.
    assert r.json() == {
        "protocol": PROTOCOL_VERSION,
        "deleted": 0,
        "events_deleted": 0,
        "freed_bytes": 0,
    }


async def test_errors_go_to_stderr_with_exit_1(daemon: DaemonProcess) -> None:
    for args, reason in [
        (("spawn", "../etc"), "invalid agent name"),
        (("send", "ghost", "hi"), "unknown recipient 'ghost'"),
        (("approve", "99"), "no approval with id 99"),
        (("cancel-question", "5"), "no question with id 5"),
        (("destroy", "manager"), "manager cannot be destroyed"),
    ]:
        r = await cli(daemon, *args)
        assert r.code == 1, args
        assert r.err.startswith("hyperhive: ") and reason in r.err, (args, r.err)
        assert r.out == ""


async def test_no_daemon_is_a_clear_error(daemon: DaemonProcess) -> None:
    await daemon.stop()
    r = await cli(daemon, "status")
    assert r.code == 1 and "no daemon is listening on" in r.err


async def test_schema_is_valid_json_with_every_socket() -> None:
    proc = await trio.run_process(
        [sys.executable, "-m", "hyperhive", "schema"], capture_stdout=True
    )
    schema = json.loads(proc.stdout)
    assert set(schema["sockets"]) == {"agent", "manager", "host"}
    assert "recv" in schema["sockets"]["agent"]


def test_help_lists_the_commands() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "hyperhive", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for command in [
        "run",
        "status",
        "list",
        "spawn",
        "send",
        "inbox",
        "pending",
        "approve",
        "deny",
        "questions",
        "answer",
        "cancel-question",
        "vacuum",
        "schema",
    ]:
        assert f" {command} " in out, command
    assert "[cancelled]" in out


def test_run_takes_its_defaults_from_config() -> None:
    """``hyperhive run``'s option defaults are Config's (and config.py's constants), so the
    daemon run by hand and a Config built in code agree (the backend is ``auto`` in both)."""
    import typer.main

    from hyperhive import config
    from hyperhive.cli import app

    command = typer.main.get_command(app)
    assert isinstance(command, typer.main.TyperGroup)
    params = {p.name: p.default for p in command.commands["run"].params}
    fields = attrs.fields_dict(config.Config)
    shared = [
        "backend",
        "admin_group",
        "stop_agents_on_exit",
        "agent_model",
        "agent_cpu_quota",
        "agent_memory_max",
        "min_free",
        "line_deadline_seconds",
        "timezone",
    ]
    assert {name: params[name] for name in shared} == {
        name: fields[name].default for name in shared
    }
    assert params["backend"] == config.DEFAULT_BACKEND == "auto"
    assert params["dashboard_bind"] == config.DEFAULT_DASHBOARD_BIND
    assert params["log_level"] == config.DEFAULT_LOG_LEVEL
    help_text = subprocess.run(
        [sys.executable, "-m", "hyperhive", "run", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "COLUMNS": "200"},
    ).stdout
    assert f"({config.DEFAULT_CPU_QUOTA})" in help_text
    assert f"({config.DEFAULT_MEMORY_MAX})" in help_text
    assert f"({config.DEFAULT_MODEL})" in help_text
