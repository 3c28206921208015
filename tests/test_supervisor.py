"""``hyperhive run`` as an operator starts it: lock, signals, sd_notify, normal users, make run."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from hyperhive.client import Client
from tests.conftest import DaemonProcess, kill_leftovers, need
from tests.harness.mock_anthropic import MockAnthropic

REPO = Path(__file__).resolve().parent.parent


async def test_second_daemon_refuses_and_first_keeps_serving(daemon: DaemonProcess) -> None:
    async with await Client.connect(daemon.paths.agent_socket("manager")) as manager:
        assert (await manager.request({"cmd": "status"}))["ok"]
        result = await trio.run_process(
            daemon.command(), capture_stdout=True, capture_stderr=True, check=False
        )
        assert result.returncode == 1
        err = result.stderr.decode()
        assert "already running" in err and str(daemon.pid) in err
        # The first daemon's sockets were not touched: the open connection and new ones work.
        assert (await manager.request({"cmd": "status"}))["ok"]
    assert (await daemon.call({"cmd": "status"}))["pid"] == daemon.pid


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_signal_stops_gracefully(daemon: DaemonProcess, sig: int) -> None:
    replies: list[dict[str, Any]] = []

    async def park(manager: Client) -> None:
        replies.append(await manager.request({"cmd": "recv", "wait_seconds": 180}))

    async with (
        await Client.connect(daemon.paths.agent_socket("manager")) as manager,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(park, manager)
        await daemon.wait_parked(1)  # a parked receiver must not hold the shutdown up
        start = time.monotonic()
        assert await daemon.stop(sig) == 0
    assert time.monotonic() - start < 10
    # The drain answers the parked receiver (nothing came) instead of hanging up on it.
    assert replies == [{"ok": True, "messages": []}]
    assert any("hyperhive: stopped" in line for line in daemon.output)
    assert not daemon.paths.host_socket.exists()
    assert not daemon.paths.agent_socket("manager").exists()


async def test_runs_as_a_normal_user_with_default_dirs(short_tmp: Path) -> None:
    need(shutil.which("setpriv") is not None, "setpriv (util-linux) is needed")
    if os.geteuid() != 0:
        pytest.skip("already a normal user: every other test covers this")
    nobody = pwd.getpwnam("nobody")
    home = short_tmp / "home"
    home.mkdir()
    os.chown(home, nobody.pw_uid, nobody.pw_gid)
    short_tmp.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HYPERHIVE_", "XDG_"))}
    env |= {
        "HOME": str(home),
        "XDG_RUNTIME_DIR": str(home / "rt"),
        "PYTHONUNBUFFERED": "1",
        "HYPERHIVE_DASHBOARD_BIND": "127.0.0.1:0",
    }
    (home / "rt").mkdir()
    os.chown(home / "rt", nobody.pw_uid, nobody.pw_gid)
    cmd = [
        "setpriv",
        f"--reuid={nobody.pw_uid}",
        f"--regid={nobody.pw_gid}",
        "--clear-groups",
        sys.executable,
        "-m",
        "hyperhive",
        "run",
    ]
    proc = await trio.lowlevel.open_process(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=str(home)
    )
    assert proc.stdout is not None
    out = b""
    try:
        with trio.fail_after(30):
            while b"hyperhive: ready" not in out:
                chunk = await proc.stdout.receive_some(4096)
                assert chunk, out.decode()
                out += chunk
        state = home / ".local" / "state" / "hyperhive"
        assert (state / "broker.sqlite").exists()
        assert (home / "rt" / "hyperhive" / "host.sock").exists()
        assert (state / "broker.sqlite").stat().st_uid == nobody.pw_uid
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        with trio.fail_after(15):
            assert await proc.wait() == 0
        rest = await proc.stdout.receive_some(4096)
        assert b"hyperhive: stopped" in out + rest
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await proc.stdout.aclose()


async def test_make_run_reaches_the_env_files_api_and_ctrl_c_stops(
    short_tmp: Path, nursery: trio.Nursery
) -> None:
    """``make run`` as the current user (the normal-user case is tested above): its manager
    runs the project-local claude against the API of the env file, then Ctrl-C stops all."""
    need(shutil.which("make") is not None, "make is needed")
    claude = Path(
        os.environ.get("HYPERHIVE_TEST_CLAUDE") or REPO / ".tools/node_modules/.bin/claude"
    )
    need(claude.is_file(), "the Claude Code CLI is not installed (make tools)")
    mock = MockAnthropic()
    await nursery.start(mock.serve)
    key = "sk-ant-make-run-0123456789"
    env_file = short_tmp / "hive.env"
    env_file.write_text(
        f"ANTHROPIC_BASE_URL={mock.base_url}\nANTHROPIC_API_KEY='{key}'\n"
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1\nDISABLE_AUTOUPDATER=1\n"
    )
    env_file.chmod(0o600)
    venv = Path(sys.prefix)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HYPERHIVE_", "ANTHROPIC_", "CLAUDE"))
    }
    env["PYTHONUNBUFFERED"] = "1"
    env["HYPERHIVE_DASHBOARD_BIND"] = "127.0.0.1:0"
    cmd = [
        "make",
        "--no-print-directory",
        "-C",
        str(REPO),
        "run",
        f"VENV={venv}",
        f"RUN_STATE={short_tmp}/state",
        f"RUN_DIR={short_tmp}/run",
        f"ENV_FILE={env_file}",
        f"CLAUDE={claude}",
    ]
    proc = await trio.lowlevel.open_process(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    assert proc.stdout is not None
    out = b""
    try:
        with trio.fail_after(60):
            while b"hyperhive: ready" not in out:
                chunk = await proc.stdout.receive_some(4096)
                assert chunk, out.decode()
                out += chunk
        assert (short_tmp / "run" / "host.sock").exists()
        assert (short_tmp / "state" / "broker.sqlite").exists()

        # The operator writes to the manager; its first turn reaches the env file's API.
        async with await Client.connect(short_tmp / "run" / "host.sock", hello_role="cli") as host:
            sent = await host.request({"cmd": "send", "to": "manager", "body": "first-run hi"})
            assert sent["ok"], sent
        # Its first turn is the start notice; the operator's message follows it.
        requests = await mock.wait_for_requests(2, within=60)
        assert "Start notice" in requests[0].last_user_text
        hi = next(r for r in requests if "first-run hi" in r.last_user_text)
        assert "You are **manager**" in hi.system_text
        assert all(r.headers.get("x-api-key") == key for r in requests)
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            with contextlib.suppress(OSError):
                assert key.encode() not in cmdline.read_bytes(), cmdline

        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        with trio.fail_after(15):
            while True:
                chunk = await proc.stdout.receive_some(4096)
                if not chunk:
                    break
                out += chunk
            await proc.wait()
        assert b"hyperhive: stopped" in out, out.decode()
        assert b"Traceback" not in out, out.decode()
        assert key.encode() not in out
        assert not (short_tmp / "run" / "host.sock").exists()
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        await proc.stdout.aclose()
        kill_leftovers(short_tmp)
