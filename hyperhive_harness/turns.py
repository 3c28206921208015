"""The decisions of the turn loop, as plain synchronous code (no I/O, no trio).

- :func:`wake_prompt` — the text a turn starts with (sender, body, pending count).
- :func:`claude_argv`, :func:`mcp_config`, :func:`allowed_tools` — how claude is started.
- :class:`TurnObserver` — fed every stdout/stderr line of one claude run; tracks the final
  ``result`` event, token usage and the turn state (thinking/compacting).
- :func:`judge` — the verdict on a finished run: ok, cancelled, rate limited, needs login,
  no session to continue, or failed.
- :func:`decide` — what the loop does with a verdict: ack, retry now, retry after a sleep,
  park until login; whether to report to the manager. This is the failure/ack policy.
- :func:`session_break`, :func:`session_preface` — after a run that may have left its prompt
  unanswered in claude's session, the next run starts a new session, told what happened.
- :class:`Backoff` — the reconnect schedule (2, 4, 8, 16, 30 s, then 30 s forever).
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from enum import StrEnum
from typing import Any, Final

import attrs

SERVER_NAME: Final = "hyperhive"
AGENT_TOOLS: Final = (
    "send",
    "recv",
    "ask",
    "answer",
    "get_loose_ends",
    "cancel_loose_end",
    "set_status",
    "get_agent_meta",
)
MANAGER_TOOLS: Final = (
    *AGENT_TOOLS,
    "request_spawn",
    "request_apply_commit",
    "kill",
    "start",
    "restart",
    "update",
    "list_containers",
    "get_logs",
)
STDERR_TAIL_LINES: Final = 20
#: Longest note text (a failure note with its stderr tail) kept in an event or a message.
MAX_NOTE_CHARS: Final = 4000


class TurnState(StrEnum):
    IDLE = "idle"
    THINKING = "thinking"
    COMPACTING = "compacting"


class Status(StrEnum):
    """The harness's status, shown on the UI (``status_changed``)."""

    STARTING = "starting"
    ONLINE = "online"
    DISCONNECTED = "disconnected"
    RATE_LIMITED = "rate_limited"
    NEEDS_LOGIN = "needs_login"


# ---------------------------------------------------------------- starting claude


def allowed_tools(role: str, extra: Iterable[str] = ()) -> list[str]:
    """The ``--allowedTools`` list: the hyperhive MCP tools of the role, then ``extra``."""
    names = MANAGER_TOOLS if role == "manager" else AGENT_TOOLS
    tools = [f"mcp__{SERVER_NAME}__{name}" for name in names]
    tools.extend(t for t in extra if t not in tools)
    return tools


def mcp_config(python: str, socket: str, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``--mcp-config`` document: ``hyperhive-harness mcp`` plus the agent's extra
    servers from its applied agent.toml (which can never replace ``hyperhive``)."""
    servers = {name: spec for name, spec in (extra or {}).items() if name != SERVER_NAME}
    servers[SERVER_NAME] = {
        "type": "stdio",
        "command": python,
        "args": ["-m", "hyperhive_harness.mcp_server"],
        "env": {"HYPERHIVE_SOCKET": socket},
    }
    return {"mcpServers": servers}


def claude_argv(
    claude: str,
    *,
    model: str,
    prompt: str,
    mcp_config_file: str,
    system_prompt_file: str,
    tools: Sequence[str],
    continue_session: bool = True,
    settings: str | None = None,
) -> list[str]:
    """The command line of one turn. The prompt follows ``--`` so no text is read as a flag
    (``--allowedTools`` and ``--mcp-config`` take several values)."""
    argv = [claude, "--print", "--verbose", "--output-format", "stream-json", "--model", model]
    if continue_session:
        argv.append("--continue")
    argv += [
        "--mcp-config",
        mcp_config_file,
        "--strict-mcp-config",
        "--allowedTools",
        ",".join(tools),
        "--system-prompt-file",
        system_prompt_file,
    ]
    if settings:
        argv += ["--settings", settings]
    argv += ["--", prompt]
    return argv


def claude_env(base: Mapping[str, str]) -> dict[str, str]:
    """claude's environment: the harness's, with MCP tools shown directly (no ToolSearch)."""
    env = dict(base)
    env["ENABLE_TOOL_SEARCH"] = "false"
    return env


def render_system_prompt(template: str, *, label: str, role: str, state_dir: str) -> str:
    """Fill the role template's ``{label}``, ``{role}`` and ``{state_dir}`` placeholders.

    Plain replacement, so other braces in the template (JSON examples) stay as written.
    """
    return (
        template.replace("{label}", label).replace("{role}", role).replace("{state_dir}", state_dir)
    )


def sender_phrase(sender: str) -> str:
    if sender == "operator":
        return "the operator (the human running the hive)"
    if sender == "system":
        return "the hive itself (a system event)"
    if sender == "manager":
        return "the manager agent"
    return sender


def wake_prompt(
    *,
    message_id: int,
    sender: str,
    body: str,
    pending: int,
    redelivered: bool = False,
    in_reply_to: int | None = None,
) -> str:
    """The prompt of a turn: who wrote, what, and how many messages wait behind it."""
    lines = [f"New message #{message_id} from {sender_phrase(sender)}."]
    if in_reply_to is not None:
        lines.append(f"It replies to message #{in_reply_to}.")
    if redelivered:
        lines.append(
            "It was delivered before, but that turn did not finish (the harness or the hive "
            "restarted): check your notes and what you already did before acting on it again."
        )
    lines += ["", "--- message ---", body, "--- end of message ---", ""]
    if pending <= 0:
        lines.append("No other messages are waiting.")
    else:
        lines.append(
            f"{pending} more message{'s are' if pending != 1 else ' is'} waiting in your inbox; "
            f"read them with mcp__{SERVER_NAME}__recv (max up to 32) once this one is handled."
        )
    if sender == "system" or sender.startswith(("reminder", "bash-task")):
        pass
    elif _is_address(sender):
        lines.append(
            f'To answer, use mcp__{SERVER_NAME}__send with to: "{sender}" and '
            f"in_reply_to: {message_id}."
        )
    else:
        lines.append(f"{sender!r} is a label, not an agent: there is no one to reply to.")
    return "\n".join(lines)


_ADDRESS_RE: Final = re.compile(r"[a-z][a-z0-9-]{0,8}")


def _is_address(sender: str) -> bool:
    return sender in ("operator", "manager") or _ADDRESS_RE.fullmatch(sender) is not None


# ---------------------------------------------------------------- watching one run


def _usage_tokens(usage: Any, *keys: str) -> int:
    if not isinstance(usage, dict):
        return 0
    total = 0
    for key in keys:
        value = usage.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            total += value
    return total


CONTEXT_KEYS: Final = ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
ALL_KEYS: Final = (*CONTEXT_KEYS, "output_tokens")


@attrs.define
class TurnObserver:
    """Everything one claude run printed that the verdict and the badges need."""

    result: dict[str, Any] | None = None
    #: Prompt size of the last real inference (input + cache tokens).
    ctx: int | None = None
    state: TurnState = TurnState.THINKING
    stderr_tail: deque[str] = attrs.field(factory=lambda: deque(maxlen=STDERR_TAIL_LINES))
    #: Error statuses/types seen on the way (``api_retry`` events, API error messages).
    error_statuses: list[int] = attrs.field(factory=list)
    error_kinds: list[str] = attrs.field(factory=list)
    session_id: str | None = None
    unparsed_lines: int = 0

    def feed_stdout(self, line: str) -> tuple[Any, TurnState | None]:
        """Take one stdout line; return its parsed value (None if not JSON) and the new turn
        state when this line changed it."""
        try:
            value = json.loads(line)
        except ValueError:
            self.unparsed_lines += 1
            return None, None
        if not isinstance(value, dict):
            return value, None
        sid = value.get("session_id")
        if isinstance(sid, str):
            self.session_id = sid
        kind, subtype = value.get("type"), value.get("subtype")
        if kind == "result":
            self.result = value
        elif kind == "assistant":
            self._assistant(value)
        elif kind == "system" and subtype == "api_retry":
            self._error(value.get("error_status"), value.get("error"))
        elif kind == "error":
            err = value.get("error")
            self._error(None, err.get("type") if isinstance(err, dict) else err)
        return value, self._state_change(kind, subtype, value)

    def _assistant(self, value: dict[str, Any]) -> None:
        message = value.get("message")
        if not isinstance(message, dict):
            return
        if value.get("is_api_error_message") or value.get("error"):
            self._error(value.get("api_error_status"), value.get("api_error_type"))
            self._error(None, value.get("error"))
            return
        if message.get("model") == "<synthetic>":
            return
        usage = message.get("usage")
        if isinstance(usage, dict):
            self.ctx = _usage_tokens(usage, *CONTEXT_KEYS)

    def _error(self, status: Any, kind: Any) -> None:
        if isinstance(status, int) and not isinstance(status, bool):
            self.error_statuses.append(status)
        if isinstance(kind, str) and kind:
            self.error_kinds.append(kind)

    def _state_change(self, kind: Any, subtype: Any, value: dict[str, Any]) -> TurnState | None:
        new = self.state
        if kind == "system" and subtype == "status":
            new = (
                TurnState.COMPACTING if value.get("status") == "compacting" else TurnState.THINKING
            )
        elif kind == "system" and subtype == "compact_boundary":
            new = TurnState.THINKING
        if new is self.state:
            return None
        self.state = new
        return new

    def feed_stderr(self, line: str) -> None:
        self.stderr_tail.append(line)

    @property
    def cost(self) -> int | None:
        """Tokens billed for the turn (the result's usage total)."""
        if self.result is None:
            return None
        usage = self.result.get("usage")
        return _usage_tokens(usage, *ALL_KEYS) if isinstance(usage, dict) else None

    @property
    def cost_usd(self) -> float | None:
        value = self.result.get("total_cost_usd") if self.result else None
        return float(value) if isinstance(value, int | float) else None


# ---------------------------------------------------------------- the verdict


class Outcome(StrEnum):
    OK = "ok"
    CANCELLED = "cancelled"
    RATE_LIMITED = "rate_limited"
    NEEDS_LOGIN = "needs_login"
    #: ``--continue`` found no conversation (older CLIs fail instead of starting one).
    NO_SESSION = "no_session"
    FAILED = "failed"


@attrs.frozen
class Verdict:
    outcome: Outcome
    note: str

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK


AUTH_MARKERS: Final = (
    "authentication_error",
    "authentication_failed",
    "invalid api key",
    "invalid x-api-key",
    "please run /login",
    "not logged in",
    "oauth token has expired",
    "oauth token revoked",
)
RATE_MARKERS: Final = ("rate_limit", "rate limit", "usage limit reached")
AUTH_KINDS: Final = frozenset({"authentication_error", "authentication_failed"})
RATE_KINDS: Final = frozenset({"rate_limit_error", "rate_limit"})
NO_SESSION_MARKERS: Final = ("no conversation found to continue", "no conversation found")
_CODE_RE: Final = re.compile(r"\b(401|429)\b")


def _text_of(obs: TurnObserver) -> str:
    parts = list(obs.stderr_tail)
    if obs.result is not None:
        for key in ("result", "error", "api_error_type"):
            value = obs.result.get(key)
            if isinstance(value, str):
                parts.append(value)
        errors = obs.result.get("errors")
        if isinstance(errors, list):
            parts.extend(str(e) for e in errors)
    return "\n".join(parts)


def _clip(text: str, limit: int = MAX_NOTE_CHARS) -> str:
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]


def judge(obs: TurnObserver, exit_code: int | None, *, cancelled: bool = False) -> Verdict:
    """The verdict on one finished claude run.

    A run is ok when it printed a final ``result`` with ``is_error`` false and
    ``terminal_reason`` absent or ``completed``, and exited 0 (a failed run can still say
    ``subtype: success``). Otherwise the structured error fields come first (the result's
    ``api_error_status``/``api_error_type``, the assistant's error message, ``api_retry``
    events), then text markers in stderr and the result text.
    """
    result = obs.result
    if cancelled:
        return Verdict(Outcome.CANCELLED, "turn cancelled by the operator")
    if (
        result is not None
        and result.get("is_error") is False
        and result.get("terminal_reason") in (None, "completed")
        and exit_code == 0
    ):
        return Verdict(Outcome.OK, "")
    summary = _failure_summary(obs, exit_code)
    lower = _text_of(obs).lower()
    if any(m in lower for m in NO_SESSION_MARKERS):
        return Verdict(Outcome.NO_SESSION, "no conversation to continue: " + summary)
    # The final failure decides (a retried 429 that ended in a 500 is a 500): the result's
    # own error fields, else the last error seen on the way, else markers in the text.
    status: object = result.get("api_error_status") if result is not None else None
    kind: object = result.get("api_error_type") if result is not None else None
    if status is None and kind is None:
        status = obs.error_statuses[-1] if obs.error_statuses else None
        kind = obs.error_kinds[-1] if obs.error_kinds else None
    if status is not None or kind is not None:
        kind = kind.lower() if isinstance(kind, str) else ""
        if status == 401 or kind in AUTH_KINDS:
            return Verdict(Outcome.NEEDS_LOGIN, "authentication failed: " + summary)
        if status == 429 or kind in RATE_KINDS:
            return Verdict(Outcome.RATE_LIMITED, "rate limited: " + summary)
        return Verdict(Outcome.FAILED, summary)
    codes = {int(c) for c in _CODE_RE.findall("\n".join(obs.stderr_tail))}
    if 401 in codes or any(m in lower for m in AUTH_MARKERS):
        return Verdict(Outcome.NEEDS_LOGIN, "authentication failed: " + summary)
    if 429 in codes or any(m in lower for m in RATE_MARKERS):
        return Verdict(Outcome.RATE_LIMITED, "rate limited: " + summary)
    return Verdict(Outcome.FAILED, summary)


def _failure_summary(obs: TurnObserver, exit_code: int | None) -> str:
    result = obs.result
    bits = []
    if exit_code is None:
        bits.append("claude did not exit")
    else:
        bits.append(f"claude exited with {exit_code}")
    if result is None:
        bits.append("without a final result")
    else:
        reason = result.get("terminal_reason")
        if reason:
            bits.append(f"terminal_reason {reason}")
        text = result.get("result")
        if isinstance(text, str) and text.strip():
            bits.append(text.strip())
    note = "; ".join(bits)
    tail = "\n".join(line for line in obs.stderr_tail if line.strip())
    if tail:
        note += "\nstderr:\n" + tail
    return _clip(note)


# ---------------------------------------------------------------- the failure / ack policy


class Next(StrEnum):
    """What the loop does with the message after a verdict."""

    ACK = "ack"
    #: Run the same message again at once (after ``delay`` seconds).
    RETRY = "retry"
    #: Status ``rate_limited``, sleep, run the same message again.
    SLEEP_AND_RETRY = "sleep_and_retry"
    #: Status ``needs_login``, park until credentials appear, run the same message again.
    PARK_AND_RETRY = "park_and_retry"


@attrs.frozen
class Decision:
    next: Next
    #: Seconds to wait before the retry (RETRY and SLEEP_AND_RETRY).
    delay: float = 0.0
    #: Run the retry without ``--continue``.
    fresh_session: bool = False
    #: Tell the manager (or, for the manager, the operator) that the message was dropped.
    report: bool = False
    #: Shown in ``turn_end``'s note after the verdict's note.
    note: str = ""


def decide(
    verdict: Verdict,
    *,
    attempt: int,
    max_attempts: int,
    rate_limit_sleep: float,
    failed_retry_delay: float,
) -> Decision:
    """The failure policy. ``attempt`` counts the failed runs of this message so far, this
    one included (rate limits, login parks and a missing session do not count).

    - ok, or cancelled by the operator (the operator chose to stop it): ack.
    - rate limited: keep the message unacked, sleep, retry; no limit (it is not its fault).
    - authentication failure: keep it unacked, park until credentials appear, replay it.
    - ``--continue`` found nothing: retry at once without ``--continue``.
    - any other failure: retry after a short delay until ``max_attempts`` runs failed, then
      ack it (no endless loop on a message that breaks every turn) and report it, with the
      stderr tail, to the manager so nothing is lost silently.

    Whatever the decision, a failed, rate-limited or unauthenticated run also ends claude's
    session (:func:`session_break`): the retry, or the next message, runs in a new one.
    """
    match verdict.outcome:
        case Outcome.OK | Outcome.CANCELLED:
            return Decision(Next.ACK)
        case Outcome.RATE_LIMITED:
            return Decision(
                Next.SLEEP_AND_RETRY,
                delay=rate_limit_sleep,
                note=f"retrying the same message in {rate_limit_sleep:g} s",
            )
        case Outcome.NEEDS_LOGIN:
            return Decision(
                Next.PARK_AND_RETRY,
                note="message kept unacked; it is replayed once claude is logged in again",
            )
        case Outcome.NO_SESSION:
            return Decision(Next.RETRY, fresh_session=True, note="retrying in a new session")
    if attempt < max_attempts:
        return Decision(
            Next.RETRY,
            delay=failed_retry_delay,
            note=f"attempt {attempt} of {max_attempts} failed; "
            f"retrying in {failed_retry_delay:g} s",
        )
    return Decision(
        Next.ACK,
        report=True,
        note=f"attempt {attempt} of {max_attempts} failed; giving up: the message is acked "
        "and the failure reported",
    )


# ---------------------------------------------------------------- ending a poisoned session

#: Verdicts of a run that may have sent its prompt without getting it answered. claude
#: records the prompt in its session before the request, so ``--continue`` would send it
#: again with the next prompt: a prompt the API refuses would fail every following turn.
SESSION_BREAKING: Final = frozenset({Outcome.FAILED, Outcome.RATE_LIMITED, Outcome.NEEDS_LOGIN})
MAX_REASON_CHARS: Final = 300


@attrs.frozen
class SessionBreak:
    """Why the next turn starts a new claude session instead of ``--continue``.

    Kept in a file in the state dir from the failed run until the next run ends, so a
    harness restart in between does not lose it. ``message_id`` is the message whose turn
    failed (None when the file was unreadable); ``given_up``: it was acked and reported.
    """

    message_id: int | None
    sender: str
    outcome: str
    given_up: bool
    reason: str

    def to_json(self) -> str:
        return json.dumps(attrs.asdict(self), ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> SessionBreak:
        """Parse the file; anything malformed still means a new session (reason unknown)."""
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            data = {}
        message_id = data.get("message_id")
        if not isinstance(message_id, int) or isinstance(message_id, bool):
            message_id = None

        def string(key: str, default: str) -> str:
            value = data.get(key)
            return value[:MAX_REASON_CHARS] if isinstance(value, str) and value else default

        return cls(
            message_id=message_id,
            sender=string("sender", "unknown"),
            outcome=string("outcome", Outcome.FAILED.value),
            given_up=data.get("given_up") is True,
            reason=string("reason", "unknown reason"),
        )


def session_break(
    verdict: Verdict, decision: Decision, *, message_id: int, sender: str
) -> SessionBreak | None:
    """The session break a verdict calls for (None: the session can go on)."""
    if verdict.outcome not in SESSION_BREAKING:
        return None
    first = next((line.strip() for line in verdict.note.splitlines() if line.strip()), "")
    reason = first if len(first) <= MAX_REASON_CHARS else first[: MAX_REASON_CHARS - 1] + "…"
    return SessionBreak(
        message_id=message_id,
        sender=sender,
        outcome=verdict.outcome.value,
        given_up=decision.next is Next.ACK,
        reason=reason or verdict.outcome.value,
    )


def session_preface(brk: SessionBreak, *, message_id: int, reporter: str, state_dir: str) -> str:
    """What the first turn of the new session is told before its wake prompt."""
    failed_on = f"#{brk.message_id}" if brk.message_id is not None else "a message"
    lines = [
        "[hyperhive harness] Your previous claude session was ended because a turn failed "
        f"({brk.outcome}: {brk.reason}). This turn starts a new session: the earlier "
        "conversation is not available."
    ]
    if brk.given_up:
        lines.append(
            f"The turn on message {failed_on} from {sender_phrase(brk.sender)} failed for good: "
            f"that message was given up (acked, and reported to the {reporter}, who may send "
            "it again). Do not look for it in your inbox."
        )
    elif brk.message_id == message_id:
        lines.append("It failed on the message below: this is a new attempt at it.")
    else:
        lines.append(
            f"It failed on message {failed_on} from {sender_phrase(brk.sender)}, which is kept "
            "and comes again after this one."
        )
    lines.append(f"Re-read your notes in {state_dir} before you act.")
    return "\n".join(lines)


def new_session_note(brk: SessionBreak) -> str:
    """The UI's note when a turn starts a new session after a failure."""
    failed_on = f"message #{brk.message_id}" if brk.message_id is not None else "a message"
    note = (
        f"new claude session (no --continue): the previous one was ended because the turn on "
        f"{failed_on} failed ({brk.outcome}: {brk.reason})"
    )
    if brk.given_up:
        note += f"; {failed_on} was given up and is not carried over"
    return note


def report_recipient(role: str) -> str:
    """Who hears about a dropped message: the manager, or the operator for the manager."""
    return "operator" if role == "manager" else "manager"


def failure_report(
    *, agent: str, message_id: int, sender: str, body: str, attempts: int, note: str
) -> str:
    preview = body if len(body) <= 300 else body[:300] + "…"
    return _clip(
        f"turn_failed: {agent} could not handle message #{message_id} from {sender} "
        f"({attempts} attempt{'s' if attempts != 1 else ''}); the message was acked so it "
        f"does not loop. Resend it if it still matters.\n{agent}'s claude session was ended "
        "with it: its next turn starts a new session that does not carry the failed prompt."
        f"\nmessage: {preview}\nlast failure: {note}"
    )


# ---------------------------------------------------------------- reconnecting


@attrs.define
class Backoff:
    """Delays between reconnect attempts: the schedule in order, then its last value."""

    schedule: tuple[float, ...]
    attempts: int = 0

    def next(self) -> float:
        delay = self.schedule[min(self.attempts, len(self.schedule) - 1)]
        self.attempts += 1
        return delay

    def reset(self) -> None:
        self.attempts = 0
