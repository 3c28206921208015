"""Infrastructure shared by the daemon and the harness, with no knowledge of either.

- :mod:`~hyperhive.runtime.backoff` — :class:`Backoff`, the one retry/restart delay policy.
- :mod:`~hyperhive.runtime.exceptions` — :func:`innermost`, :func:`describe`: task groups
  unwrapped for a readable reason.
- :mod:`~hyperhive.runtime.supervise` — :func:`supervise`: run a part as its own failure
  domain, restarted with backoff.
- :mod:`~hyperhive.runtime.asgi` — :func:`serve_asgi`: an ASGI app on hypercorn-trio as a
  supervised part.
- :mod:`~hyperhive.runtime.gather` — :func:`gather`: awaitables at once (reads that share one
  batch of the sqlite writer).
- :mod:`~hyperhive.runtime.sse` — :func:`event_stream_response`: the one Server-Sent Events
  response (frame format, heartbeats, subscription dropped when the client leaves).
- :mod:`~hyperhive.runtime.send` — :func:`send_now`: a line written to a socket stream
  without a trip through the scheduler when the socket takes it whole (the daemon's
  replies, the client's requests).

The sqlite writer both use is :class:`hyperhive.store.Database`, the socket client
:class:`hyperhive.client.Client`.
"""

from hyperhive.runtime.backoff import Backoff, Retry
from hyperhive.runtime.exceptions import describe, find, innermost
from hyperhive.runtime.gather import gather
from hyperhive.runtime.supervise import Report, supervise

__all__ = ["Backoff", "Report", "Retry", "describe", "find", "gather", "innermost", "supervise"]
