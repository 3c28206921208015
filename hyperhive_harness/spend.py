"""What one claude run cost, for the daemon's spend ledger (``turn_report``).

:func:`turn_report` builds the report from what the :class:`~hyperhive_harness.stream.TurnObserver`
kept of the run (claude's final ``result`` event: usage and ``total_cost_usd``; the models
and tool calls of its assistant messages; the last inference's context size).
:class:`PendingReports` holds reports until the daemon confirmed them: a report made while
the daemon is unreachable is sent after the reconnect, and since each carries its own
``report_id`` a report sent twice (the reply lost) is recorded once.

Whether a turn changed a file is seen from a :func:`state_fingerprint` of the state dir (names,
sizes, modification times) taken before and after the run, leaving out the harness's own
files (``hyperhive-*``) and dot files (claude's caches): :func:`files_changed`.
"""

from __future__ import annotations

import os
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any, Final

from hyperhive.config import MAX_REPORT_NAME, MAX_REPORT_TOOLS
from hyperhive.kinds import TurnOutcome
from hyperhive.protocol import ToolCount, TurnReport
from hyperhive_harness.stream import ALL_KEYS, TurnObserver

#: Reports kept while the daemon cannot be reached (the oldest go first past this).
MAX_PENDING_REPORTS: Final = 1000
#: Entries of the state dir looked at for the files-changed flag.
MAX_FINGERPRINT_ENTRIES: Final = 20_000

Fingerprint = frozenset[tuple[str, int, int]]


def _tokens(usage: Any, key: str) -> int:
    value = usage.get(key) if isinstance(usage, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def turn_report(
    obs: TurnObserver,
    *,
    outcome: str,
    duration: float,
    model: str,
    message_id: int | None,
    files_changed: bool,
) -> TurnReport:
    """The report of one finished claude run (zeros when it printed no ``result``)."""
    result = obs.result or {}
    usage = result.get("usage")
    input_tokens, cache_read, cache_creation, output_tokens = (_tokens(usage, k) for k in ALL_KEYS)
    cost = obs.cost_usd or 0.0
    tools = [
        ToolCount(name=name[:MAX_REPORT_NAME], count=count)
        for name, count in obs.tools.most_common(MAX_REPORT_TOOLS)
    ]
    return TurnReport(
        report_id=uuid.uuid4().hex,
        outcome=TurnOutcome(outcome),
        model=(obs.model or model or "unknown")[:MAX_REPORT_NAME],
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cache_read_tokens=cache_read,
        cache_creation_tokens=cache_creation,
        cost_usd=max(0.0, cost),
        duration_seconds=max(0.0, duration),
        tool_calls=sum(obs.tools.values()),
        tools=tools,
        ctx_tokens=obs.ctx,
        files_changed=files_changed,
        message_id=message_id,
    )


class PendingReports:
    """Reports not yet confirmed by the daemon, oldest first."""

    def __init__(self) -> None:
        self._reports: OrderedDict[str, TurnReport] = OrderedDict()

    def add(self, report: TurnReport) -> None:
        self._reports[report.report_id] = report
        while len(self._reports) > MAX_PENDING_REPORTS:
            self._reports.popitem(last=False)

    def pending(self) -> list[TurnReport]:
        return list(self._reports.values())

    def done(self, report_id: str) -> None:
        self._reports.pop(report_id, None)

    def __len__(self) -> int:
        return len(self._reports)


def state_fingerprint(root: Path) -> Fingerprint:
    """Names, sizes and mtimes under ``root`` (blocking; run it in a thread)."""
    seen: set[tuple[str, int, int]] = set()
    stack = [root]
    while stack and len(seen) < MAX_FINGERPRINT_ENTRIES:
        directory = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith((".", "hyperhive-")):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                continue
            seen.add((os.path.relpath(entry.path, root), st.st_size, st.st_mtime_ns))
            if is_dir:
                stack.append(Path(entry.path))
    return frozenset(seen)


def files_changed(before: Fingerprint, after: Fingerprint) -> bool:
    return before != after
