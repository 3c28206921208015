"""The model file: which model the next turn uses (``hyperhive set-model`` and the UI's
model box write it; the turn loop reads it afresh before every turn)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from hyperhive_harness.config import DEFAULT_MODEL
from hyperhive_harness.event_log import EventLog

MAX_MODEL_CHARS: Final = 100


class InvalidModel(ValueError):
    pass


def check_model(raw: str) -> str:
    """A model name: one word of printable characters, at most 100 (an alias or a full id)."""
    model = raw.strip()
    if not model or len(model) > MAX_MODEL_CHARS:
        raise InvalidModel(f"model must be 1 to {MAX_MODEL_CHARS} characters")
    if any(c.isspace() or not c.isprintable() for c in model):
        raise InvalidModel("model must be one word without spaces or control characters")
    return model


class ModelFile:
    """The model file, announcing every change it sees as ``model_changed``."""

    def __init__(self, path: Path, events: EventLog) -> None:
        self.path = path
        self._events = events
        #: The model last read or written (None before the first).
        self.last: str | None = None

    def read(self) -> str:
        """The model of the next turn: the file, read afresh (``haiku`` when absent)."""
        try:
            text = self.path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            text = ""
        try:
            model = check_model(text) if text else DEFAULT_MODEL
        except InvalidModel:
            model = DEFAULT_MODEL
        if self.last is not None and model != self.last:
            # Changed behind our back (``hyperhive set-model`` writes the same file).
            self._events.publish("model_changed", model=model)
        self.last = model
        return model

    def write(self, raw: str) -> str:
        """Write the file (atomically) and announce it; applies from the next turn."""
        model = check_model(raw)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(model + "\n", encoding="utf-8")
        tmp.replace(self.path)
        self.last = model
        self._events.publish("model_changed", model=model)
        return model
