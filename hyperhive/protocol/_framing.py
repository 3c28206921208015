"""Sans-IO JSON-line framing with a hard bound on buffered bytes.

:class:`LineBuffer` never holds more than ``max_line`` bytes of an unfinished line: past that
it drops the line's bytes until the next newline and then reports one :data:`OVERSIZED`
in place of the line, so the request/reply pairing on the connection is kept. It also
remembers when the unfinished line began (:attr:`LineBuffer.started_at`, on the clock the
caller passes to :meth:`~LineBuffer.feed`), so a server can give each line a deadline.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

from hyperhive.config import MAX_LINE_BYTES


class Oversized:
    """Stands for a line that was too long and was discarded."""

    def __repr__(self) -> str:
        return "OVERSIZED"


OVERSIZED: Final = Oversized()


class LineBuffer:
    def __init__(self, max_line: int = MAX_LINE_BYTES) -> None:
        self.max_line = max_line
        self._buf = bytearray()
        self._discarding = False
        #: When the first byte of the unfinished line arrived; None between lines.
        self.started_at: float | None = None

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes, now: float = 0.0) -> list[bytes | Oversized]:
        """Add received bytes; return each complete line (without newline) or OVERSIZED.

        ``now`` is the time the bytes arrived; it becomes :attr:`started_at` when they begin
        a line.
        """
        if (
            data
            and not self._buf
            and not self._discarding
            and data.find(b"\n") == len(data) - 1
            and len(data) <= self.max_line + 1
        ):
            return [data[:-1]]  # the common case: exactly one whole line, nothing held
        return list(self._feed(data, now))

    def _feed(self, data: bytes, now: float) -> Iterator[bytes | Oversized]:
        start = 0
        while True:
            nl = data.find(b"\n", start)
            if nl < 0:
                rest = data[start:]
                if rest and self.started_at is None:
                    self.started_at = now
                if self._discarding:
                    return
                if len(self._buf) + len(rest) > self.max_line:
                    self._buf.clear()
                    self._discarding = True
                else:
                    self._buf += rest
                return
            piece = data[start:nl]
            start = nl + 1
            self.started_at = None
            if self._discarding or len(self._buf) + len(piece) > self.max_line:
                self._buf.clear()
                self._discarding = False
                yield OVERSIZED
                continue
            self._buf += piece
            line = bytes(self._buf)
            self._buf.clear()
            yield line
