"""The exceptions hyperhive raises, and what a caller may do about each.

    HyperhiveError
    ├── ProtocolError     a request that could not be decoded (framing, JSON, fields, types)
    ├── RequestRefused    a well-formed request the daemon will not carry out (unknown
    │                     recipient, not the question's target, name taken, ...)
    │   └── DiskFull      it needs to write, and the state dir's file system is full;
    │                     the same request succeeds once space is freed
    ├── AlreadyRunning    another daemon holds the state directory's lock
    └── ClientError       the daemon answered ``ok: false`` (raised on the client side)
        └── ConnectionLost    the daemon closed the connection (it stopped or restarted)

Each of the first two becomes ``{"ok": false, "error": str(exc)}`` on the wire and leaves the
connection usable.
"""

from __future__ import annotations


class HyperhiveError(Exception):
    """Base class of every error hyperhive raises on purpose."""


class ProtocolError(HyperhiveError):
    """A request line that could not be decoded into a request."""


class RequestRefused(HyperhiveError):
    """A valid request that the daemon refuses; the message says why."""


class DiskFull(RequestRefused):
    """A write refused for lack of space (``disk full: <what>``); reads go on working."""


class AlreadyRunning(HyperhiveError):
    """Another ``hyperhive run`` holds the lock on this state directory."""


class ClientError(HyperhiveError):
    """The daemon answered a request with ``ok: false``."""


class ConnectionLost(ClientError):
    """The daemon closed the connection before replying; reconnecting may help."""
