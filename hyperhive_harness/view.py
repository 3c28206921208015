"""What the UI reads (``/api/state``): the harness's state, folded from its events.

:class:`View` listens to the :class:`~hyperhive_harness.event_log.EventLog` and keeps the
status, the turn state (+ since), token badges, the current and the last turn. Its setters
only publish an event (when something changed); the state itself changes in :meth:`View.apply`,
so what the UI shows is always what its event stream said.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from hyperhive.events import Event
from hyperhive_harness.event_log import EventLog
from hyperhive_harness.model import ModelFile
from hyperhive_harness.stream import TurnState


class Status(StrEnum):
    """The harness's status, shown on the UI (``status_changed``)."""

    STARTING = "starting"
    ONLINE = "online"
    DISCONNECTED = "disconnected"
    RATE_LIMITED = "rate_limited"
    NEEDS_LOGIN = "needs_login"
    #: Paused by the operator (or a budget): the daemon hands it no messages until resumed.
    PAUSED = "paused"


class View:
    def __init__(self, events: EventLog, model: ModelFile) -> None:
        self._events = events
        self._model = model
        self.label = ""
        self.role = ""
        self.status = Status.STARTING
        #: What goes with the status (the pause's reason and who paused), if anything.
        self.status_detail: str | None = None
        self.turn_state = TurnState.IDLE
        self.turn_state_since = events.clock()
        self.ctx: int | None = None
        self.cost: int | None = None
        self.cost_usd: float | None = None
        self.last_turn_seconds: float | None = None
        self.current_turn: dict[str, Any] | None = None
        events.listen(self.apply)

    # ------------------------------------------------------------ the fold

    def apply(self, event: Event) -> None:
        p = event.data
        match event.kind:
            case "status_changed":
                self.status = Status(p["status"])
                self.status_detail = p.get("detail")
            case "turn_state_changed":
                self.turn_state = TurnState(p["state"])
                self.turn_state_since = p["since"]
            case "token_usage_changed":
                self.ctx, self.cost, self.cost_usd = p["ctx"], p["cost"], p["cost_usd"]
            case "turn_start":
                self.current_turn = {
                    "id": p.get("id"),
                    "from": p.get("from"),
                    "started_at": event.ts,
                    "model": p.get("model"),
                }
            case "turn_end":
                self.current_turn = None
                if p.get("duration_seconds") is not None:
                    self.last_turn_seconds = p["duration_seconds"]

    # ------------------------------------------------------------ changes (as events)

    def set_identity(self, label: str, role: str) -> None:
        self.label, self.role = label, role

    def set_status(self, status: Status, detail: str | None = None) -> None:
        if status is not self.status or detail != self.status_detail:
            if detail is None:
                self._events.publish("status_changed", status=status.value)
            else:
                self._events.publish("status_changed", status=status.value, detail=detail)

    def set_turn_state(self, state: TurnState) -> None:
        if state is not self.turn_state:
            self._events.publish(
                "turn_state_changed", state=state.value, since=self._events.clock()
            )

    def set_token_usage(
        self, ctx: int | None, cost: int | None, cost_usd: float | None = None
    ) -> None:
        """Publish the badges; a value not known (None) keeps the previous one."""
        self._events.publish(
            "token_usage_changed",
            ctx=ctx if ctx is not None else self.ctx,
            cost=cost if cost is not None else self.cost,
            cost_usd=cost_usd if cost_usd is not None else self.cost_usd,
        )

    def snapshot(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "role": self.role,
            "status": self.status.value,
            "status_detail": self.status_detail,
            "turn_state": self.turn_state.value,
            "turn_state_since": self.turn_state_since,
            "model": self._model.last or self._model.read(),
            "ctx": self.ctx,
            "cost": self.cost,
            "cost_usd": self.cost_usd,
            "last_turn_seconds": self.last_turn_seconds,
            "current_turn": self.current_turn,
        }
