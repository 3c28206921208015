"""Sans-IO JSON-line framing with a hard bound on buffered bytes.

:class:`LineBuffer` never holds more than ``max_line`` bytes of an unfinished line: past that
it drops the line's bytes until the next newline and then reports one :data:`OVERSIZED`
in place of the line, so the request/reply pairing on the connection is kept.
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

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> Iterator[bytes | Oversized]:
        """Add received bytes; yield each complete line (without newline) or OVERSIZED."""
        start = 0
        while True:
            nl = data.find(b"\n", start)
            if nl < 0:
                rest = data[start:]
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
            if self._discarding or len(self._buf) + len(piece) > self.max_line:
                self._buf.clear()
                self._discarding = False
                yield OVERSIZED
                continue
            self._buf += piece
            line = bytes(self._buf)
            self._buf.clear()
            yield line
