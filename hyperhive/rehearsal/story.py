"""``hyperhive rehearse``: a short story played by the real daemon, containers and claude.

Only the Messages API is scripted (:mod:`hyperhive.rehearsal.script`, served by the mock on
127.0.0.1): no account, no cost. The daemon runs in its own temporary state and run dirs,
never the operator's hive. The rehearsal watches the hive through host.sock, as the CLI
does, and waits for the operator to act in the dashboard or the CLI at each decision
(``auto`` decides alone, through host.sock too). Everything stops at the end.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TextIO

import attrs
import trio

from hyperhive.client import Client
from hyperhive.errors import ClientError, HyperhiveError
from hyperhive.rehearsal import script
from hyperhive.rehearsal.mock_api import MockAnthropic

POLL_SECONDS: Final = 0.5
#: How long the daemon may take to say it is ready.
READY_SECONDS: Final = 60.0
#: Environment never passed on to the rehearsal's daemon (a real key must not be used).
_STRIP_PREFIXES: Final = ("ANTHROPIC_", "CLAUDE", "HYPERHIVE_", "HTTP_PROXY", "HTTPS_PROXY")


class RehearsalFailed(HyperhiveError):
    """The story could not be played to its end."""


@attrs.frozen
class Settings:
    claude: Path
    root: Path
    backend: str = "auto"
    auto: bool = False
    #: Longest wait for any one step (an operator decision included).
    step_seconds: float = 600.0


def hyperhive_command(executable: str = sys.executable, path: str | None = None) -> list[str]:
    """How the operator runs this hyperhive: ``hyperhive`` when that is the one on ``PATH``,
    else the script beside this Python (``.venv/bin/hyperhive`` in a checkout), else
    ``python -m hyperhive``."""
    beside = Path(executable).parent / "hyperhive"
    found = shutil.which("hyperhive", path=path)
    if found and (not beside.is_file() or Path(found).resolve() == beside.resolve()):
        return ["hyperhive"]
    if beside.is_file():
        return [str(beside)]
    return [executable, "-m", "hyperhive"]


def daemon_env(base: dict[str, str], mock_url: str, claude: Path) -> dict[str, str]:
    """The daemon's environment: no real credentials, the scripted API, the real claude."""
    env = {k: v for k, v in base.items() if not k.upper().startswith(_STRIP_PREFIXES)}
    env.update(
        ANTHROPIC_BASE_URL=mock_url,
        ANTHROPIC_API_KEY="rehearsal-no-real-key",
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
        DISABLE_TELEMETRY="1",
        DISABLE_AUTOUPDATER="1",
        CLAUDE_CODE_MAX_RETRIES="1",
        HYPERHIVE_CLAUDE=str(claude),
        PYTHONUNBUFFERED="1",
    )
    return env


class Story:
    def __init__(self, settings: Settings, out: TextIO) -> None:
        self.s = settings
        self.out = out
        self.run_dir = settings.root / "run"
        self.state_dir = settings.root / "state"
        self.daemon_lines: list[str] = []
        self.seen_messages: set[int] = set()

    def say(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def cli(self, *args: str) -> str:
        """The CLI command an operator would type for this hive."""
        return shlex.join([*hyperhive_command(), *args, "--run-dir", str(self.run_dir)])

    # ------------------------------------------------------------ host.sock

    async def call(self, payload: dict[str, Any]) -> dict[str, Any]:
        async with await Client.connect(self.run_dir / "host.sock") as client:
            hello = await client.request({"cmd": "hello", "role": "cli", "protocol": 1})
            if not hello.get("ok"):
                raise RehearsalFailed(f"host.sock refused hello: {hello.get('error')}")
            reply = await client.request(payload)
        if not reply.get("ok"):
            raise RehearsalFailed(f"{payload['cmd']}: {reply.get('error')}")
        return reply

    async def until(self, what: str, check: Callable[[], Any]) -> Any:
        """Poll the hive (through ``check``, an async callable) until it returns a value."""
        with trio.move_on_after(self.s.step_seconds) as scope:
            while True:
                value = await check()
                if value is not None:
                    return value
                await trio.sleep(POLL_SECONDS)
        assert scope.cancelled_caught
        raise RehearsalFailed(f"gave up waiting for {what} after {self.s.step_seconds:.0f}s")

    async def operator_message(self, sender: str, contains: str) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            for m in (await self.call({"cmd": "inbox", "limit": 50}))["messages"]:
                if m["id"] in self.seen_messages or m["from"] != sender:
                    continue
                if contains in m["body"]:
                    self.seen_messages.add(m["id"])
                    return dict(m)
            return None

        message: dict[str, Any] = await self.until(f"a message from {sender}", check)
        return message

    # ------------------------------------------------------------ the daemon

    async def start_daemon(self, nursery: trio.Nursery, mock_url: str) -> trio.Process:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-m",
            "hyperhive",
            "run",
            "--state-dir",
            str(self.state_dir),
            "--run-dir",
            str(self.run_dir),
            "--backend",
            self.s.backend,
            "--dashboard-bind",
            "127.0.0.1:0",
            "--stop-agents-on-exit",
        ]
        env = daemon_env(dict(os.environ), mock_url, self.s.claude)
        log = (self.s.root / "daemon.log").open("wb")
        proc = await trio.lowlevel.open_process(
            command, env=env, stdout=subprocess.PIPE, stderr=log, start_new_session=True
        )
        log.close()
        ready = trio.Event()
        nursery.start_soon(self._read_daemon, proc, ready)
        with trio.move_on_after(READY_SECONDS):
            await ready.wait()
        if not ready.is_set():
            raise RehearsalFailed(
                f"the daemon did not get ready; see {self.s.root / 'daemon.log'}:\n"
                + "\n".join(self.daemon_lines[-20:])
            )
        return proc

    async def _read_daemon(self, proc: trio.Process, ready: trio.Event) -> None:
        assert proc.stdout is not None
        buffer = b""
        async with proc.stdout:
            while True:
                try:
                    chunk = await proc.stdout.receive_some(4096)
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    break
                if not chunk:
                    break
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    text = line.decode(errors="replace")
                    self.daemon_lines.append(text)
                    if text.startswith("hyperhive: ready"):
                        ready.set()

    async def stop_daemon(self, proc: trio.Process) -> None:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            with trio.move_on_after(30):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    # ------------------------------------------------------------ the story

    async def play(self, mock: MockAnthropic) -> None:
        status = await self.call({"cmd": "status"})
        agents = (await self.call({"cmd": "list"}))["agents"]
        backend = agents[0]["backend"] if agents else status["backend"]
        self.say(f"hyperhive rehearsal: a scripted story, backend {backend}.")
        self.say(f"  dashboard: {status['dashboard_url']}")
        self.say(f"  the CLI works too: {self.cli('status')}")
        self.say("")

        self.say("1. The operator asks the manager for help:")
        self.say(f"   operator -> manager: {script.KICKOFF}")
        await self.call({"cmd": "send", "to": "manager", "body": script.KICKOFF})

        async def pending_spawn() -> dict[str, Any] | None:
            for a in (await self.call({"cmd": "pending"}))["approvals"]:
                if a["kind"] == "spawn" and a["agent"] == script.NEW_AGENT:
                    return dict(a)
            return None

        approval = await self.until("the manager's spawn request", pending_spawn)
        aid = approval["id"]
        self.say(f"2. The manager asks to spawn {script.NEW_AGENT!r} (approval #{aid}).")
        if self.s.auto:
            self.say(f"   --auto: approving it ({self.cli('approve', str(aid))})")
            await self.call({"cmd": "approve", "id": aid})
        else:
            self.say("   Your turn: approve it in the dashboard (tab Y3R C4LL), or run")
            self.say(f"   {self.cli('approve', str(aid))}")

        async def decided() -> dict[str, Any] | None:
            reply = await self.call({"cmd": "approvals", "include_resolved": True})
            for a in reply["approvals"]:
                if a["id"] == aid and a["status"] != "pending":
                    return dict(a)
            return None

        result = await self.until(f"a decision on approval #{aid}", decided)
        if result["status"] != "approved":
            self.say(f"   The approval was {result['status']}: {result['note'] or 'no note'}.")
            self.say("   The story ends here. Run it again and approve to see the rest.")
            return
        self.say(f"   Approved: {script.NEW_AGENT} starts in its own container.")

        hello = await self.operator_message(script.NEW_AGENT, script.HELLO)
        self.say(f"3. {script.NEW_AGENT} -> operator: {hello['body']}")

        async def open_question() -> dict[str, Any] | None:
            for q in (await self.call({"cmd": "questions"}))["questions"]:
                if q["asker"] == script.NEW_AGENT and q["target"] is None:
                    return dict(q)
            return None

        question = await self.until(f"{script.NEW_AGENT}'s question", open_question)
        qid = question["id"]
        self.say(f"4. {script.NEW_AGENT} asks (question #{qid}): {question['question']}")
        self.say(f"   options: {' | '.join(question['options'])}")
        if self.s.auto:
            choice = question["options"][0]
            self.say(f"   --auto: answering {choice!r}")
            await self.call({"cmd": "answer", "id": qid, "answer": choice})
        else:
            self.say("   Your turn: answer it in the dashboard (tab Y3R C4LL), or run")
            self.say(f"   {self.cli('answer', str(qid), question['options'][0])}")

        reply = await self.operator_message(script.NEW_AGENT, script.REPLY_PREFIX)
        self.say(f"5. {script.NEW_AGENT} -> operator: {reply['body']}")
        main = len(mock.main_requests)
        self.say("")
        self.say(f"The story is over: {main} scripted API calls, no account, no cost.")


async def rehearse(settings: Settings, out: TextIO = sys.stdout) -> None:
    """Play the story; raise :class:`RehearsalFailed` when it cannot end."""
    story = Story(settings, out)
    mock = MockAnthropic()
    mock.responder = script.story_reply
    async with trio.open_nursery() as nursery:
        await nursery.start(mock.serve)
        proc = await story.start_daemon(nursery, mock.base_url)
        try:
            await story.play(mock)
        except (ClientError, OSError) as exc:
            raise RehearsalFailed(f"lost the daemon: {exc}") from None
        finally:
            with trio.CancelScope(shield=True):
                story.say("Stopping the rehearsal's daemon and agents ...")
                await story.stop_daemon(proc)
            # What the agents' claude sent, for a look when something went wrong.
            with (settings.root / "api-requests.jsonl").open("w") as dump:
                for req in mock.requests:
                    dump.write(json.dumps({"path": req.path, "body": req.body}) + "\n")
            nursery.cancel_scope.cancel()
