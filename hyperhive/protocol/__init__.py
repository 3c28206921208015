"""Wire protocol of the host, manager and agent sockets: types, codec, framing, schema.

No I/O lives here; the socket servers and clients feed bytes in and take bytes out.
The payloads of the daemon's event stream are in :mod:`hyperhive.protocol.event_payloads`,
the messages the daemon sends as ``system`` in :mod:`hyperhive.protocol.system_messages`.
"""

from hyperhive.protocol._codec import (
    AGENT_TABLE,
    CONVERTER,
    HOST_TABLE,
    MANAGER_TABLE,
    RequestTable,
    encode_error,
    encode_reply,
    encode_request,
    structure,
)
from hyperhive.protocol._framing import OVERSIZED, LineBuffer, Oversized
from hyperhive.protocol._messages import *  # noqa: F403
from hyperhive.protocol._messages import REPLIES, Reply, Request
from hyperhive.protocol._schema import json_schema
from hyperhive.protocol.event_payloads import EVENT_PAYLOADS, EventPayload, event_data, kinds_js
from hyperhive.protocol.system_messages import SYSTEM_MESSAGES, SystemMessage, system_body

__all__ = [
    "AGENT_TABLE",
    "CONVERTER",
    "EVENT_PAYLOADS",
    "HOST_TABLE",
    "MANAGER_TABLE",
    "OVERSIZED",
    "REPLIES",
    "SYSTEM_MESSAGES",
    "EventPayload",
    "LineBuffer",
    "Oversized",
    "Reply",
    "Request",
    "RequestTable",
    "SystemMessage",
    "encode_error",
    "encode_reply",
    "encode_request",
    "event_data",
    "json_schema",
    "kinds_js",
    "structure",
    "system_body",
]
