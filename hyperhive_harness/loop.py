"""The turn loop: inbox message → one claude run → verdict → ack (SPEC §9).

    connect + hello(harness) ──► deliver what is owed (reports, acks) ──► recv(180 s, ack:false)
          ▲                                                                   │ message
          │ backoff 2,4,8,16,30 s                              status ──► turn_start
          │                                                                   │
   ConnectionLost ◄── any socket call                     claude (stream/note events)
                                                                              │
                                      judge ──► decide ──► turn_end ──► ack / retry / sleep / park

Only this task holds the ``harness`` connection (a :class:`hyperhive.client.Client`; its
:class:`~hyperhive.errors.ConnectionLost` means reconnect, any other
:class:`~hyperhive.errors.ClientError` is the daemon's refusal). Every decision is made by
the sans-IO functions of :mod:`~hyperhive_harness.prompt` (what claude is started with),
:mod:`~hyperhive_harness.stream` (what its output says) and :mod:`~hyperhive_harness.policy`
(the verdict and what follows); this module wires them to the socket, the process and the
clock. It publishes to the :class:`~hyperhive_harness.event_log.EventLog`, changes what the
UI shows through the :class:`~hyperhive_harness.view.View`, and takes the operator's
requests from :class:`~hyperhive_harness.commands.Commands`.

No work is lost or duplicated across a daemon restart: a message whose turn ended is put in
``owed`` (with its failure report, if any) before it is acked. If the ack (or the report)
cannot be delivered because the daemon is down, the loop reconnects and delivers what is
owed first. The daemon hands unacked messages out again after a ``hello``; one that is
still owed when it comes back is acked without a new turn.

A run that failed (or was rate limited, or refused authentication) may have left its prompt
unanswered in claude's session; the loop then writes a session break to the state dir, and
the next run starts a new session with a preface saying what happened (``policy.SessionBreak``).

Compaction (docs/harness.md, *Compaction*): after a clean turn whose context passed the
watermark, a checkpoint turn and then claude's ``/compact``; a context-length failure is
compacted and retried, then retried in a new session; the operator's ``/compact`` runs when
no turn does. One claude run at a time works on the session (``_session``, a lock).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections import OrderedDict
from importlib import resources
from pathlib import Path
from typing import Any

import trio

from hyperhive.client import Client, call_once
from hyperhive.errors import ClientError, ConnectionLost
from hyperhive.protocol import (
    Ack,
    AckReply,
    AgentMetaReply,
    GetAgentMeta,
    Message,
    Recv,
    RecvReply,
    Send,
    SetStatus,
    StatusReply,
    TurnReportReply,
)
from hyperhive.protocol import Status as StatusRequest
from hyperhive.runtime import Retry
from hyperhive_harness.claude import TurnControl, kill_orphan, run_claude
from hyperhive_harness.commands import Commands
from hyperhive_harness.config import HarnessConfig
from hyperhive_harness.event_log import EventLog
from hyperhive_harness.mcp_host import McpHost
from hyperhive_harness.model import ModelFile
from hyperhive_harness.policy import (
    CHECKPOINT_PROMPT,
    COMPACT_PROMPT,
    Decision,
    Next,
    Outcome,
    SessionBreak,
    Verdict,
    compaction_note,
    context_window,
    decide,
    failure_report,
    judge,
    report_recipient,
    session_break,
    should_compact,
)
from hyperhive_harness.prompt import (
    allowed_tools,
    claude_argv,
    claude_env,
    claude_settings,
    mcp_config,
    new_session_note,
    render_system_prompt,
    session_preface,
    wake_prompt,
)
from hyperhive_harness.spend import PendingReports, state_fingerprint, turn_report
from hyperhive_harness.stream import TurnObserver, TurnState
from hyperhive_harness.view import Status, View

#: How many finished-but-unconfirmed message ids are remembered.
MAX_OWED = 1000
MAX_STATUS_TEXT = 200
#: In the state dir while the next turn must start a new claude session (a JSON SessionBreak).
SESSION_BREAK_FILE_NAME = "hyperhive-new-session.json"
#: The agent's status text while its session is compacted (the dashboard shows a badge).
COMPACTING_STATUS = "⟳ compacting claude's session"


def system_prompt_template(role: str) -> str:
    name = "manager.md" if role == "manager" else "agent.md"
    return (resources.files("hyperhive_harness") / "prompts" / name).read_text(encoding="utf-8")


def credentials_fingerprint(path: Path) -> tuple[int, int, int] | None:
    """What identifies the credentials file's content cheaply (None: absent)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class TurnLoop:
    def __init__(
        self,
        cfg: HarnessConfig,
        events: EventLog,
        view: View,
        commands: Commands,
        model: ModelFile,
        runtime_dir: Path,
        *,
        python: str = sys.executable,
        mcp_host: McpHost | None = None,
    ) -> None:
        self.cfg = cfg
        self.events = events
        self.view = view
        self.commands = commands
        self.model = model
        self.runtime_dir = runtime_dir
        self.python = python
        #: Serves the hyperhive tools to each turn's claude; without it claude starts the
        #: stdio server (``python -m hyperhive_harness.mcp_server``) every turn.
        self.mcp_host = mcp_host
        self.connected = False
        #: Finished messages not yet confirmed acked: id → failure report still to send.
        self.owed: OrderedDict[int, str | None] = OrderedDict()
        #: Turn reports for the spend ledger not yet confirmed by the daemon.
        self.reports = PendingReports()
        self.turns = 0
        self._saved_status_text: str | None = None
        self._mcp_config_file = runtime_dir / "claude-mcp-config.json"
        self._system_prompt_file = runtime_dir / "claude-system-prompt.md"
        self._session_break_file = cfg.state_dir / SESSION_BREAK_FILE_NAME
        self._settings_file = runtime_dir / "claude-settings.json"
        #: Held by every claude run on the session (turns, checkpoints, compactions).
        self._session = trio.Lock()
        #: The context window claude reported in the last result (None: not reported).
        self._window: int | None = None

    @property
    def turn_running(self) -> bool:
        return self.commands.control is not None

    # ------------------------------------------------------------ the loop

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._compactor)
            await self._run(task_status=task_status)

    async def _run(self, *, task_status: trio.TaskStatus[None]) -> None:
        self.cfg.state_dir.mkdir(parents=True, exist_ok=True)
        killed = kill_orphan(self.cfg.claude_pid_file)
        if killed is not None:
            self.events.note(f"ended claude (pid {killed}) left running by a previous harness")
        task_status.started()
        retry = self.cfg.reconnect_backoff.start()
        while True:
            try:
                link = await Client.open(self.cfg.socket, role="harness")
            except ClientError as exc:  # ConnectionLost, or the hello refused
                await self._lost(str(exc), retry)
                continue
            async with link:
                self._on_connect(link, retry)
                try:
                    await self._serve(link)
                except ConnectionLost as exc:
                    await self._lost(str(exc), retry)
                except ClientError as exc:
                    # The daemon refused what the loop needs (recv, ack): start afresh.
                    await self._lost(f"the daemon refused a request: {exc}", retry)

    async def _lost(self, reason: str, retry: Retry) -> None:
        self.connected = False
        self.view.set_status(Status.DISCONNECTED)
        delay = retry.next()
        if retry.attempts <= 5 or retry.attempts % 10 == 0:
            self.events.note(f"daemon unreachable ({reason}); reconnecting in {delay:g} s")
        await trio.sleep(delay)

    def _on_connect(self, link: Client, retry: Retry) -> None:
        if retry.attempts:
            self.events.note(f"reconnected to the daemon at {self.cfg.socket}")
        retry.reset()
        self.connected = True
        self.view.set_identity(link.name, link.role)
        if self.mcp_host is not None:
            self.mcp_host.set_identity(link.role, link.name)
        self._write_turn_files(link.name, link.role)
        self.view.set_status(Status.ONLINE)

    def _write_turn_files(self, label: str, role: str) -> None:
        self.runtime_dir.mkdir(parents=True, exist_ok=True)
        if self.mcp_host is None:
            config = mcp_config(self.python, os.fspath(self.cfg.socket), self.cfg.extra_mcp_servers)
            self._write_mcp_config(config)
        prompt = render_system_prompt(
            system_prompt_template(role),
            label=label,
            role=role,
            state_dir=os.fspath(self.cfg.state_dir),
        )
        self._system_prompt_file.write_text(prompt)
        self._settings_file.write_text(claude_settings(self._extra_settings()))

    def _extra_settings(self) -> dict[str, Any] | None:
        """The configured claude settings (a JSON object, or the path of a file holding one)."""
        raw = self.cfg.claude_settings
        if not raw:
            return None
        text = raw
        if not raw.lstrip().startswith("{"):
            try:
                text = Path(raw).read_text(encoding="utf-8")
            except OSError as exc:
                self.events.note(f"cannot read the claude settings {raw}: {exc}")
                return None
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            self.events.note("the claude settings are not a JSON object: ignored")
            return None
        return data

    def _write_mcp_config(self, config: dict[str, Any]) -> None:
        """Written under a temporary name (0600) and renamed: claude never reads half a file."""
        tmp = self._mcp_config_file.with_name(f".{self._mcp_config_file.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(config, indent=2) + "\n")
        tmp.replace(self._mcp_config_file)

    async def _serve(self, link: Client) -> None:
        await self._pay_debts(link)
        await self._show_pause(link)
        while True:
            reply = await link.call(Recv(wait_seconds=self.cfg.recv_wait, max=1, ack=False))
            assert isinstance(reply, RecvReply)
            if not reply.messages:
                # Nothing came: the wait ran out, or the agent was paused or resumed.
                await self._show_pause(link)
            elif self.view.status is Status.PAUSED:
                self.view.set_status(Status.ONLINE)
            for message in reply.messages:
                if message.id in self.owed:
                    self.events.note(
                        f"message #{message.id} came back after a reconnect, but its turn "
                        "already ended: acked without a new turn"
                    )
                    await self._pay_debts(link)
                    continue
                async with self._session:
                    await self._handle(link, message)

    async def _show_pause(self, link: Client) -> None:
        """Show on the UI whether the daemon holds this agent paused (and why)."""
        meta = await link.call(GetAgentMeta())
        assert isinstance(meta, AgentMetaReply)
        if meta.paused_at is not None:
            why = f": {meta.paused_reason}" if meta.paused_reason else ""
            self.view.set_status(Status.PAUSED, f"paused by {meta.paused_by}{why}")
        elif self.view.status is Status.PAUSED:
            self.view.set_status(Status.ONLINE)

    async def _send_reports(self, link: Client) -> None:
        """Send the pending turn reports; ConnectionLost leaves them for the reconnect."""
        for report in self.reports.pending():
            try:
                reply = await link.call(report)
            except ConnectionLost:
                raise
            except ClientError as exc:
                self.events.note(f"the daemon refused the turn report {report.report_id}: {exc}")
            else:
                assert isinstance(reply, TurnReportReply)
                self.events.publish(
                    "turn_reported",
                    report_id=report.report_id,
                    id=report.message_id,
                    recorded=reply.recorded,
                    cost_usd=report.cost_usd,
                    tokens=report.input_tokens
                    + report.output_tokens
                    + report.cache_read_tokens
                    + report.cache_creation_tokens,
                )
            self.reports.done(report.report_id)

    async def _pay_debts(self, link: Client) -> None:
        """Send turn reports, owed failure reports and acks; keep what the daemon did not
        confirm."""
        await self._send_reports(link)
        for message_id in list(self.owed):
            report = self.owed[message_id]
            if report is not None:
                try:
                    await link.call(Send(to=report_recipient(link.role), body=report))
                except ConnectionLost:
                    raise
                except ClientError as exc:
                    self.events.note(f"could not report the failure of #{message_id}: {exc}")
                self.owed[message_id] = None
            ack = await link.call(Ack(ids=[message_id]))
            assert isinstance(ack, AckReply)
            if ack.acked:
                del self.owed[message_id]
            # else: not (or no longer) ours to ack; if it comes back through recv it is
            # acked then, without a new turn.

    # ------------------------------------------------------------ one message

    async def _handle(self, link: Client, message: Message) -> None:
        failed_attempts = 0
        too_long = 0
        fresh_session = False
        while True:
            unread = await self._unread(link)
            fingerprint = credentials_fingerprint(self.cfg.credentials_file)
            verdict, duration = await self._turn(message, unread, fresh_session=fresh_session)
            if verdict.outcome is Outcome.FAILED:
                failed_attempts += 1
            elif verdict.outcome is Outcome.TOO_LONG:
                too_long += 1
            decision = decide(
                verdict,
                attempt=failed_attempts,
                max_attempts=self.cfg.max_turn_attempts,
                rate_limit_sleep=self.cfg.rate_limit_sleep,
                failed_retry_delay=self.cfg.failed_retry_delay,
                too_long=too_long,
            )
            note = "\n".join(n for n in (verdict.note, decision.note) if n)
            self.events.publish(
                "turn_end",
                ok=verdict.ok,
                note=note,
                id=message.id,
                outcome=verdict.outcome.value,
                duration_seconds=duration,
            )
            with contextlib.suppress(ConnectionLost):  # kept; sent after the reconnect
                await self._send_reports(link)
            fresh_session = decision.fresh_session
            brk = session_break(verdict, decision, message_id=message.id, sender=message.from_)
            if brk is not None:
                # Kept before the ack: a restart in between still starts a new session.
                self._save_session_break(brk)
            match decision.next:
                case Next.ACK:
                    report = None
                    if decision.report:
                        report = failure_report(
                            agent=link.name,
                            message_id=message.id,
                            sender=message.from_,
                            body=message.body,
                            attempts=failed_attempts,
                            note=verdict.note,
                        )
                    await self._leave_trouble(link)
                    self._owe(message.id, report)
                    await self._pay_debts(link)
                    if verdict.ok:
                        await self._compact_if_full()
                    return
                case Next.RETRY:
                    self.commands.arm_retry()
                    await self.commands.wait_retry(decision.delay)
                case Next.SLEEP_AND_RETRY:
                    # Armed before anything else awaits: a "retry now" from the UI that comes
                    # while the trouble is being shown must not be lost.
                    self.commands.arm_retry()
                    until = time.strftime("%H:%M:%S", time.localtime(time.time() + decision.delay))
                    await self._enter_trouble(
                        link, Status.RATE_LIMITED, f"⊘ rate limited; retrying at {until}"
                    )
                    await self.commands.wait_retry(decision.delay)
                case Next.PARK_AND_RETRY:
                    self.commands.arm_retry()  # armed first, as above
                    await self._enter_trouble(
                        link, Status.NEEDS_LOGIN, "needs login: open this agent's UI to log in"
                    )
                    await self._park_for_login(fingerprint)
                case Next.COMPACT_AND_RETRY:
                    if not await self._compact(f"the turn on message #{message.id} was too long"):
                        # Nothing was compacted, so the same run would fail the same way:
                        # the retry starts a new session at once.
                        too_long += 1
                        fresh_session = True
                        retry_fresh = Decision(Next.RETRY, fresh_session=True)
                        brk = session_break(
                            verdict, retry_fresh, message_id=message.id, sender=message.from_
                        )
                        if brk is not None:
                            self._save_session_break(brk)
                        self.events.note("retrying the same message in a new session")

    # ------------------------------------------------------------ compaction

    async def _compactor(self) -> None:
        """Run the operator's compactions, each when no other run works on the session."""
        while True:
            await self.commands.wait_compact()
            async with self._session:
                self.commands.take_compact()
                await self._compact("asked by the operator")

    async def _compact_if_full(self) -> None:
        """After a clean turn: past the watermark, a checkpoint turn, then a compaction."""
        ctx, model = self.view.ctx, self.model.last or self.model.read()
        percent, window = self.cfg.compact_at_percent, self._window
        if not should_compact(ctx, model=model, percent=percent, window=window):
            return
        self.events.note(
            f"context {ctx:,} tokens passed {percent} % of the "
            f"{window or context_window(model):,}-token window of {model}: a checkpoint "
            "turn, then a compaction"
        )
        checkpoint = CHECKPOINT_PROMPT.format(state_dir=os.fspath(self.cfg.state_dir))
        obs, exit_code, cancelled = await self._session_run(checkpoint, compacting=False)
        verdict = judge(obs, exit_code, cancelled=cancelled)
        if verdict.outcome is Outcome.CANCELLED:
            self.events.note("checkpoint turn cancelled: no compaction this time")
            return
        if not verdict.ok:
            self.events.note(f"checkpoint turn failed ({verdict.note}); compacting anyway")
        await self._compact(f"context past {percent} % of the window")

    async def _compact(self, reason: str) -> bool:
        """Compact claude's session (``/compact`` as the prompt of a ``--continue`` run);
        True when claude reported the compaction."""
        if self._session_break_file.exists() or self.commands.new_session_pending:
            self.events.note("not compacted: the next turn starts a new session anyway")
            return False
        before = self.view.ctx
        self.events.note(f"compacting claude's session ({reason})")
        saved = await self._show_compacting()
        try:
            obs, exit_code, cancelled = await self._session_run(COMPACT_PROMPT, compacting=True)
        finally:
            with trio.CancelScope(shield=True):
                await self._restore_status_text(saved)
        verdict = judge(obs, exit_code, cancelled=cancelled)
        if verdict.ok and obs.compacted:
            self.view.set_token_usage(obs.ctx, None)
            self.events.note(compaction_note(before, obs.ctx))
            return True
        if not verdict.ok:
            why = verdict.note
        else:
            why = obs.compact_error or "claude reported no compaction"
        self.events.note(f"compaction failed: {why}")
        return False

    async def _show_compacting(self) -> str | None:
        """Put :data:`COMPACTING_STATUS` in the agent's status text, which the dashboard
        shows; the text it replaced (None: the daemon could not be asked). On a connection
        of its own: the loop's may be parked in ``recv``."""
        try:
            meta = await call_once(self.cfg.socket, GetAgentMeta())
            assert isinstance(meta, AgentMetaReply)
            await call_once(self.cfg.socket, SetStatus(text=COMPACTING_STATUS))
        except ClientError:
            return None
        return meta.status_text

    async def _restore_status_text(self, saved: str | None) -> None:
        if saved is None:
            return
        with contextlib.suppress(ClientError):
            await call_once(self.cfg.socket, SetStatus(text=saved))

    async def _session_run(
        self, prompt: str, *, compacting: bool
    ) -> tuple[TurnObserver, int | None, bool]:
        """One claude run of the harness's own (a checkpoint or a compaction) on the current
        session: what it printed, its exit code, whether the operator cancelled it."""
        view = self.view
        model = self.model.read()
        argv = claude_argv(
            self.cfg.claude,
            model=model,
            prompt=prompt,
            mcp_config_file=os.fspath(self._mcp_config_file),
            system_prompt_file=os.fspath(self._system_prompt_file),
            tools=allowed_tools(view.role, self.cfg.extra_allowed_tools),
            continue_session=True,
            settings=os.fspath(self._settings_file),
        )
        self._open_tools()
        state = TurnState.COMPACTING if compacting else TurnState.THINKING
        view.set_turn_state(state)
        obs = TurnObserver(state=state)
        # What it cost goes into the spend ledger like any turn's (no message of its own).
        _verdict, exit_code, cancelled, _duration = await self._run_claude(
            argv, obs, model=model, message_id=None, follow=not compacting
        )
        return obs, exit_code, cancelled

    async def _run_claude(
        self,
        argv: list[str],
        obs: TurnObserver,
        *,
        model: str,
        message_id: int | None,
        follow: bool,
    ) -> tuple[Verdict, int | None, bool, float]:
        """Run claude with ``argv``, feeding ``obs``, and report the run to the spend ledger:
        its verdict, exit code, whether the operator cancelled it, its duration (seconds).
        ``follow``: the turn state and the token badges follow what it prints (a compaction
        keeps ``compacting`` and its own figures)."""
        events, view = self.events, self.view
        control = TurnControl()
        self.commands.control = control

        def on_stdout(line: str) -> None:
            if not line.strip():
                return
            value, new_state = obs.feed_stdout(line)
            if value is None:
                events.note(line, source="stdout")
            else:
                events.publish("stream", value=value)
            if new_state is not None and follow:
                view.set_turn_state(new_state)

        def on_stderr(line: str) -> None:
            obs.feed_stderr(line)
            if line.strip():
                events.note(line, source="stderr")

        before = await trio.to_thread.run_sync(state_fingerprint, self.cfg.state_dir)
        started = trio.current_time()
        exit_code: int | None = None
        try:
            exit_code = await run_claude(
                argv,
                env=claude_env(self.cfg.env),
                cwd=self.cfg.state_dir,
                on_stdout=on_stdout,
                on_stderr=on_stderr,
                control=control,
                pid_file=self.cfg.claude_pid_file,
                cancel_grace=self.cfg.cancel_grace,
            )
        except (OSError, ValueError) as exc:
            # ValueError: an argument the OS cannot take (a NUL byte); the daemon refuses such
            # bodies, but a message must never end the loop, whatever it holds.
            on_stderr(f"cannot start {self.cfg.claude}: {exc}")
        finally:
            if self.mcp_host is not None:
                self.mcp_host.close_turn()
            self.commands.control = None
            duration = round(trio.current_time() - started, 3)
            view.set_turn_state(TurnState.IDLE)
        if follow and (obs.ctx is not None or obs.cost is not None):
            view.set_token_usage(obs.ctx, obs.cost, obs.cost_usd)
        cancelled = control.cancelled.is_set()
        verdict = judge(obs, exit_code, cancelled=cancelled)
        after = await trio.to_thread.run_sync(state_fingerprint, self.cfg.state_dir)
        self.reports.add(
            turn_report(
                obs,
                outcome=verdict.outcome.value,
                duration=duration,
                model=model,
                message_id=message_id,
                files_changed=before != after,
            )
        )
        return verdict, exit_code, cancelled, duration

    # ------------------------------------------------------------ session breaks

    def _load_session_break(self) -> SessionBreak | None:
        try:
            text = self._session_break_file.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return None
        except OSError as exc:
            text = ""
            self.events.note(f"cannot read {self._session_break_file}: {exc}")
        return SessionBreak.from_json(text)

    def _save_session_break(self, brk: SessionBreak) -> None:
        path = self._session_break_file
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(brk.to_json(), encoding="utf-8")
            tmp.replace(path)
        except OSError as exc:
            # Still honoured by this harness (the next turn takes the new-session request).
            self.commands.request_new_session(by_operator=False)
            self.events.note(f"cannot write {path} ({exc}); a restart would forget the new session")

    def _clear_session_break(self) -> None:
        with contextlib.suppress(OSError):
            self._session_break_file.unlink(missing_ok=True)

    def _owe(self, message_id: int, report: str | None) -> None:
        self.owed[message_id] = report
        while len(self.owed) > MAX_OWED:
            self.owed.popitem(last=False)

    async def _unread(self, link: Client) -> int | None:
        try:
            reply = await link.call(StatusRequest())
        except ClientError:
            # The turn can run without the count; a lost daemon shows up at the ack.
            return None
        assert isinstance(reply, StatusReply)
        return reply.unread

    async def _park_for_login(self, before: tuple[int, int, int] | None) -> None:
        """Wait until the credentials file changes (checked every ``login_poll`` seconds) or
        the UI says the login is done."""
        while True:
            if credentials_fingerprint(self.cfg.credentials_file) != before:
                self.events.note("claude credentials changed; replaying the message")
                return
            if await self.commands.wait_retry(self.cfg.login_poll):
                self.events.note("login reported done; replaying the message")
                return

    async def _enter_trouble(self, link: Client, status: Status, text: str) -> None:
        """Show the trouble on the UI and (through the agent's status text) the dashboard."""
        self.view.set_status(status)
        with contextlib.suppress(ClientError):
            if self._saved_status_text is None:
                meta = await link.call(GetAgentMeta())
                assert isinstance(meta, AgentMetaReply)
                self._saved_status_text = meta.status_text
            await link.call(SetStatus(text=text[:MAX_STATUS_TEXT]))

    async def _leave_trouble(self, link: Client) -> None:
        self.view.set_status(Status.ONLINE)
        if self._saved_status_text is None:
            return
        saved, self._saved_status_text = self._saved_status_text, None
        with contextlib.suppress(ClientError):
            await link.call(SetStatus(text=saved))

    # ------------------------------------------------------------ one claude run

    def _open_tools(self) -> None:
        """A fresh secret for this run's tools, and the MCP config that carries it."""
        if self.mcp_host is None:
            return
        token = self.mcp_host.open_turn()
        try:
            self._write_mcp_config(
                self.mcp_host.config(self.python, token, self.cfg.extra_mcp_servers)
            )
        except OSError as exc:
            # No stale config with an old secret: claude fails the turn instead.
            self.events.note(f"cannot write the MCP config {self._mcp_config_file}: {exc}")
            with contextlib.suppress(OSError):
                self._mcp_config_file.unlink()

    async def _turn(
        self, message: Message, unread: int | None, *, fresh_session: bool
    ) -> tuple[Verdict, float]:
        """One claude run on ``message``: its verdict and how long it took (seconds)."""
        events, view = self.events, self.view
        brk = self._load_session_break()
        skip_continue = self.commands.take_new_session() or fresh_session or brk is not None
        model = self.model.read()
        prompt = wake_prompt(
            message_id=message.id,
            sender=message.from_,
            body=message.body,
            pending=unread or 0,
            redelivered=message.redelivered,
            in_reply_to=message.in_reply_to,
        )
        if brk is not None:
            preface = session_preface(
                brk,
                message_id=message.id,
                reporter=report_recipient(view.role),
                state_dir=os.fspath(self.cfg.state_dir),
            )
            prompt = preface + "\n\n" + prompt
            events.note(new_session_note(brk))
        self._open_tools()
        argv = claude_argv(
            self.cfg.claude,
            model=model,
            prompt=prompt,
            mcp_config_file=os.fspath(self._mcp_config_file),
            system_prompt_file=os.fspath(self._system_prompt_file),
            tools=allowed_tools(view.role, self.cfg.extra_allowed_tools),
            continue_session=not skip_continue,
            settings=os.fspath(self._settings_file),
        )
        self.turns += 1
        events.publish(
            "turn_start",
            **{"from": message.from_},
            body=message.body,
            unread=unread,
            id=message.id,
            redelivered=message.redelivered,
            model=model,
            new_session=skip_continue,
            new_session_reason=new_session_note(brk) if brk is not None else None,
        )
        view.set_turn_state(TurnState.THINKING)
        obs = TurnObserver()
        verdict, _exit_code, _cancelled, duration = await self._run_claude(
            argv, obs, model=model, message_id=message.id, follow=True
        )
        if brk is not None:
            # The new session ran (a failure of this run saves a new break right after).
            self._clear_session_break()
        self._window = obs.context_window or self._window
        return verdict, duration


def describe(loop: TurnLoop) -> dict[str, Any]:
    return {
        "connected": loop.connected,
        "turn_running": loop.turn_running,
        "turns": loop.turns,
        "owed_acks": list(loop.owed),
        "pending_turn_reports": len(loop.reports),
    }
