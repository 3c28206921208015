"""The turn loop's rules, fast: the real loop in the test's trio run, a real daemon on real
sockets and database, and a scripted fake ``claude`` (tests/payloads/fake_claude.py) that
prints stream-json like the real one. What only the real CLI can show (its flags, its
session files, the API's errors as it reports them) stays in test_turn_loop.py and
test_failures.py.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

from hyperhive.supervisor import Hive
from hyperhive_harness.commands import Commands
from hyperhive_harness.config import HarnessConfig
from hyperhive_harness.event_log import EventLog
from hyperhive_harness.loop import TurnLoop
from hyperhive_harness.model import ModelFile
from hyperhive_harness.view import Status, View

from .fixtures import ROOT, eventually, inbox_of, message, operator_send, wait_acked

FAKE_CLAUDE = ROOT / "tests" / "payloads" / "fake_claude.py"
PREFACE = "[hyperhive harness] Your previous claude session was ended"


@attrs.define
class Rig:
    """One agent's turn loop, its event log, view and commands, and the fake's record."""

    hive: Hive
    name: str
    fake_dir: Path
    cfg: HarnessConfig
    events: EventLog
    view: View
    commands: Commands

    def calls(self) -> list[dict[str, Any]]:
        path = self.fake_dir / "calls.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        return [json.loads(line) for line in lines]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [e.data for e in self.events.history() if e.kind == kind]

    async def wait_for(self, kind: str, n: int = 1, **match: Any) -> list[dict[str, Any]]:
        def found() -> list[dict[str, Any]] | None:
            hits = [p for p in self.of_kind(kind) if all(p.get(k) == v for k, v in match.items())]
            return hits if len(hits) >= n else None

        return await eventually(found, within=20, what=f"{n} {kind} {match}", interval=0.01)

    async def send(self, body: str) -> int:
        return await operator_send(self.hive.config.paths.host_socket, self.name, body)

    @property
    def socket(self) -> Path:
        return self.hive.config.paths.agent_socket(self.name)


@asynccontextmanager
async def turn_loop(
    hive: Hive, tmp: Path, steps: list[dict[str, Any]], **env: str
) -> AsyncIterator[Rig]:
    name = "alice"
    await hive.spawn(name)
    fake_dir = tmp / "fake"
    fake_dir.mkdir()
    (fake_dir / "script.json").write_text(json.dumps(steps))
    cfg = HarnessConfig.from_env(
        {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(tmp / "home"),
            "FAKE_CLAUDE_DIR": str(fake_dir),
            "HYPERHIVE_SOCKET": str(hive.config.paths.agent_socket(name)),
            "HYPERHIVE_STATE_DIR": str(tmp / "state"),
            "HYPERHIVE_MODEL_FILE": str(tmp / "model"),
            "HYPERHIVE_CLAUDE": str(FAKE_CLAUDE),
            "HYPERHIVE_FAILED_RETRY_DELAY": "0",
            "HYPERHIVE_LOGIN_POLL": "0.05",
            **env,
        }
    )
    events = EventLog()
    model = ModelFile(cfg.model_file, events)
    view = View(events, model)
    commands = Commands(events, model)
    runtime_dir = tmp / "runtime"
    loop = TurnLoop(cfg, events, view, commands, model, runtime_dir)
    async with trio.open_nursery() as nursery:
        await nursery.start(loop.run)
        rig = Rig(hive, name, fake_dir, cfg, events, view, commands)
        await eventually(lambda: view.status is Status.ONLINE, what="the loop online")
        yield rig
        nursery.cancel_scope.cancel()


def continued(call: dict[str, Any]) -> bool:
    return "--continue" in call["argv"]


def prompt_of(call: dict[str, Any]) -> str:
    argv: list[str] = call["argv"]
    return argv[argv.index("--") + 1]


async def test_a_message_is_acked_only_after_its_turn_ended(hive: Hive, short_tmp: Path) -> None:
    async with turn_loop(hive, short_tmp, [{"delay": 0.5, "text": "all done"}]) as rig:
        sent = await rig.send("do the thing")
        await rig.wait_for("turn_start", id=sent)
        # The turn runs: the message is the loop's, not yet acked.
        assert rig.view.current_turn is not None and rig.view.current_turn["id"] == sent
        assert (await message(rig.socket, sent)).acked_at is None
        end = (await rig.wait_for("turn_end", id=sent))[0]
        assert end["ok"] is True and end["outcome"] == "ok"
        await wait_acked(rig.socket, sent)

        [call] = rig.calls()
        assert continued(call) and call["argv"][call["argv"].index("--model") + 1] == "haiku"
        assert f"New message #{sent} from the operator" in prompt_of(call)
        assert "do the thing" in prompt_of(call)
        results = [s["value"] for s in rig.of_kind("stream") if s["value"]["type"] == "result"]
        assert results[0]["result"] == "all done"
        snap = rig.view.snapshot()
        assert snap["current_turn"] is None and snap["last_turn_seconds"] >= 0.5
        assert (snap["ctx"], snap["cost"], snap["cost_usd"]) == (120, 127, 0.0012)
        assert [p["state"] for p in rig.of_kind("turn_state_changed")] == ["thinking", "idle"]


async def test_a_failing_turn_is_retried_once_then_given_up_reported_and_the_session_ended(
    hive: Hive, short_tmp: Path
) -> None:
    steps = [{"result": "error", "text": "boom one"}, {"result": "error", "text": "boom two"}]
    async with turn_loop(hive, short_tmp, steps) as rig:
        sent = await rig.send("doomed")
        ends = await rig.wait_for("turn_end", 2, id=sent)
        assert [e["ok"] for e in ends] == [False, False]
        assert "attempt 1 of 2 failed; retrying" in ends[0]["note"]
        assert "attempt 2 of 2 failed; giving up" in ends[1]["note"]
        await wait_acked(rig.socket, sent)
        first, retry = rig.calls()
        # The retry runs in a new session, told it is a new attempt at the same message.
        assert continued(first) and not continued(retry)
        assert PREFACE in prompt_of(retry) and "new attempt at it" in prompt_of(retry)

        async def reports() -> list[Any]:
            manager = hive.config.paths.agent_socket("manager")
            return [m for m in await inbox_of(manager) if m.body.startswith("turn_failed:")]

        [report] = await eventually(reports, what="the report to the manager")
        assert report.from_ == "alice" and f"message #{sent}" in report.body
        assert "boom two" in report.body

        # The next message starts a new session that knows the last one was given up; the
        # one after it continues normally.
        nxt = await rig.send("next")
        await wait_acked(rig.socket, nxt)
        third = rig.calls()[2]
        assert not continued(third) and "failed for good" in prompt_of(third)
        last = await rig.send("and then")
        await wait_acked(rig.socket, last)
        fourth = rig.calls()[3]
        assert continued(fourth) and PREFACE not in prompt_of(fourth)
        assert len(await reports()) == 1


async def test_a_rate_limit_sleeps_and_replays_the_same_message_without_using_an_attempt(
    hive: Hive, short_tmp: Path
) -> None:
    limited = {"result": "api_error", "status": 429, "error_type": "rate_limit_error"}
    env = {"HYPERHIVE_RATE_LIMIT_SLEEP": "0.3", "HYPERHIVE_MAX_TURN_ATTEMPTS": "1"}
    async with turn_loop(hive, short_tmp, [limited, limited, {}], **env) as rig:
        sent = await rig.send("busy API")
        await wait_acked(rig.socket, sent)
        ends = [e for e in rig.of_kind("turn_end") if e["id"] == sent]
        assert [e["outcome"] for e in ends] == ["rate_limited", "rate_limited", "ok"]
        assert "retrying the same message in 0.3 s" in ends[0]["note"]
        statuses = [p["status"] for p in rig.of_kind("status_changed")]
        assert statuses == ["online", "rate_limited", "online"]
        # It slept between the runs (event times are wall-clock stamps).
        history = rig.events.history()
        starts = [e.ts for e in history if e.kind == "turn_start"]
        end_ts = [e.ts for e in history if e.kind == "turn_end"]
        assert starts[1] - end_ts[0] >= 0.3 and starts[2] - end_ts[1] >= 0.3
        assert [continued(c) for c in rig.calls()] == [True, False, False]
        assert all(f"New message #{sent} " in prompt_of(c) for c in rig.calls())
        # Not the message's fault: no attempt used up, nothing reported.
        manager = hive.config.paths.agent_socket("manager")
        assert not [m for m in await inbox_of(manager) if m.body.startswith("turn_failed:")]


async def test_an_authentication_failure_parks_until_the_credentials_change(
    hive: Hive, short_tmp: Path
) -> None:
    refused = {"result": "api_error", "status": 401, "error_type": "authentication_error"}
    async with turn_loop(hive, short_tmp, [refused, {}]) as rig:
        sent = await rig.send("needs a login")
        end = (await rig.wait_for("turn_end", id=sent))[0]
        assert (
            end["outcome"] == "needs_login" and "replayed once claude is logged in" in end["note"]
        )

        # Parked: shown on the dashboard through the agent's status line, nothing runs.
        async def parked_status() -> bool:
            return bool(hive.registry.get("alice").status_text.startswith("needs login"))

        await eventually(parked_status, what="the needs-login status line")
        assert rig.view.status is Status.NEEDS_LOGIN
        assert len(rig.calls()) == 1
        assert (await message(rig.socket, sent)).acked_at is None

        # `claude auth login` writes the credentials file: the loop replays the message.
        credentials = rig.cfg.credentials_file
        credentials.parent.mkdir(parents=True)
        credentials.write_text('{"claudeAiOauth": {}}')
        await wait_acked(rig.socket, sent)
        assert [e["outcome"] for e in rig.of_kind("turn_end")] == ["needs_login", "ok"]
        assert any("credentials changed" in n["text"] for n in rig.of_kind("note"))
        assert rig.view.status is Status.ONLINE
        assert hive.registry.get("alice").status_text == ""
        assert not continued(rig.calls()[1])


async def test_a_missing_conversation_is_retried_at_once_in_a_new_session(
    hive: Hive, short_tmp: Path
) -> None:
    env = {"HYPERHIVE_MAX_TURN_ATTEMPTS": "1"}
    async with turn_loop(hive, short_tmp, [{"no_session": True}, {}], **env) as rig:
        sent = await rig.send("first ever")
        await wait_acked(rig.socket, sent)
        ends = [e for e in rig.of_kind("turn_end") if e["id"] == sent]
        assert [e["outcome"] for e in ends] == ["no_session", "ok"]
        assert [continued(c) for c in rig.calls()] == [True, False]
        # No failure of the message itself: no preface, nothing reported.
        assert PREFACE not in prompt_of(rig.calls()[1])
