"""Watching one claude run: :class:`TurnObserver` is fed every stdout/stderr line of the
``--output-format stream-json`` output and keeps what the verdict and the UI's badges need
(the final ``result``, token usage, errors seen on the way, the turn state). No I/O.
"""

from __future__ import annotations

import json
from collections import Counter, deque
from enum import StrEnum
from typing import Any, Final

import attrs

STDERR_TAIL_LINES: Final = 20


class TurnState(StrEnum):
    IDLE = "idle"
    THINKING = "thinking"
    COMPACTING = "compacting"


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
    #: The model of the last real inference, and the tool calls made, by tool name.
    model: str | None = None
    tools: Counter[str] = attrs.field(factory=Counter)
    #: claude compacted the session in this run (a ``compact_boundary`` was seen).
    compacted: bool = False
    #: Why claude's compaction failed (``compact_result: failed``), e.g. "Not enough
    #: messages to compact." when the session holds only one unanswered prompt.
    compact_error: str | None = None

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
        elif kind == "system" and subtype == "compact_boundary":
            self._compact_boundary(value)
        elif kind == "system" and subtype == "status" and value.get("compact_result") == "failed":
            error = value.get("compact_error")
            self.compact_error = error if isinstance(error, str) and error else "unknown reason"
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
        if isinstance(message.get("model"), str):
            self.model = message["model"]
        content = message.get("content")
        for block in content if isinstance(content, list) else ():
            if isinstance(block, dict) and block.get("type") == "tool_use":
                name = block.get("name")
                self.tools[name if isinstance(name, str) and name else "?"] += 1
        usage = message.get("usage")
        if isinstance(usage, dict):
            self.ctx = _usage_tokens(usage, *CONTEXT_KEYS)

    def _compact_boundary(self, value: dict[str, Any]) -> None:
        """The context is what the compaction left (until the next inference reports one)."""
        self.compacted = True
        meta = value.get("compact_metadata")
        post = meta.get("post_tokens") if isinstance(meta, dict) else None
        if isinstance(post, int) and not isinstance(post, bool) and post >= 0:
            self.ctx = post

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
    def context_window(self) -> int | None:
        """The model's context window as claude reports it in the result (``modelUsage``:
        ``contextWindow`` per model; the largest), None when it does not."""
        usage = self.result.get("modelUsage") if self.result else None
        if not isinstance(usage, dict):
            return None
        sizes = [m.get("contextWindow") for m in usage.values() if isinstance(m, dict)]
        known = [n for n in sizes if isinstance(n, int) and not isinstance(n, bool) and n > 0]
        return max(known) if known else None

    @property
    def cost_usd(self) -> float | None:
        value = self.result.get("total_cost_usd") if self.result else None
        return float(value) if isinstance(value, int | float) else None
