"""The turn policy, as plain synchronous code (no I/O, no trio).

- :func:`judge` — the verdict on a finished run: ok, cancelled, rate limited, needs login,
  no session to continue, or failed.
- :func:`decide` — what the loop does with a verdict: ack, retry now, retry after a sleep,
  park until login; whether to report to the manager. This is the failure/ack policy.
- :func:`session_break` — after a run that may have left its prompt unanswered in claude's
  session, the next run starts a new session (:class:`SessionBreak`, kept in a file).
- :func:`failure_report`, :func:`report_recipient` — who hears about a dropped message, and what.
- :func:`context_window`, :func:`should_compact` — when a session is compacted before it
  grows too long (the watermark); a context-length failure is :attr:`Outcome.TOO_LONG`, which
  :func:`decide` answers with a compaction, then a new session.
"""

from __future__ import annotations

import json
import re
from enum import StrEnum
from typing import Final

import attrs

from hyperhive.kinds import TurnOutcome
from hyperhive_harness.stream import TurnObserver

#: Longest note text (a failure note with its stderr tail) kept in an event or a message.
MAX_NOTE_CHARS: Final = 4000


# ---------------------------------------------------------------- the verdict


#: How a claude run ended: the outcomes the spend ledger records (one closed set).
Outcome = TurnOutcome


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
#: claude's ``terminal_reason`` for a context-length failure, and the API's wording of it.
TOO_LONG_REASON: Final = "prompt_too_long"
TOO_LONG_MARKERS: Final = ("prompt is too long",)
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
    if (result is not None and result.get("terminal_reason") == TOO_LONG_REASON) or any(
        m in lower for m in TOO_LONG_MARKERS
    ):
        return Verdict(Outcome.TOO_LONG, "context too long: " + summary)
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
    #: Compact claude's session, then run the same message again in it.
    COMPACT_AND_RETRY = "compact_and_retry"


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
    too_long: int = 0,
) -> Decision:
    """The failure policy. ``attempt`` counts the failed runs of this message so far, this
    one included (rate limits, login parks, a missing session and a context-length failure
    do not count); ``too_long`` counts its context-length failures, this one included.

    - ok, or cancelled by the operator (the operator chose to stop it): ack.
    - rate limited: keep the message unacked, sleep, retry; no limit (it is not its fault).
    - authentication failure: keep it unacked, park until credentials appear, replay it.
    - ``--continue`` found nothing: retry at once without ``--continue``.
    - the context is too long: the first time, compact the session and retry in it; the
      second time, retry in a new session; a third time (the message alone does not fit):
      ack it and report it.
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
        case Outcome.TOO_LONG if too_long <= 1:
            return Decision(
                Next.COMPACT_AND_RETRY,
                note="compacting claude's session, then retrying the same message",
            )
        case Outcome.TOO_LONG if too_long == 2:
            return Decision(
                Next.RETRY,
                fresh_session=True,
                note="still too long after the compaction: retrying in a new session",
            )
        case Outcome.TOO_LONG:
            return Decision(
                Next.ACK,
                report=True,
                note="too long even in a new session; giving up: the message is acked "
                "and the failure reported",
            )
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
SESSION_BREAKING: Final = frozenset(
    {Outcome.FAILED, Outcome.RATE_LIMITED, Outcome.NEEDS_LOGIN, Outcome.TOO_LONG}
)
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
    """The session break a verdict calls for (None: the session can go on; a session that is
    compacted goes on too)."""
    if verdict.outcome not in SESSION_BREAKING or decision.next is Next.COMPACT_AND_RETRY:
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


# ---------------------------------------------------------------- compaction

#: Context windows (tokens) by model, used when claude's result does not report the window
#: (``modelUsage.contextWindow``): the first entry whose key is in the model name (an alias
#: or a full id, lowercased) wins; anything else (haiku, sonnet, opus) gets
#: :data:`DEFAULT_CONTEXT_WINDOW`.
CONTEXT_WINDOWS: Final = (("[1m]", 1_000_000),)
DEFAULT_CONTEXT_WINDOW: Final = 200_000

#: The checkpoint turn's prompt, run before a compaction the harness decided on.
CHECKPOINT_PROMPT: Final = (
    "[hyperhive harness] Your conversation is about to be compacted: its earlier part will be "
    "replaced by a summary. Write what you must keep (open tasks, decisions, who waits for "
    "what, anything you would need to carry on) into your notes in {state_dir} now. Do not "
    "send messages for this; just update your notes and end the turn."
)
#: What claude takes as the request to compact its session (its ``/compact`` command).
COMPACT_PROMPT: Final = "/compact"


def context_window(model: str) -> int:
    """The context window of ``model`` in tokens (from :data:`CONTEXT_WINDOWS`)."""
    name = model.lower()
    return next((size for key, size in CONTEXT_WINDOWS if key in name), DEFAULT_CONTEXT_WINDOW)


def should_compact(ctx: int | None, *, model: str, percent: int, window: int | None = None) -> bool:
    """After a clean turn: does a context of ``ctx`` tokens pass the watermark, ``percent``
    of the model's window (``window`` as claude reported it, else from the table)?
    ``percent`` 0 disables proactive compaction."""
    if percent <= 0 or ctx is None:
        return False
    return ctx * 100 >= (window or context_window(model)) * percent


def compaction_note(before: int | None, after: int | None) -> str:
    """The UI's note after a compaction."""

    def tokens(n: int | None) -> str:
        return "?" if n is None else f"{n:,}"

    return f"claude's session compacted: context {tokens(before)} → {tokens(after)} tokens"
