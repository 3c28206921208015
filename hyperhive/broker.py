"""The durable message broker: send, long-poll recv, ack, redelivery, retention.

Rules (SPEC §5) live in plain functions: :func:`resolve_recipients` decides who receives a
send, and the ``sql_*`` functions are the synchronous transactions on ``broker.sqlite``.
:class:`Broker` is the trio side: it queues those transactions, wakes parked receivers
when a send commits (no polling), and publishes ``sent``/``delivered`` events.

Every message is inserted through an :class:`Outbox` that only :meth:`Broker.transaction`
hands out: whoever writes messages in their own transaction (an approval's decision, a
question's answer, a crash report) runs it there, and the broker publishes the rows and
wakes their recipients after the commit, so no caller can forget to.

A *start notice* (:meth:`Broker.notice`: a transient message from ``system``) is handed out
before everything older in its recipient's inbox, and a new one replaces one still waiting.

Delivery is at-least-once: ``recv`` marks rows delivered (and acked unless ``ack=False``);
an unacked delivered row is handed out again, flagged ``redelivered``, after its recipient's
harness says ``hello`` again (:meth:`Broker.requeue_unacked`).

Several nodes on one store (``hyperhive.nodes``): a recipient served by another node parks
its ``recv`` there. The transaction that gives such a recipient something to take (a
message, a requeue, a message put back) also tells its node (``notify_wake``: a
notification sent if and when it commits), whose handler calls :meth:`Broker.wake`. No
notification for a local recipient, and none at all on a store no other node shares.
"""

from __future__ import annotations

import contextlib
import functools
import time
import unicodedata
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from typing import Final, TypeVar

import attrs
import trio

from hyperhive.config import (
    MAX_BODY_BYTES,
    MAX_RECENT,
    MAX_RECV_BATCH,
    MAX_RECV_WAIT_SECONDS,
    MAX_WAKE_LABEL,
)
from hyperhive.disk import Reclaimed, reclaim_pages
from hyperhive.errors import RequestRefused
from hyperhive.events import EventHub
from hyperhive.names import (
    BROADCAST,
    MANAGER,
    OPERATOR,
    RESERVED_NAMES,
    SYSTEM,
    InvalidAgentName,
    parse_agent_name,
)
from hyperhive.protocol import Message, RecentMessage
from hyperhive.protocol import event_payloads as ev
from hyperhive.store import Conn, Database, insert_id
from hyperhive.topology import subtree

BROADCAST_PREFIX: Final = "[broadcast to all agents] "
#: ``*:<name>``: a broadcast to ``<name>`` and every agent below it.
SUBTREE_BROADCAST: Final = BROADCAST + ":"


def broadcast_prefix(to: str) -> str | None:
    """The line a broadcast's body starts with (None: ``to`` is not a broadcast)."""
    if to == BROADCAST:
        return BROADCAST_PREFIX
    if to.startswith(SUBTREE_BROADCAST):
        return f"[broadcast to {to[len(SUBTREE_BROADCAST) :]}'s subtree] "
    return None


#: Inbox queries name the partial index of unacked rows: without statistics (or with stale
#: ones) sqlite may pick ``messages_recipient`` instead and walk a recipient's whole history
#: (milliseconds per ``recv`` with tens of thousands of old rows, instead of microseconds).
INBOX: Final = "INDEXED BY messages_unacked"
#: Rows a read on the event loop may count (``Database.read``); past it the writer counts.
READ_BOUND: Final = 1000
T = TypeVar("T")


@attrs.frozen
class Outgoing:
    """One row to insert: the sans-IO result of resolving a send."""

    sender: str
    recipient: str
    body: str
    in_reply_to: int | None = None
    transient: bool = False


@attrs.frozen
class SentMessage:
    id: int
    sender: str
    recipient: str
    body: str
    sent_at: float
    in_reply_to: int | None


def check_body(body: str) -> None:
    if not body.strip():
        raise RequestRefused("message body is empty")
    size = len(body.encode("utf-8", "surrogatepass"))
    if size > MAX_BODY_BYTES:
        raise RequestRefused(
            f"message body is {size} bytes, over the {MAX_BODY_BYTES}-byte limit: write large "
            "content to a file in your state directory and send its path"
        )


def check_wake_label(label: str, principals: Collection[str]) -> str:
    """A ``wake`` label is free text, but never the name of a principal.

    The label becomes the message's sender in the agent's own inbox, on the dashboard and in
    the prompt; a label such as ``operator`` or another agent's name would let an agent's own
    process pass its words off as theirs.
    """
    if not label.strip():
        raise RequestRefused("wake needs a non-empty 'from' label")
    if len(label) > MAX_WAKE_LABEL:
        raise RequestRefused(f"the wake label is longer than {MAX_WAKE_LABEL} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in label):
        raise RequestRefused("the wake label holds control characters")
    if any(_invisible(c) for c in label):
        raise RequestRefused(
            "the wake label holds invisible or formatting characters (only the plain space)"
        )
    bare = unicodedata.normalize("NFKC", label).strip().casefold()
    if _name_lookalike(bare):
        raise RequestRefused(
            f"the wake label {label!r} looks like a name but is not ASCII; describe the "
            "source instead (for example 'forge: PR #42 opened')"
        )
    if bare in RESERVED_NAMES or bare in principals:
        raise RequestRefused(
            f"the wake label {label!r} is the name of a principal; describe the source "
            "instead (for example 'forge: PR #42 opened')"
        )
    return label


#: Unicode categories a wake label may not hold: controls, formatting (zero-width, bidi
#: overrides), surrogates, private use, unassigned, line and paragraph separators.
_INVISIBLE_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def _invisible(c: str) -> bool:
    category = unicodedata.category(c)
    return category in _INVISIBLE_CATEGORIES or (category == "Zs" and c != " ")


def _name_lookalike(bare: str) -> bool:
    """One short word of letters, digits and '-' with a non-ASCII character: what a name of
    a principal (at most 9 such ASCII characters) written with homoglyphs (a Cyrillic o
    for a Latin one) would be."""
    return (
        0 < len(bare) <= 9
        and not bare.isascii()
        and all(c.isalnum() or c == "-" or unicodedata.category(c) == "Mn" for c in bare)
    )


def resolve_recipients(
    sender: str,
    to: str,
    *,
    known: Collection[str],
    live: Collection[str],
    allowed: Collection[str] | None = None,
    parents: Mapping[str, str | None] | None = None,
) -> list[str]:
    """Who receives ``sender``'s message addressed to ``to``.

    ``known`` is every agent a message may wait for (tombstones included), ``live`` the agents
    a broadcast reaches, ``allowed`` the sender's ``allowed_recipients`` (None or empty: any),
    ``parents`` the hierarchy (``hyperhive.topology``) a subtree broadcast ``*:<name>``
    follows: it reaches ``<name>`` and every live agent below it, never the sender.
    Raises :class:`RequestRefused` with the reason, so a typo never swallows a message.
    """
    restricted = bool(allowed)
    if to.startswith(SUBTREE_BROADCAST):
        root = to[len(SUBTREE_BROADCAST) :]
        if restricted:
            raise RequestRefused(
                f"{sender} may not broadcast: its allowed recipients are "
                f"{', '.join(sorted(allowed or ()))}, manager and operator"
            )
        try:
            parse_agent_name(root, allow_manager=True)
        except InvalidAgentName as exc:
            raise RequestRefused(f"unknown broadcast subtree: {exc}") from None
        if root not in live:
            raise RequestRefused(f"unknown broadcast subtree {root!r}: no live agent has that name")
        below = subtree(parents or {}, root)
        targets = sorted(name for name in live if name in below and name != sender)
        if not targets:
            raise RequestRefused(f"broadcast to {root}'s subtree reaches nobody but the sender")
        return targets
    if to == BROADCAST:
        if restricted:
            raise RequestRefused(
                f"{sender} may not broadcast: its allowed recipients are "
                f"{', '.join(sorted(allowed or ()))}, manager and operator"
            )
        targets = sorted(name for name in live if name != sender)
        if not targets:
            raise RequestRefused("broadcast reaches nobody: there are no other agents")
        return targets
    if to not in (OPERATOR, MANAGER):
        try:
            parse_agent_name(to)
        except InvalidAgentName as exc:
            raise RequestRefused(f"unknown recipient: {exc}") from None
        if to not in known:
            raise RequestRefused(
                f"unknown recipient {to!r}: no agent has that name "
                "(send to an agent, 'manager', 'operator' or '*')"
            )
    if restricted and to not in (OPERATOR, MANAGER) and to not in (allowed or ()):
        raise RequestRefused(
            f"{sender} may not send to {to}: its allowed recipients are "
            f"{', '.join(sorted(allowed or ()))}, manager and operator"
        )
    return [to]


# ---------------------------------------------------------------- transactions (sync)


def _sql_insert(conn: Conn, rows: Iterable[Outgoing], now: float) -> list[SentMessage]:
    sent = []
    for row in rows:
        new_id = insert_id(
            conn,
            "INSERT INTO messages (sender, recipient, body, sent_at, in_reply_to, transient) "
            "VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
            (row.sender, row.recipient, row.body, now, row.in_reply_to, int(row.transient)),
        )
        sent.append(SentMessage(new_id, row.sender, row.recipient, row.body, now, row.in_reply_to))
    return sent


def sql_message_exists(conn: Conn, message_id: int) -> bool:
    return conn.execute("SELECT 1 FROM messages WHERE id = ?", (message_id,)).fetchone() is not None


def sql_take(conn: Conn, recipient: str, limit: int, ack: bool, now: float) -> list[Message]:
    # Start notices first (see _sql_notice), then everything else in id order.
    rows = conn.execute(
        "SELECT id, sender, recipient, body, sent_at, in_reply_to, redelivered FROM messages "
        f"{INBOX} WHERE recipient = ? AND acked_at IS NULL AND delivered_at IS NULL "
        "ORDER BY (sender = ? AND transient = 1) DESC, id LIMIT ?",
        (recipient, SYSTEM, limit),
    ).fetchall()
    if not rows:
        return []
    ids = [r[0] for r in rows]
    marks = ",".join("?" * len(ids))
    conn.execute(
        f"UPDATE messages SET delivered_at = ?, acked_at = ? WHERE id IN ({marks})",
        (now, now if ack else None, *ids),
    )
    # The SELECT's columns are Message's fields, in order (by position: a third of the cost
    # of looking each up by name).
    return [Message(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6])) for r in rows]


def _sql_notice(conn: Conn, recipient: str, body: str, now: float) -> SentMessage:
    """Insert a start notice, dropping any earlier one its recipient has not acked yet.

    A notice is a transient row from ``system``; :func:`sql_take` hands such rows out before
    older messages, so the agent's first turn after a start is on it.
    """
    conn.execute(
        f"DELETE FROM messages {INBOX} WHERE recipient = ? AND sender = ? AND transient = 1 "
        "AND acked_at IS NULL",
        (recipient, SYSTEM),
    )
    return _sql_insert(conn, [Outgoing(SYSTEM, recipient, body, transient=True)], now)[0]


def sql_ack(conn: Conn, recipient: str, ids: list[int], now: float) -> int:
    if not ids:
        return 0
    marks = ",".join("?" * len(ids))
    # A requeued row (handed out, then put back by a harness hello) may still be acked by
    # whoever finished it: the work is done, handing it out again would repeat it.
    cur = conn.execute(
        f"UPDATE messages SET acked_at = ?, delivered_at = COALESCE(delivered_at, ?) "
        f"WHERE recipient = ? AND id IN ({marks}) AND acked_at IS NULL "
        "AND (delivered_at IS NOT NULL OR redelivered = 1)",
        (now, now, recipient, *ids),
    )
    return cur.rowcount


def sql_undeliver(conn: Conn, recipient: str, ids: list[int]) -> int:
    """Put messages handed out in a reply that never reached the client back in the inbox."""
    marks = ",".join("?" * len(ids))
    cur = conn.execute(
        f"UPDATE messages SET delivered_at = NULL, acked_at = NULL "
        f"WHERE recipient = ? AND id IN ({marks})",
        (recipient, *ids),
    )
    return cur.rowcount


def sql_drop_inbox(conn: Conn, recipient: str) -> int:
    """Delete every message to ``recipient`` not acked yet (its agent is purged: they can
    never be delivered, and an agent made later with its name must not get them)."""
    cur = conn.execute(
        f"DELETE FROM messages {INBOX} WHERE recipient = ? AND acked_at IS NULL", (recipient,)
    )
    return cur.rowcount


def sql_requeue(conn: Conn, recipient: str) -> int:
    cur = conn.execute(
        f"UPDATE messages {INBOX} SET delivered_at = NULL, redelivered = 1 "
        "WHERE recipient = ? AND delivered_at IS NOT NULL AND acked_at IS NULL",
        (recipient,),
    )
    return cur.rowcount


def sql_unread(conn: Conn, recipient: str, at_most: int | None = None) -> int:
    """``recipient``'s unread count (counting stops at ``at_most``, when given)."""
    if at_most is not None:
        row = conn.execute(
            f"SELECT COUNT(*) FROM (SELECT 1 FROM messages {INBOX} WHERE recipient = ? "
            "AND acked_at IS NULL AND delivered_at IS NULL LIMIT ?) AS unread",
            (recipient, at_most),
        ).fetchone()
        return int(row[0])
    row = conn.execute(
        f"SELECT COUNT(*) FROM messages {INBOX} WHERE recipient = ? AND acked_at IS NULL "
        "AND delivered_at IS NULL",
        (recipient,),
    ).fetchone()
    return int(row[0])


def sql_waiting(conn: Conn, recipient: str) -> bool:
    """Whether :func:`sql_take` would hand ``recipient`` anything (one index probe)."""
    row = conn.execute(
        f"SELECT EXISTS (SELECT 1 FROM messages {INBOX} WHERE recipient = ? "
        "AND acked_at IS NULL AND delivered_at IS NULL)",
        (recipient,),
    ).fetchone()
    return bool(row[0])


def sql_unread_by_recipient(conn: Conn) -> dict[str, int]:
    rows = conn.execute(
        f"SELECT recipient, COUNT(*) FROM messages {INBOX} WHERE acked_at IS NULL "
        "AND delivered_at IS NULL GROUP BY recipient"
    ).fetchall()
    return {r[0]: int(r[1]) for r in rows}


def sql_messages(conn: Conn, limit: int, recipient: str | None = None) -> list[RecentMessage]:
    """The newest ``limit`` messages (to ``recipient``, or of the whole hive), oldest first."""
    where, args = ("WHERE recipient = ?", [recipient]) if recipient is not None else ("", [])
    rows = conn.execute(
        "SELECT * FROM (SELECT id, sender, recipient, body, sent_at, in_reply_to, delivered_at, "
        f"acked_at FROM messages {where} ORDER BY id DESC LIMIT ?) AS newest ORDER BY id",
        (*args, limit),
    ).fetchall()
    # The SELECT's columns are RecentMessage's fields, in order (the dashboard's snapshot
    # reads 250 of them).
    return [RecentMessage(*r) for r in rows]


def sql_vacuum(conn: Conn, acked_before: float) -> Reclaimed:
    """Delete acked rows older than the cutoff (transient ones as soon as acked), and give
    free pages back (the file shrinks at the next checkpoint; more with :func:`reclaim_pages`)."""
    cur = conn.execute(
        "DELETE FROM messages WHERE acked_at IS NOT NULL AND (acked_at < ? OR transient = 1)",
        (acked_before,),
    )
    return Reclaimed(cur.rowcount, reclaim_pages(conn))


class Outbox:
    """The messages one :meth:`Broker.transaction` inserts (sans-IO, inside the transaction).

    Only the broker makes one, and it publishes what went through it once the transaction
    has committed; a transaction that fails leaves nothing to publish.
    """

    def __init__(self, conn: Conn, now: float) -> None:
        self._conn = conn
        self.now = now
        self.sent: list[SentMessage] = []

    def insert(self, rows: Iterable[Outgoing]) -> list[SentMessage]:
        """Insert rows (already validated or written by the hive itself)."""
        sent = _sql_insert(self._conn, rows, self.now)
        self.sent += sent
        return sent

    def notice(self, recipient: str, body: str) -> SentMessage:
        """Insert a start notice (transient, from ``system``), replacing an unacked one."""
        sent = _sql_notice(self._conn, recipient, body, self.now)
        self.sent.append(sent)
        return sent


#: What runs a broker transaction's function: by default the broker's database, or another
#: transaction the rows must be part of (e.g. the registry's destroy, see Broker.transaction).
TransactionRunner = Callable[[Callable[[Conn], T]], Awaitable[T]]


# ---------------------------------------------------------------- trio side


@attrs.define(eq=False)
class _Slot:
    """One parked ``recv``: what a send may hand over to it (trio side only).

    A send to its recipient *claims* it before its transaction is queued (it leaves the
    queue of parked receivers), takes the inbox for it in that very transaction, and
    *resolves* it after the commit with what was taken (None: nothing was handed over,
    the receiver looks again). A receiver never leaves a claimed slot before it is resolved.
    """

    limit: int
    ack: bool
    done: trio.Event = attrs.field(factory=trio.Event)
    claimed: bool = False
    messages: list[Message] | None = None

    def resolve(self, messages: list[Message] | None = None) -> None:
        if not self.done.is_set():
            self.messages = messages
            self.done.set()


class Broker:
    """Sends, receives and acknowledges messages on behalf of identified callers.

    ``directory`` answers who exists: it returns ``(known, live)`` agent names.
    ``allowed_recipients`` returns a sender's allow-list (None: unrestricted).
    """

    def __init__(
        self,
        db: Database,
        events: EventHub,
        *,
        directory: Callable[[], tuple[Collection[str], Collection[str]]],
        allowed_recipients: Callable[[str], Collection[str] | None] = lambda _: None,
        paused: Callable[[str], bool] = lambda _: False,
        clock: Callable[[], float] = time.time,
        parents: Callable[[], Mapping[str, str | None]] = dict,
        remote: Callable[[str], bool] = lambda _: False,
        notify_wake: Callable[[Conn, list[str]], None] | None = None,
    ) -> None:
        self._parents = parents
        #: Whether a recipient is served by another node, and how (in the transaction) to
        #: tell the nodes of such recipients to wake them; None on a store no other node
        #: shares.
        self._remote = remote
        self._notify_wake = notify_wake
        self._db = db
        self._paused = paused
        self._events = events
        self._directory = directory
        self._allowed = allowed_recipients
        self._clock = clock
        #: Parked receivers per recipient, oldest first (none claimed by a send).
        self._slots: dict[str, deque[_Slot]] = {}
        #: Wake-ups per recipient so far: a receiver that awaited while looking compares.
        self._wakes: Counter[str] = Counter()
        self.sent_total = 0
        self._parked: Counter[str] = Counter()
        self._parked_changed = trio.Event()
        self._stopping = False

    def parked(self, recipient: str | None = None) -> int:
        """How many receivers are parked right now (for one recipient, or in all)."""
        return self._parked[recipient] if recipient else self._parked.total()

    def stop_waiting(self) -> None:
        """The daemon is stopping: every parked receiver looks once more and returns what it
        finds (usually nothing), and no receiver parks from now on."""
        self._stopping = True
        for recipient in list(self._slots):
            self._wake(recipient)

    async def wait_parked(self, recipient: str, count: int = 1, *, at_most: bool = False) -> None:
        """Return once at least (or, ``at_most``, at most) ``count`` receivers are parked."""
        while (self._parked[recipient] > count) if at_most else (self._parked[recipient] < count):
            await self._parked_changed.wait()

    def prepare(
        self, sender: str, to: str, body: str, in_reply_to: int | None = None
    ) -> list[Outgoing]:
        """Validate a send and return the rows it writes (no I/O)."""
        check_body(body)
        known, live = self._directory()
        allowed = None if sender in (OPERATOR, SYSTEM) else self._allowed(sender)
        parents = self._parents() if to.startswith(SUBTREE_BROADCAST) else None
        recipients = resolve_recipients(
            sender, to, known=known, live=live, allowed=allowed, parents=parents
        )
        text = (broadcast_prefix(to) or "") + body
        return [Outgoing(sender, r, text, in_reply_to) for r in recipients]

    async def send(
        self, sender: str, to: str, body: str, in_reply_to: int | None = None
    ) -> list[SentMessage]:
        rows = self.prepare(sender, to, body, in_reply_to)
        now = self._clock()

        def tx(conn: Conn, outbox: Outbox) -> list[SentMessage]:
            if in_reply_to is not None and not sql_message_exists(conn, in_reply_to):
                raise RequestRefused(f"in_reply_to {in_reply_to}: no such message")
            return outbox.insert(rows)

        return await self.transaction(tx, now=now, hand_over=[r.recipient for r in rows])

    async def inject(self, rows: list[Outgoing]) -> list[SentMessage]:
        """Write rows that need no recipient check (system messages, wakes)."""
        return await self.transaction(
            lambda _conn, outbox: outbox.insert(rows), hand_over=[r.recipient for r in rows]
        )

    async def notice(self, recipient: str, body: str) -> SentMessage:
        """Put a start notice in ``recipient``'s inbox, ahead of what waits there already."""
        return await self.transaction(lambda _conn, outbox: outbox.notice(recipient, body))

    async def transaction(
        self,
        fn: Callable[[Conn, Outbox], T],
        *,
        now: float | None = None,
        run: TransactionRunner[tuple[T, list[SentMessage]]] | None = None,
        hand_over: Iterable[str] = (),
    ) -> T:
        """Run ``fn(conn, outbox)`` in one transaction; after the commit, announce its messages.

        Everything ``fn`` inserts through the outbox commits with the rest of its changes or
        not at all; once committed, each message is published (``sent``) and its recipient's
        parked ``recv`` woken. ``run`` runs the transaction elsewhere than on the broker's
        database queue (a registry change the rows belong to), ``now`` is their ``sent_at``.

        ``hand_over`` names recipients ``fn`` writes to: a parked ``recv`` of each (not
        paused) is claimed now, its inbox taken for it in the same transaction (in order,
        start notices first, exactly as its own ``recv`` would) and handed to it after the
        commit, so the receiver runs no transaction of its own.
        """
        at = self._clock() if now is None else now
        if run is not None:

            def outside(conn: Conn) -> tuple[T, list[SentMessage]]:
                outbox = Outbox(conn, at)
                result = fn(conn, outbox)
                self._wake_remote(conn, (m.recipient for m in outbox.sent))
                return result, outbox.sent

            result, sent = await run(outside)
            self._committed(sent)
            return result
        claims = self._claim(hand_over)

        def tx(conn: Conn) -> tuple[T, list[SentMessage], dict[str, list[Message]]]:
            # A fresh outbox per attempt: the database may run a batch again (disk full).
            outbox = Outbox(conn, at)
            result = fn(conn, outbox)
            self._wake_remote(conn, (m.recipient for m in outbox.sent))
            handed = {r: sql_take(conn, r, slot.limit, slot.ack, at) for r, slot in claims.items()}
            return result, outbox.sent, handed

        try:
            result, sent, handed = await self._db.transaction(tx)
            for recipient, slot in claims.items():
                slot.resolve(handed[recipient] or None)
        finally:
            for slot in claims.values():
                slot.resolve()  # the transaction failed: the receiver looks again
        self._committed(sent)
        return result

    def _claim(self, recipients: Iterable[str]) -> dict[str, _Slot]:
        claims: dict[str, _Slot] = {}
        for recipient in recipients:
            slots = self._slots.get(recipient)
            if recipient in claims or not slots or self._paused(recipient):
                continue
            slot = slots.popleft()
            if not slots:
                del self._slots[recipient]
            slot.claimed = True
            claims[recipient] = slot
        return claims

    def _wake_remote(self, conn: Conn, recipients: Iterable[str]) -> None:
        """(In the transaction) tell the node of each recipient served elsewhere to wake it
        once this commits."""
        if self._notify_wake is None:
            return
        remote = sorted({r for r in recipients if self._remote(r)})
        if remote:
            self._notify_wake(conn, remote)

    def _committed(self, sent: Iterable[SentMessage]) -> None:
        """After a commit that inserted messages: publish them and wake their recipients."""
        for m in sent:
            self.sent_total += 1
            self._events.emit(
                ev.Sent(
                    id=m.id,
                    sender=m.sender,
                    recipient=m.recipient,
                    body=m.body,
                    sent_at=m.sent_at,
                    in_reply_to=m.in_reply_to,
                )
            )
            self._wake(m.recipient)

    def _waiting(self, recipient: str) -> bool:
        """Whether anything waits for ``recipient`` (a read; a take may still find nothing)."""
        if self._db.can_read:
            return self._db.read(functools.partial(sql_waiting, recipient=recipient))
        return True  # no read connection: the take itself looks

    async def recv(
        self, recipient: str, *, wait_seconds: float = 0, limit: int = 1, ack: bool = True
    ) -> list[Message]:
        if not 0 <= wait_seconds <= MAX_RECV_WAIT_SECONDS:
            raise RequestRefused(f"wait_seconds must be between 0 and {MAX_RECV_WAIT_SECONDS}")
        if not 1 <= limit <= MAX_RECV_BATCH:
            raise RequestRefused(f"max must be between 1 and {MAX_RECV_BATCH}")
        deadline = trio.current_time() + wait_seconds
        paused = self._paused(recipient)
        while True:
            # A wake-up while the look awaited (a take) means: look again instead of parking.
            wakes = self._wakes[recipient]
            # A paused recipient is handed nothing: its inbox waits, in order, unacked.
            messages = []
            if not self._paused(recipient) and self._waiting(recipient):
                messages = await self._take(recipient, limit, ack)
            if messages:
                return self._delivered(recipient, messages, ack)
            if trio.current_time() >= deadline or self._stopping:
                return []
            if self._paused(recipient) != paused:
                return []  # paused or resumed meanwhile: the receiver learns it now
            if self._wakes[recipient] != wakes:
                continue
            # Nothing committed for us is unseen: the look was a read of everything committed
            # before it, and any later commit wakes (or hands over to) the slot parked now,
            # with no checkpoint in between. A commit of another node is no different: the
            # stores' batches take turns (one advisory lock), so it committed after the look
            # began, and its wake runs on this thread (``run_sync_soon``) between checkpoints,
            # so after the ``wakes`` read above: it either moved the counter while the look
            # awaited (look again) or finds the slot parked now.
            handed = await self._park(recipient, _Slot(limit, ack), deadline)
            if handed:
                if self._paused(recipient):
                    # Paused while the hand-over was committing: it goes back, unread.
                    with trio.CancelScope(shield=True):
                        await self.undeliver(recipient, [m.id for m in handed])
                    return []
                return self._delivered(recipient, handed, ack)

    async def recv_now(self, recipient: str, *, limit: int = 1, ack: bool = True) -> list[Message]:
        """What a ``recv`` hands out when it needs no wait: the messages waiting now, or []
        (nothing waits, or ``recipient`` is paused: a ``recv`` would wait then)."""
        if not 1 <= limit <= MAX_RECV_BATCH:
            raise RequestRefused(f"max must be between 1 and {MAX_RECV_BATCH}")
        if not self._db.can_read or self._paused(recipient) or not self._waiting(recipient):
            return []  # (without a read on the loop, the recv's own look is the one take)
        messages = await self._take(recipient, limit, ack)
        return self._delivered(recipient, messages, ack) if messages else []

    async def _take(self, recipient: str, limit: int, ack: bool) -> list[Message]:
        return await self._db.transaction(
            functools.partial(
                sql_take, recipient=recipient, limit=limit, ack=ack, now=self._clock()
            ),
            durable=False,
        )

    async def _park(self, recipient: str, slot: _Slot, deadline: float) -> list[Message] | None:
        """Wait in ``slot`` until woken, handed messages, or the deadline; return what was
        handed over. Cancelled (the client hung up) with messages handed: they go back."""
        self._slots.setdefault(recipient, deque()).append(slot)
        self._count_parked(recipient, +1)
        try:
            with trio.move_on_at(deadline):
                await slot.done.wait()
        except BaseException:
            self._leave(recipient, slot)
            with trio.CancelScope(shield=True):
                if slot.claimed:
                    await slot.done.wait()  # the send's transaction is in flight: milliseconds
                if slot.messages:
                    await self.undeliver(recipient, [m.id for m in slot.messages])
            raise
        self._leave(recipient, slot)
        if slot.claimed and not slot.done.is_set():
            with trio.CancelScope(shield=True):
                await slot.done.wait()
        return slot.messages

    def _leave(self, recipient: str, slot: _Slot) -> None:
        self._count_parked(recipient, -1)
        slots = self._slots.get(recipient)
        if slots is not None and not slot.claimed:
            with contextlib.suppress(ValueError):
                slots.remove(slot)
            if not slots:
                del self._slots[recipient]

    def _delivered(self, recipient: str, messages: list[Message], ack: bool) -> list[Message]:
        for m in messages:
            self._events.emit(
                ev.Delivered(
                    id=m.id,
                    sender=m.from_,
                    recipient=recipient,
                    redelivered=m.redelivered,
                    acked=ack,
                )
            )
        return messages

    def _count_parked(self, recipient: str, delta: int) -> None:
        self._parked[recipient] += delta
        if self._parked[recipient] <= 0:
            del self._parked[recipient]
        self._parked_changed.set()
        self._parked_changed = trio.Event()

    async def ack(self, recipient: str, ids: list[int]) -> int:
        now = self._clock()
        unique = sorted(set(ids))
        return await self._db.transaction(lambda conn: sql_ack(conn, recipient, unique, now))

    async def requeue_unacked(self, recipient: str) -> int:
        """Hand delivered-but-unacked messages out again (a harness restarted)."""

        def tx(conn: Conn) -> int:
            count = sql_requeue(conn, recipient)
            if count:
                self._wake_remote(conn, (recipient,))
            return count

        count = await self._db.transaction(tx)
        if count:
            self._wake(recipient)
        return count

    async def undeliver(self, recipient: str, ids: list[int]) -> int:
        def tx(conn: Conn) -> int:
            self._wake_remote(conn, (recipient,))
            return sql_undeliver(conn, recipient, ids)

        count = await self._db.transaction(tx)
        self._wake(recipient)
        return count

    def pause_changed(self, recipient: str) -> None:
        """``recipient`` was paused or resumed: its parked receivers look again (after a
        resume they take what waits; with nothing to take they return, empty, at once).

        A recipient served by another node learns of it there: that node reads the row the
        pause changed again (``Registry.follow``) and calls this, after its copy shows the
        new state (a wake before that would look with the old one and park again)."""
        self._wake(recipient)

    def wake(self, recipient: str) -> None:
        """Another node committed something for ``recipient`` (see the module docstring):
        its parked receivers look again."""
        self._wake(recipient)

    def _wake(self, recipient: str) -> None:
        """Every receiver parked for ``recipient`` looks again (claimed ones are the send's)."""
        self._wakes[recipient] += 1
        for slot in self._slots.pop(recipient, ()):
            slot.resolve()

    async def unread(self, recipient: str) -> int:
        # Counted on the event loop up to a bound; a longer inbox is counted by the writer.
        if self._db.can_read:
            count = self._db.read(
                functools.partial(sql_unread, recipient=recipient, at_most=READ_BOUND)
            )
            if count < READ_BOUND:
                return count
        return await self._db.transaction(lambda conn: sql_unread(conn, recipient))

    async def unread_by_recipient(self) -> dict[str, int]:
        # Every inbox: not bounded, so not on the event loop.
        return await self._db.transaction(sql_unread_by_recipient)

    async def recent(self, recipient: str, limit: int) -> list[RecentMessage]:
        if not 1 <= limit <= MAX_RECENT:
            raise RequestRefused(f"limit must be between 1 and {MAX_RECENT}")
        return await self._db.transaction(lambda conn: sql_messages(conn, limit, recipient))

    async def read_view(self, recipient: str, limit: int) -> list[RecentMessage]:
        """A person reading an inbox (the operator's): the last messages, now marked read."""
        if not 1 <= limit <= MAX_RECENT:
            raise RequestRefused(f"limit must be between 1 and {MAX_RECENT}")
        now = self._clock()
        messages, fresh = await self._db.transaction(
            lambda conn: sql_read_view(conn, recipient, limit, now)
        )
        for m in fresh:
            self._events.emit(
                ev.Delivered(
                    id=m.id, sender=m.from_, recipient=recipient, redelivered=False, acked=True
                )
            )
        return messages

    async def flow(self, limit: int) -> list[RecentMessage]:
        return await self._db.transaction(lambda conn: sql_messages(conn, limit))

    async def vacuum(self, retention_seconds: float) -> Reclaimed:
        cutoff = self._clock() - retention_seconds
        done = await self._db.transaction(lambda conn: sql_vacuum(conn, cutoff), slow=True)
        self._events.emit(ev.Vacuumed(deleted=done.deleted))
        freed = done.freed
        while freed:  # the rest of the free pages, a bounded pass per transaction
            freed = await self._db.transaction(reclaim_pages, slow=True)
            done += Reclaimed(freed=freed)
        return done


def sql_read_view(
    conn: Conn, recipient: str, limit: int, now: float
) -> tuple[list[RecentMessage], list[RecentMessage]]:
    """The last ``limit`` messages of an inbox read by a person; marks them read."""
    messages = sql_messages(conn, limit, recipient)
    fresh = [m for m in messages if m.acked_at is None]
    if fresh:
        marks = ",".join("?" * len(fresh))
        conn.execute(
            f"UPDATE messages SET delivered_at = COALESCE(delivered_at, ?), acked_at = ? "
            f"WHERE id IN ({marks})",
            (now, now, *(m.id for m in fresh)),
        )
    return messages, fresh
