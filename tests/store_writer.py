"""A process that holds a store's writer and prints each id once its insert is acknowledged.

``python -m tests.store_writer <sqlite path | postgresql URL>``: 8 concurrent writers insert
rows into ``items`` (see :data:`MIGRATIONS`) as fast as the store takes them and print the
id of each row whose transaction returned. The crash test kills it with SIGKILL.
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import trio

from hyperhive.store import insert_id, open_store


def _items(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL)")


MIGRATIONS = (_items,)


async def main(target: str) -> None:
    pg = "://" in target
    async with open_store(
        target if pg else None, Path(target), synchronous="FULL", migrations=MIGRATIONS
    ) as db:

        async def writer(w: int) -> None:
            for i in range(1_000_000):
                new = await db.transaction(
                    lambda conn, i=i: insert_id(
                        conn, "INSERT INTO items (name) VALUES (?) RETURNING id", (f"{w}-{i}",)
                    )
                )
                print(new, flush=True)

        async with trio.open_nursery() as nursery:
            for w in range(8):
                nursery.start_soon(writer, w)


if __name__ == "__main__":
    trio.run(main, sys.argv[1])
