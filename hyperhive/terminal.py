"""Text from agents made safe to print on the operator's terminal (pure).

Agents write status texts, message bodies, questions, descriptions and their container's
output; the CLI prints them. A terminal obeys control characters in what it prints: an
escape sequence could rewrite the lines above (hiding a pending approval's real subject),
retitle the window or, in some terminals, set the clipboard; a bidi override shows text
in another order than it is. So every control and formatting character is shown as its
``\\x..``/``\\u....`` escape instead.
"""

from __future__ import annotations

import unicodedata
from typing import Final

#: Controls, formatting (bidi overrides, zero-width), line and paragraph separators.
_UNSAFE: Final = frozenset({"Cc", "Cf", "Zl", "Zp"})


def visible(text: str, *, keep: str = "") -> str:
    """``text`` with each unsafe character (other than those in ``keep``) escaped."""
    if text.isprintable() and text.isascii():
        return text
    return "".join(
        c if c in keep or unicodedata.category(c) not in _UNSAFE else _escape(c) for c in text
    )


def _escape(c: str) -> str:
    code = ord(c)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
