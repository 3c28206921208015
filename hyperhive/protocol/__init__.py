"""Wire protocol of the host, manager and agent sockets: types, codec, framing, schema.

No I/O lives here; the socket servers and clients feed bytes in and take bytes out.
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

__all__ = [
    "AGENT_TABLE",
    "CONVERTER",
    "HOST_TABLE",
    "MANAGER_TABLE",
    "OVERSIZED",
    "REPLIES",
    "LineBuffer",
    "Oversized",
    "Reply",
    "Request",
    "RequestTable",
    "encode_error",
    "encode_reply",
    "encode_request",
    "json_schema",
    "structure",
]
