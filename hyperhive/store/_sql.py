"""What the SQL of the modules may rely on, whichever engine runs it.

The modules' ``sql_*`` functions take a connection and run statements written for sqlite,
with ``?`` placeholders. :class:`Conn` is the part of ``sqlite3.Connection`` they use; a
``sqlite3.Connection`` satisfies it as it is (the sqlite path pays nothing), and the
PostgreSQL adapter (:mod:`hyperhive.store._pg`) does too: it translates each distinct
statement once (:func:`to_pyformat`) and returns rows indexable by position and by column
name, like ``sqlite3.Row``.

The few statements that must differ ask :func:`dialect`. Everything else is written in
the common subset: ``COALESCE`` (not ``IFNULL``), ``INSERT … ON CONFLICT … DO …`` (not
``INSERT OR …``), ``INSERT … RETURNING id`` through :func:`insert_id` (PostgreSQL has no
``cursor.lastrowid``; sqlite uses it there).
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal, Protocol

Dialect = Literal["sqlite", "postgresql"]


class Row(Protocol):
    """A result row: by position (``row[0]``) and by column name (``row["id"]``)."""

    def __getitem__(self, key: int | str, /) -> Any: ...
    def keys(self) -> list[str]: ...


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


class Conn(Protocol):
    """The part of ``sqlite3.Connection`` the modules' SQL functions use."""

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Cursor: ...
    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Cursor: ...


def dialect(conn: object) -> Dialect:
    """The engine behind ``conn``: ``"sqlite"`` or ``"postgresql"``."""
    if isinstance(conn, sqlite3.Connection):
        return "sqlite"
    found: Dialect = getattr(conn, "dialect", "sqlite")
    return found


def insert_id(conn: Conn, sql: str, parameters: Sequence[Any] = ()) -> int:
    """Run ``INSERT … RETURNING id`` and return the new row's id.

    On sqlite the statement runs without its ``RETURNING`` clause and the id is the
    cursor's ``lastrowid``: the same id, a third cheaper than stepping a returned row (a
    message's insert is on the broker's hot path). Elsewhere the returned row is read to
    its end, so the statement is reset before the savepoint is released.
    """
    plain = _without_returning(sql)  # on every engine: a statement without it is refused
    if type(conn) is sqlite3.Connection:
        row_id = conn.execute(plain, parameters).lastrowid
        assert row_id is not None  # an INSERT always sets it
        return row_id
    rows = conn.execute(sql, parameters).fetchall()
    return int(rows[0][0])


@functools.lru_cache(maxsize=128)
def _without_returning(sql: str) -> str:
    head, clause, tail = sql.rpartition(" RETURNING id")
    if not clause or tail.strip():
        raise ValueError(f"insert_id needs a statement ending in RETURNING id: {sql!r}")
    return head


@functools.lru_cache(maxsize=1024)
def to_pyformat(sql: str) -> str:
    """``?`` placeholders as ``%s`` and a literal ``%`` as ``%%`` (psycopg's format),
    leaving string literals, quoted identifiers and comments alone."""
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch in "'\"":
            end = i + 1
            while end < n:
                if sql[end] == ch:
                    if end + 1 < n and sql[end + 1] == ch:  # doubled quote inside
                        end += 2
                        continue
                    break
                end += 1
            out.append(sql[i : end + 1].replace("%", "%%"))
            i = end + 1
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            end = n if end < 0 else end
            out.append(sql[i:end].replace("%", "%%"))
            i = end
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            end = n if end < 0 else end + 2
            out.append(sql[i:end].replace("%", "%%"))
            i = end
        elif ch == "?":
            out.append("%s")
            i += 1
        elif ch == "%":
            out.append("%%")
            i += 1
        else:
            out.append(ch)
            i += 1
    return "".join(out)


__all__ = ["Conn", "Cursor", "Dialect", "Row", "dialect", "insert_id", "to_pyformat"]
