"""Unix-socket servers speaking JSON lines; the identity of a caller is the socket it used.

:func:`serve_unix_socket` binds one socket for one :class:`Principal`, and
:func:`handle_connection` runs the request/reply loop of one connection: bytes in through
the sans-IO :class:`LineBuffer`, each line decoded by the socket's request table, handed to
the dispatcher, and the reply (or ``{"ok": false, "error": …}``) written back. A request
that cannot be decoded or carried out gets its reason and the connection goes on.

One reader task per connection reads the socket the whole time it is not answering a
request itself: a request that cannot wait long is answered by the reader task as soon as it
is read (one task wake-up per request), and so is a long-poll ``recv`` that finds messages
waiting; a long-poll that has to wait and the push of a ``watch`` run in the connection's
request loop, so that the reader notices a hang-up meanwhile and queues what the client
pipelined behind it (requests are answered in order).

Each socket has a :class:`SocketBudget` (:class:`SocketLimits`): a cap on open connections
(one past it gets one error line and is closed), a bound on the request bytes held for all of
its connections, and a deadline for finishing a started line; a connection that breaks one
of the last two gets one error line and is closed. Idle connections never time out. Nothing
but cancellation escapes a connection's task: an unexpected exception is logged and ends at
most that connection, never the daemon.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import socket as stdlib_socket
import stat
from collections import deque
from collections.abc import AsyncGenerator
from enum import StrEnum
from pathlib import Path
from typing import Protocol

import attrs
import trio

from hyperhive.config import (
    LINE_DEADLINE_SECONDS,
    MAX_AGENT_CONNECTIONS,
    MAX_HOST_CONNECTIONS,
    MAX_LINE_BYTES,
    MAX_SOCKET_BUFFERED_BYTES,
    MAX_SOCKET_PATH,
    PROTOCOL_VERSION,
    WATCH_SEND_SECONDS,
)
from hyperhive.errors import ProtocolError, RequestRefused
from hyperhive.kinds import ConnectionRole
from hyperhive.protocol import (
    AGENT_TABLE,
    HOST_TABLE,
    MANAGER_TABLE,
    LineBuffer,
    Oversized,
    Reply,
    Request,
    RequestTable,
    encode_error,
    encode_reply,
)
from hyperhive.runtime.send import send_now

log = logging.getLogger(__name__)
RECEIVE_CHUNK = 64 * 1024


class SocketKind(StrEnum):
    HOST = "host"
    MANAGER = "manager"
    AGENT = "agent"


@attrs.frozen
class Principal:
    """Who is on the other end: fixed by the socket, never by a payload."""

    kind: SocketKind
    #: ``operator`` on the host socket, ``manager`` on the manager's, the agent's name otherwise.
    name: str

    @property
    def table(self) -> RequestTable:
        return _TABLES[self.kind]


_TABLES: dict[SocketKind, RequestTable] = {
    SocketKind.HOST: HOST_TABLE,
    SocketKind.MANAGER: MANAGER_TABLE,
    SocketKind.AGENT: AGENT_TABLE,
}


@attrs.define
class Connection:
    """Per-connection state the dispatcher may keep (what the client said in ``hello``)."""

    principal: Principal
    peer_pid: int | None
    role: ConnectionRole | None = None
    #: Set by a ``watch`` request: the lines pushed to this connection after its reply.
    feed: Feed | None = None


class Feed(Protocol):
    """What a watching connection pushes (:class:`hyperhive.watch.Feed`)."""

    def lines(self) -> AsyncGenerator[bytes, None]: ...

    def close(self) -> None:
        """Unsubscribe (the connection ended); called by the endpoint's ``closed``."""
        ...


class Endpoint(Protocol):
    """What a socket serves: the daemon's API, seen from one connection's loop."""

    async def dispatch(self, conn: Connection, request: Request) -> Reply: ...

    def blocks(self, request: Request) -> bool:
        """True for requests that may wait long (a long-poll): the loop watches for hang-ups."""
        ...

    async def dispatch_now(self, conn: Connection, request: Request) -> Reply | None:
        """A request that :meth:`blocks`, answered if that needs no wait (a long-poll
        ``recv`` with messages waiting); None: it would wait, the request loop takes it.
        Nothing is changed when it returns None or raises."""
        ...

    async def reply_lost(self, conn: Connection, request: Request, reply: Reply) -> None:
        """A reply was produced but never reached the client (it hung up)."""
        ...

    def closed(self, conn: Connection) -> None: ...


def _peer_pid(stream: trio.SocketStream) -> int | None:
    try:
        creds = stream.socket.getsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_PEERCRED, 12)
    except OSError:
        return None
    return int.from_bytes(creds[:4], "little")


Frame = bytes | Oversized


@attrs.frozen
class SocketLimits:
    """What one socket (one principal) may make the daemon hold; see docs/protocol.md."""

    max_connections: int
    max_buffered_bytes: int = MAX_SOCKET_BUFFERED_BYTES
    #: Seconds of waiting a client gets to finish a request line it started.
    line_deadline: float = LINE_DEADLINE_SECONDS
    max_line: int = MAX_LINE_BYTES

    @classmethod
    def for_kind(
        cls, kind: SocketKind, *, line_deadline: float = LINE_DEADLINE_SECONDS
    ) -> SocketLimits:
        cap = MAX_HOST_CONNECTIONS if kind is SocketKind.HOST else MAX_AGENT_CONNECTIONS
        return cls(max_connections=cap, line_deadline=line_deadline)


class SocketBudget:
    """Sans-IO accounting of one socket: open connections and request bytes held for them."""

    def __init__(self, limits: SocketLimits) -> None:
        self.limits = limits
        self.connections = 0
        self.buffered = 0

    def admit(self) -> bool:
        """Count a new connection in, unless the socket is at its cap."""
        if self.connections >= self.limits.max_connections:
            return False
        self.connections += 1
        return True

    def leave(self) -> None:
        self.connections -= 1

    def resize(self, old: int, new: int) -> bool:
        """One connection now holds ``new`` bytes instead of ``old``; False if over the bound."""
        if new > old and self.buffered - old + new > self.limits.max_buffered_bytes:
            return False
        self.buffered += new - old
        return True

    def statistics(self) -> dict[str, int]:
        return {"connections": self.connections, "buffered_bytes": self.buffered}


class Drain:
    """A graceful stop of the sockets that share it (hypercorn's graceful shutdown, for ours).

    :meth:`begin` closes their listeners (the socket files go) and the connections waiting
    for their next request; a connection busy with a request finishes it, sends the reply,
    and is closed then. :meth:`wait_closed` returns once no connection is left; bounding
    that wait (the grace period) is the caller's.
    """

    def __init__(self) -> None:
        self.stopping = trio.Event()
        self.connections = 0
        self._closed = trio.Event()
        #: The connections waiting for their next request: :meth:`begin` wakes them.
        self._idle: set[_Watch] = set()

    def begin(self) -> None:
        self.stopping.set()
        for watch in self._idle:
            watch.changed()

    async def wait_closed(self) -> None:
        while self.connections:
            await self._closed.wait()

    def _enter(self) -> None:
        self.connections += 1
        self._closed = trio.Event()

    def _leave(self) -> None:
        self.connections -= 1
        if not self.connections:
            self._closed.set()

    async def _wait_request(self, watch: _Watch) -> bool:
        """Wait for the connection's next frame (or its end); False once :meth:`begin` was
        called, before or during the wait: the connection is to be closed (once the reader
        task has sent the reply of a request it was answering, see :attr:`_Watch.busy`)."""
        if self.stopping.is_set():
            return False
        self._idle.add(watch)
        watch.parked = True
        try:
            await watch.wait()
        finally:
            watch.parked = False
            self._idle.discard(watch)
        if not self.stopping.is_set():
            return True
        while watch.busy:
            await watch.wait()
        return False


class _Cut(Exception):
    """The connection broke a bound: the message goes to the client, then it is closed."""


class _Reader:
    """The receive side of one connection: framing, queued lines, budget and line deadline."""

    def __init__(
        self,
        stream: trio.SocketStream,
        principal: Principal,
        budget: SocketBudget,
    ) -> None:
        #: Read directly (trio's wait for readability, then one read): the common request
        #: costs one wake-up and no more.
        self.fd = stream.socket.fileno()
        self.principal = principal
        self.budget = budget
        self.buffer = LineBuffer(budget.limits.max_line)
        self.pending: deque[Frame] = deque()
        self.pending_bytes = 0
        self.held = 0
        #: Set when a bound was broken while a request was being dispatched.
        self.cut: str | None = None
        #: The line being timed (its start) and how long we have waited for it so far.
        self._timed_line: float | None = None
        self._waited = 0.0

    def next_frame(self) -> Frame | None:
        if not self.pending:
            return None
        frame = self.pending.popleft()
        if isinstance(frame, bytes):
            self.pending_bytes -= len(frame)
            self._account()
        return frame

    async def fill(self) -> bool:
        """Receive once and frame what came; False when the client closed its side.

        Raises :class:`_Cut` when a started line misses its deadline (counted while we wait
        for it) or the socket's byte budget would be exceeded.
        """
        limits = self.budget.limits
        started = self.buffer.started_at
        if started != self._timed_line:
            self._timed_line, self._waited = started, 0.0
        # Only time spent waiting for the client counts: while the daemon is busy with
        # earlier requests (or paused reading behind a long-poll) the clock stops.
        data: bytes | None = None
        if started is None:
            data = await self._receive()  # no line started: no clock
            # The time only matters for a line left unfinished (it starts the clock).
            now = 0.0 if data.endswith(b"\n") else trio.current_time()
        else:
            left = limits.line_deadline - self._waited
            before = trio.current_time()  # trio's clock: a test may run a MockClock
            with trio.move_on_at(before + max(left, 0.0)):
                data = await self._receive()
            now = trio.current_time()
            self._waited += now - before
            if data is None or self._waited > limits.line_deadline:
                raise _Cut(
                    f"request line not finished within {limits.line_deadline:g} seconds; "
                    "closing the connection"
                )
        if not data:
            return False
        for frame in self.buffer.feed(data, now):
            self.pending.append(frame)
            if isinstance(frame, bytes):
                self.pending_bytes += len(frame)
        self._account()
        return True

    async def _receive(self) -> bytes:
        """What the client sent next (b"" once it closed its side), like ``receive_some``."""
        while True:
            await trio.lowlevel.wait_readable(self.fd)
            try:
                return os.read(self.fd, RECEIVE_CHUNK)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise trio.BrokenResourceError(f"socket connection broken: {exc}") from exc

    def _account(self) -> None:
        held = self.buffer.buffered + self.pending_bytes
        if not self.budget.resize(self.held, held):
            raise _Cut(
                f"the {self.principal.kind} socket already holds "
                f"{self.budget.limits.max_buffered_bytes} bytes of unfinished requests; "
                "closing this connection"
            )
        self.held = held

    def release(self) -> None:
        self.budget.resize(self.held, 0)
        self.held = 0


class _Edge:
    """What a fresh ``trio.Event`` per change gives (:meth:`fire` wakes the tasks waiting
    now; a later :meth:`wait` waits for the next one), without an event and its parking lot
    made for every request."""

    __slots__ = ("_waiting",)

    def __init__(self) -> None:
        self._waiting: list[trio.lowlevel.Task] = []

    def fire(self) -> None:
        waiting, self._waiting = self._waiting, []
        for task in waiting:
            trio.lowlevel.reschedule(task)

    async def wait(self) -> None:
        task = trio.lowlevel.current_task()
        self._waiting.append(task)

        def abort(_raise_cancel: object) -> trio.lowlevel.Abort:
            self._waiting.remove(task)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)


class _Watch:
    """What the reader task of a connection and its request loop tell each other (sans-IO).

    One task per connection reads the socket (framing into ``pending``, up to one line's
    worth queued). While the request loop is :attr:`parked` (waiting, nothing in hand) the
    reader answers what it read itself, up to a request that may wait long (a long-poll),
    which it leaves to the loop as :attr:`handoff`. The loop waits on :meth:`wait`; a hang-up
    or a broken bound during a long-poll cancels it through :attr:`blocking`. A long-poll so
    costs no task of its own, and a short request no task switch.
    """

    def __init__(self) -> None:
        #: The client closed its side (or the socket broke).
        self.eof = False
        #: A reply the reader task answered could not be written: nothing more is answered.
        self.hung_up = False
        #: The cancel scope of the long-poll in progress, if any.
        self.blocking: trio.CancelScope | None = None
        #: The request loop waits for the next frame with nothing in hand (and not woken yet).
        self.parked = False
        #: The reader task is answering requests itself: the loop must not end under it.
        self.busy = False
        #: A request the reader decoded and left to the loop; it comes before ``pending``.
        self.handoff: Request | None = None
        self._changed = _Edge()
        self._room = _Edge()

    def changed(self) -> None:
        """A frame came, the client hung up, a bound was broken, or the reader left work."""
        self.parked = False
        self._changed.fire()

    async def wait(self) -> None:
        await self._changed.wait()

    def took(self) -> None:
        """The loop took a frame: a reader paused behind a full queue may go on."""
        self._room.fire()

    async def wait_room(self) -> None:
        await self._room.wait()

    def ended(self) -> None:
        """No more frames will come: wake the loop and end a long-poll in progress."""
        self.changed()
        if self.blocking is not None:
            self.blocking.cancel()


@attrs.define
class _Loop:
    """One connection's parts, as both of its tasks use them."""

    conn: Connection
    reader: _Reader
    watch: _Watch
    endpoint: Endpoint
    stream: trio.SocketStream
    drain: Drain
    #: An unexpected exception of the reader task, re-raised by :func:`handle_connection`.
    failure: Exception | None = None


async def _read_forever(loop: _Loop) -> None:
    """The reader task: frame what the client sends until it hangs up or breaks a bound,
    answering it at once while the request loop is idle."""
    reader, watch = loop.reader, loop.watch
    try:
        while True:
            while reader.pending_bytes >= reader.buffer.max_line:
                await watch.wait_room()  # enough queued: leave the rest in the kernel
            if not await reader.fill():
                watch.eof = True
                break
            if watch.parked and not loop.drain.stopping.is_set():
                if not await _answer_inline(loop):
                    watch.eof = watch.hung_up = True  # the client went before its reply
                    break
                if not (
                    reader.pending
                    or watch.handoff is not None
                    or loop.conn.feed is not None
                    or loop.drain.stopping.is_set()
                ):
                    continue  # all answered: the loop sleeps on
            watch.changed()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        watch.eof = True
    except _Cut as cut:
        reader.cut = str(cut)
        reader.release()  # now: the socket's other connections may use its bytes
    except Exception as exc:  # handle_connection logs it and ends the connection
        loop.failure = exc
        watch.eof = True
    watch.ended()


async def _answer_inline(loop: _Loop) -> bool:
    """Answer the queued frames in the reader task while the request loop is parked, up to
    one that may wait long (left to the loop) or a ``watch`` (its feed is the loop's);
    False when the client hung up. Like the loop, it answers what was read before a drain
    began; the loop then closes the connection."""
    reader, watch, conn = loop.reader, loop.watch, loop.conn
    watch.busy = True
    try:
        while conn.feed is None:
            frame = reader.next_frame()
            if frame is None:
                break
            work = _work(conn, frame, reader)
            if not isinstance(work, bytes) and loop.endpoint.blocks(work):
                done = await _answer_now(loop, work)
                if done is None:
                    watch.handoff = work
                    break
                if not done:
                    return False
                continue
            if not await _carry_out(loop, work):
                return False
    finally:
        watch.busy = False
    return True


async def _answer_now(loop: _Loop, request: Request) -> bool | None:
    """A long-poll answered by the reader task when it needs no wait (a ``recv`` with
    messages waiting: no hand-over to the request loop, no watch for a hang-up); None when
    it would wait (the loop takes it, and says what went wrong if it fails there); else
    False when the client hung up."""
    try:
        reply = await loop.endpoint.dispatch_now(loop.conn, request)
    except Exception:
        return None
    if reply is None:
        return None
    return await _send_reply(
        loop, request, reply, encode_reply(reply, protocol=_envelope(loop.conn))
    )


async def handle_connection(
    stream: trio.SocketStream,
    principal: Principal,
    endpoint: Endpoint,
    *,
    budget: SocketBudget | None = None,
    drain: Drain | None = None,
) -> None:
    """Serve one connection until the client closes it or breaks a bound (or ``drain``
    stops it between requests).

    Nothing but cancellation escapes: an unexpected exception is logged with its traceback,
    answered ``internal error`` and ends this connection only.
    """
    if budget is None:
        budget = SocketBudget(SocketLimits.for_kind(principal.kind))
    conn = Connection(principal, _peer_pid(stream))
    reader = _Reader(stream, principal, budget)
    loop = _Loop(conn, reader, _Watch(), endpoint, stream, drain or Drain())
    try:
        failure: Exception | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_read_forever, loop)
            try:
                await _serve(loop)
            except Exception as exc:  # re-raised below, outside the task group
                failure = exc
            nursery.cancel_scope.cancel()
        failure = failure or loop.failure
        if failure is not None:
            raise failure
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    except _Cut as cut:
        reader.release()  # before the await: the socket's other connections may use it now
        await _say_last(stream, str(cut), _envelope(conn))
    except Exception:
        reader.release()
        log.exception("internal error on a %s socket connection; closing it", principal.kind)
        await _say_last(stream, "internal error; closing the connection", _envelope(conn))
    finally:
        reader.release()
        try:
            endpoint.closed(conn)
        except Exception:
            log.exception("internal error while closing a %s socket connection", principal.kind)
        with trio.CancelScope(shield=True):
            await stream.aclose()


async def _say_last(stream: trio.SocketStream, reason: str, protocol: int | None = None) -> None:
    """Best effort: one error line to a client about to be disconnected."""
    with (
        trio.move_on_after(1),
        contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError),
    ):
        await stream.send_all(encode_error(reason, protocol=protocol))


async def _serve(loop: _Loop) -> None:
    """The request loop: what the reader task leaves to it (a long-poll, and the frames
    queued behind one), a ``watch``'s push, and the end of the connection."""
    conn, reader, watch = loop.conn, loop.reader, loop.watch
    while not watch.hung_up:
        if conn.feed is not None:
            await _follow(conn.feed.lines(), reader, watch, loop.stream, loop.drain)
            return
        work: Request | bytes | None = watch.handoff
        if work is not None:
            watch.handoff = None
        else:
            frame = reader.next_frame()
            if frame is None:
                if reader.cut is not None:
                    raise _Cut(reader.cut)
                if watch.eof:
                    return
                if not await loop.drain._wait_request(watch):
                    return
                continue
            watch.took()
            work = _work(conn, frame, reader)
        if not await _carry_out(loop, work):
            return
        if reader.cut is not None:
            raise _Cut(reader.cut)


def _work(conn: Connection, frame: Frame, reader: _Reader) -> Request | bytes:
    """A frame's request, or the error line that answers it (too long, not decodable)."""
    if not isinstance(frame, bytes):
        return encode_error(
            f"request line longer than {reader.buffer.max_line} bytes; it was discarded",
            protocol=_envelope(conn),
        )
    try:
        return _TABLES[conn.principal.kind].decode(frame)
    except ProtocolError as exc:
        return encode_error(str(exc), protocol=_envelope(conn))
    except Exception as exc:
        return _internal_error(conn, exc)


async def _carry_out(loop: _Loop, work: Request | bytes) -> bool:
    """Answer one request (or send its error line); False when the client hung up."""
    request: Request | None = None
    reply: Reply | None = None
    if isinstance(work, bytes):
        wire = work
    else:
        request = work
        reply, wire, hung_up = await _answer(
            loop.conn, request, loop.endpoint, loop.watch, loop.reader
        )
        if hung_up:
            if reply is not None:
                with trio.CancelScope(shield=True):
                    await loop.endpoint.reply_lost(loop.conn, request, reply)
            return False
    return await _send_reply(loop, request, reply, wire)


async def _send_reply(
    loop: _Loop, request: Request | None, reply: Reply | None, wire: bytes
) -> bool:
    """Send ``wire`` (the reply to ``request``, or an error line); False when the client
    hung up (the reply is then lost: the endpoint hears of it)."""
    try:
        await send_now(loop.stream, wire, loop.reader.fd)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        if request is not None and reply is not None:
            with trio.CancelScope(shield=True):
                await loop.endpoint.reply_lost(loop.conn, request, reply)
        return False
    return True


async def _follow(
    feed: AsyncGenerator[bytes, None],
    reader: _Reader,
    watch: _Watch,
    stream: trio.SocketStream,
    drain: Drain,
) -> None:
    """Push ``feed``'s lines to a watching connection until the feed ends, the client hangs
    up or sends anything more, a line cannot be written within ``WATCH_SEND_SECONDS``
    (the client does not read), or the daemon drains."""
    async with contextlib.aclosing(feed), trio.open_nursery() as nursery:

        async def hang_up() -> None:
            # The connection's reader task reads the socket; this waits on what it says.
            while reader.cut is None and not watch.eof:
                if reader.pending_bytes:
                    reader.cut = "a watching connection takes no further requests"
                    break
                await watch.wait()
            nursery.cancel_scope.cancel()

        async def stopping() -> None:
            await drain.stopping.wait()
            nursery.cancel_scope.cancel()

        async def push() -> None:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                async for line in feed:
                    with trio.move_on_after(WATCH_SEND_SECONDS) as timed:
                        await stream.send_all(line)
                    if timed.cancelled_caught:
                        reader.cut = f"watch dropped: a line waited {WATCH_SEND_SECONDS:g} s unread"
                        break
            nursery.cancel_scope.cancel()

        nursery.start_soon(hang_up)
        nursery.start_soon(stopping)
        nursery.start_soon(push)
    if reader.cut is not None:
        raise _Cut(reader.cut)


async def _answer(
    conn: Connection, request: Request, endpoint: Endpoint, watch: _Watch, reader: _Reader
) -> tuple[Reply | None, bytes, bool]:
    """Dispatch one request: (reply, bytes to send, client hung up)."""
    try:
        if endpoint.blocks(request):
            reply, hung_up = await _dispatch_watching(conn, request, endpoint, watch, reader)
            if reply is None:
                return None, b"", hung_up
        else:
            reply, hung_up = await endpoint.dispatch(conn, request), False
        return reply, encode_reply(reply, protocol=_envelope(conn)), hung_up
    except (ProtocolError, RequestRefused) as exc:
        return None, encode_error(str(exc), protocol=_envelope(conn)), False
    except Exception as exc:
        return None, _internal_error(conn, exc), False


def _internal_error(conn: Connection, exc: Exception) -> bytes:
    # A bug must not take the daemon down; the caller learns something went wrong.
    log.exception("internal error while handling a request on the %s socket", conn.principal.kind)
    return encode_error(f"internal error: {type(exc).__name__}: {exc}", protocol=_envelope(conn))


def _envelope(conn: Connection) -> int | None:
    """The protocol version every host-socket reply carries (None: not on this socket)."""
    return PROTOCOL_VERSION if conn.principal.kind is SocketKind.HOST else None


async def _dispatch_watching(
    conn: Connection, request: Request, endpoint: Endpoint, watch: _Watch, reader: _Reader
) -> tuple[Reply | None, bool]:
    """Dispatch a long-poll that a hang-up (or a broken bound) cancels.

    Without this a long-poll ``recv`` of a client that went away would stay parked and,
    woken by the next send, take that message for nobody. The connection's reader task
    goes on meanwhile: requests the client pipelined are queued for their turn (up to one
    line's worth; then reading pauses), and a line started meanwhile still has its deadline.
    """
    if watch.eof or reader.cut is not None:
        return None, watch.eof
    reply: Reply | None = None
    with trio.CancelScope() as scope:
        watch.blocking = scope
        try:
            reply = await endpoint.dispatch(conn, request)
        finally:
            watch.blocking = None
    if scope.cancelled_caught:
        return None, watch.eof
    return reply, False


def _socket_for(path: Path) -> trio.socket.SocketType:
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise OSError(
            errno.ENAMETOOLONG,
            f"socket path {path} is longer than {MAX_SOCKET_PATH} bytes; use a shorter run dir",
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    # Only the lock holder gets here, so a file left at the path is a stale socket.
    path.unlink(missing_ok=True)
    return trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)


def set_socket_mode(path: Path, mode: int, group: int | None = None) -> None:
    """chmod (and chgrp) the socket file just bound at ``path``, never through a symlink.

    An agent writes the directory of its socket: between ``bind`` and ``chmod`` it could put
    a symlink to a host file at the path, and a plain ``chmod`` as root would change that
    file's mode (``/usr/bin/sudo`` losing its setuid bit). So the file at the path is opened
    without following a link, must be a socket, and is changed through that very file.
    """
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise OSError(errno.EEXIST, f"{path} was replaced by something else than a socket")
        os.chmod(f"/proc/self/fd/{fd}", mode)
        if group is not None:
            os.chown(f"/proc/self/fd/{fd}", -1, group)
    finally:
        os.close(fd)


async def serve_unix_socket(
    path: Path,
    principal: Principal,
    endpoint: Endpoint,
    *,
    mode: int = 0o660,
    group: int | None = None,
    dir_mode: int | None = None,
    limits: SocketLimits | None = None,
    drain: Drain | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``path`` until cancelled, then remove the socket file.

    Once ``drain`` begins, the socket stops listening (its file goes) and each connection
    ends after the request in hand; it then waits to be cancelled.

    ``mode``/``group`` apply to the socket file, ``dir_mode`` (when given) to its directory.
    ``limits`` (default: :meth:`SocketLimits.for_kind`) cap its connections and buffered bytes;
    a connection past the cap gets one error line and is closed.
    """
    budget = SocketBudget(limits or SocketLimits.for_kind(principal.kind))
    stop = drain or Drain()
    sock = _socket_for(path)
    try:
        if dir_mode is not None:
            os.chmod(path.parent, dir_mode)
        await sock.bind(os.fspath(path))
        set_socket_mode(path, mode, group)
        sock.listen(128)
        listener = trio.SocketListener(sock)

        async def handler(stream: trio.SocketStream) -> None:
            if not budget.admit():
                await _say_last(
                    stream,
                    f"too many connections on the {principal.kind} socket (at most "
                    f"{budget.limits.max_connections}); close one and retry",
                    PROTOCOL_VERSION if principal.kind is SocketKind.HOST else None,
                )
                with trio.CancelScope(shield=True):
                    await stream.aclose()
                return
            stop._enter()
            try:
                await handle_connection(stream, principal, endpoint, budget=budget, drain=stop)
            except Exception:  # handle_connection lets nothing out; this is the last guard
                log.exception("internal error on a %s socket connection", principal.kind)
            finally:
                budget.leave()
                stop._leave()

        async with trio.open_nursery() as connections:
            async with trio.open_nursery() as accepting:
                await accepting.start(
                    functools.partial(
                        trio.serve_listeners, handler, [listener], handler_nursery=connections
                    )
                )
                task_status.started()
                await stop.stopping.wait()
                accepting.cancel_scope.cancel()
            sock.close()
            with contextlib.suppress(OSError):
                os.unlink(path)
        await trio.sleep_forever()
    finally:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(path)
