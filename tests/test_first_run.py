"""The first run: the env file of ``hyperhive run``, credentials in status, approvals history.

The env file is parsed strictly and its values never show: not in errors, not on nspawn's
command line, not in the daemon's output, host.sock replies or the dashboard's state. The
settings reach the agent's payload. ``status`` says when an agent has no credentials.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

import pytest
import trio

from hyperhive.containers._backend import AgentSpec
from hyperhive.containers._backends import NspawnBackend, ProcessBackend
from hyperhive.envfile import EnvFileError, load_env_file, parse_env_file
from tests.conftest import (
    DaemonProcess,
    dashboard_state,
    kill_leftovers,
    make_paths,
    wait_until,
)

SECRET = "sk-ant-test-0123456789-do-not-show"


def test_env_file_reads_comments_quotes_and_export() -> None:
    text = (
        "# agents' API settings\n"
        "\n"
        f"ANTHROPIC_API_KEY={SECRET}\n"
        "export ANTHROPIC_BASE_URL='http://127.0.0.1:9/v1'\n"
        '  HTTPS_PROXY="http://user:p w@proxy:3128"  \n'
        "no_proxy=localhost,127.0.0.1\n"
    )
    assert parse_env_file(text) == {
        "ANTHROPIC_API_KEY": SECRET,
        "ANTHROPIC_BASE_URL": "http://127.0.0.1:9/v1",
        "HTTPS_PROXY": "http://user:p w@proxy:3128",
        "no_proxy": "localhost,127.0.0.1",
    }


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (f"ANTHROPIC_API_KEY {SECRET}", "expected KEY=VALUE"),
        (f"ANTHROPIC_API_KEY = {SECRET}", "expected KEY=VALUE"),
        (f"OPENAI_API_KEY={SECRET}", "OPENAI_API_KEY is not an agent API setting"),
        (f"LD_PRELOAD=/tmp/{SECRET}.so", "LD_PRELOAD is not an agent API setting"),
        (f'ANTHROPIC_API_KEY="{SECRET}', "unbalanced quotes"),
        (f"ANTHROPIC_API_KEY={SECRET} trailing", "quote the value"),
        (f"ANTHROPIC_API_KEY=x\nANTHROPIC_API_KEY={SECRET}", "set twice"),
    ],
)
def test_env_file_refuses_bad_lines_without_showing_values(line: str, problem: str) -> None:
    with pytest.raises(EnvFileError) as caught:
        parse_env_file(f"# first\n{line}\n", source="hive.env")
    message = str(caught.value)
    assert problem in message
    assert f"hive.env, line {1 + line.count(chr(10)) + 1}: " in message
    assert SECRET not in message


def test_world_readable_env_file_warns(tmp_path: Path) -> None:
    path = tmp_path / "hive.env"
    path.write_text(f"ANTHROPIC_API_KEY={SECRET}\n")
    path.chmod(0o644)
    values, warnings = load_env_file(path)
    assert values == {"ANTHROPIC_API_KEY": SECRET}
    assert len(warnings) == 1 and "chmod 600" in warnings[0] and SECRET not in warnings[0]
    path.chmod(0o600)
    assert load_env_file(path)[1] == []


def test_nspawn_gets_api_settings_by_name_not_on_its_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    monkeypatch.setenv("HTTPS_PROXY", f"http://user:{SECRET}@proxy:3128")
    spec = AgentSpec(
        name="alice",
        role="agent",
        socket_dir=tmp_path / "run",
        state_dir=tmp_path / "state",
        claude_dir=tmp_path / "claude",
        log_file=tmp_path / "log",
        command=("true",),
        env={"FOO": "bar"},
    )
    backend = NspawnBackend()
    if not backend.available():
        monkeypatch.setattr("shutil.which", lambda name: f"/usr/bin/{name}")
    argv = backend.argv(spec)
    assert not any(SECRET in arg for arg in argv)
    assert "--setenv=ANTHROPIC_API_KEY" in argv and "--setenv=HTTPS_PROXY" in argv
    assert "--setenv=FOO=bar" in argv  # agent.toml values are no secret: on the line
    # The values travel in nspawn's own environment, which only root can read.
    assert backend.payload_env(spec)["ANTHROPIC_API_KEY"] == SECRET
    process_env = ProcessBackend().environment(spec)
    assert process_env["ANTHROPIC_API_KEY"] == SECRET
    # The harness watches the login where claude keeps it (CLAUDE_CONFIG_DIR), where
    # status looks for it too.
    assert process_env["HYPERHIVE_CREDENTIALS_FILE"] == str(spec.claude_dir / ".credentials.json")


async def test_run_refuses_a_bad_env_file(short_tmp: Path) -> None:
    bad = short_tmp / "hive.env"
    bad.write_text(f"ANTHROPIC_API_KEY={SECRET}\nGITHUB_TOKEN={SECRET}\n")
    bad.chmod(0o600)
    paths = make_paths(short_tmp)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYPERHIVE_")}
    env["HYPERHIVE_ENV_FILE"] = str(bad)
    result = await trio.run_process(
        [sys.executable, "-m", "hyperhive", "run", "--state-dir", str(paths.state_dir),
         "--run-dir", str(paths.run_dir), "--backend", "external", "--dashboard-bind", "off"],
        env=env, capture_stdout=True, capture_stderr=True, check=False,
    )  # fmt: skip
    err = result.stderr.decode()
    assert result.returncode == 1
    assert f"{bad}, line 2: GITHUB_TOKEN is not an agent API setting" in err
    assert SECRET not in err + result.stdout.decode()
    assert not paths.host_socket.exists()


# ---------------------------------------------------------------- a daemon with payloads

#: A payload that records the environment it got, then waits like a harness would.
PAYLOAD = "sh -c 'env > seen-env; exec sleep 600'"


def _daemon(root: Path, env_file: Path | None) -> DaemonProcess:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HYPERHIVE_", "ANTHROPIC_", "CLAUDE"))
    }
    env |= {"PYTHONUNBUFFERED": "1", "HYPERHIVE_HARNESS_COMMAND": PAYLOAD}
    if env_file is not None:
        env["HYPERHIVE_ENV_FILE"] = str(env_file)
    env.pop("NOTIFY_SOCKET", None)

    class ProcessDaemon(DaemonProcess):
        def command(self) -> list[str]:
            argv = super().command()
            argv[argv.index("external")] = "process"
            return [*argv, "--stop-agents-on-exit"]

    return ProcessDaemon(make_paths(root), env)


async def test_env_file_reaches_the_agent_and_its_values_show_nowhere(
    short_tmp: Path, nursery: trio.Nursery
) -> None:
    env_file = short_tmp / "hive.env"
    env_file.write_text(f'ANTHROPIC_API_KEY="{SECRET}"\nANTHROPIC_BASE_URL=http://127.0.0.1:9\n')
    env_file.chmod(0o600)
    daemon = _daemon(short_tmp, env_file)
    try:
        await daemon.start(nursery)
        seen = daemon.paths.agent_dir("manager") / "state" / "seen-env"

        async def payload_ran() -> bool:
            return seen.exists() and "ANTHROPIC_BASE_URL" in seen.read_text()

        await wait_until(payload_ran, limit=30)
        payload_env = seen.read_text()
        assert f"ANTHROPIC_API_KEY={SECRET}\n" in payload_env
        assert "ANTHROPIC_BASE_URL=http://127.0.0.1:9\n" in payload_env

        status = await daemon.call({"cmd": "status"})
        assert status["credentials_warning"] is None  # the key counts as credentials
        agents = await daemon.call({"cmd": "list"})
        assert daemon.dashboard_login is not None
        state = await trio.to_thread.run_sync(dashboard_state, daemon.dashboard_login)
        assert state["agents"], state
        shown = json.dumps([status, agents, state]) + "\n".join(daemon.output)
        assert SECRET not in shown
        assert "ANTHROPIC_API_KEY" in "\n".join(daemon.output)  # the key's name is logged
        for log in daemon.paths.state_dir.glob("agents/*/logs/*"):
            assert SECRET not in log.read_text(errors="replace")
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                assert SECRET.encode() not in cmdline.read_bytes()
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                continue
    finally:
        await daemon.stop()
        kill_leftovers(short_tmp)


async def test_status_says_when_agents_have_no_credentials(
    short_tmp: Path, nursery: trio.Nursery
) -> None:
    daemon = _daemon(short_tmp, None)
    try:
        await daemon.start(nursery)
        status = await daemon.call({"cmd": "status"})
        warning = status["credentials_warning"]
        assert warning is not None
        assert warning.startswith("manager: no API credentials")
        assert "--env-file" in warning and "log in" in warning
        manager = next(a for a in (await daemon.call({"cmd": "list"}))["agents"])
        assert "no API credentials" in manager["warning"]
        assert daemon.dashboard_login is not None
        state = await trio.to_thread.run_sync(dashboard_state, daemon.dashboard_login)
        shown = {a["name"]: a["warning"] for a in state["agents"]}
        assert "no API credentials" in shown["manager"]
        done = await trio.run_process(
            [sys.executable, "-m", "hyperhive", "status", "--run-dir", str(daemon.paths.run_dir)],
            capture_stdout=True,
        )
        out = done.stdout.decode()
        assert "warning: manager: no API credentials" in out

        # A claude login copied into the agent's claude dir (docs: Credentials) is enough.
        claude_dir = daemon.paths.agent_dir("manager") / "claude"
        (claude_dir / ".credentials.json").write_text('{"claudeAiOauth": {}}')

        async def logged_in() -> bool:
            # The daemon reads agents' files off the event loop, every few seconds.
            return (await daemon.call({"cmd": "status"}))["credentials_warning"] is None

        await wait_until(logged_in, limit=20)
    finally:
        await daemon.stop()
        kill_leftovers(short_tmp)


def test_nixos_module_passes_the_env_file_and_refuses_a_store_path(tmp_path: Path) -> None:
    from tests.test_deployment import _eval_module

    out = _eval_module(tmp_path, {"enable": True, "environmentFile": "/run/secrets/hive.env"})
    exec_start = out["systemd"]["services"]["hyperhive"]["serviceConfig"]["ExecStart"]
    argv = shlex.split(exec_start)
    assert argv[argv.index("--env-file") + 1] == "/run/secrets/hive.env"
    assert all(a["assertion"] for a in out["assertions"])
    stored = _eval_module(tmp_path, {"enable": True, "environmentFile": "/nix/store/x-hive.env"})
    refused = [a["message"] for a in stored["assertions"] if not a["assertion"]]
    assert refused and "outside the Nix store" in refused[0]
