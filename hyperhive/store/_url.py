"""What selects and names a store, without its drivers: the ``--database`` URL's helpers,
:func:`open_store` and :func:`check_pg_database`.

Nothing here imports ``psycopg``: every process imports :mod:`hyperhive.store` (the harness in
each container, the CLI, a daemon on sqlite), and the driver costs start-up time and memory
that only a daemon given a PostgreSQL URL needs. The PostgreSQL engine
(:mod:`hyperhive.store._pg`) is imported by :func:`open_store` and :func:`check_pg_database`
when a PostgreSQL URL is used, and by ``hyperhive.store.PgDatabase`` /
``hyperhive.store.open_pg_database`` on first use.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

from hyperhive.store._db import Database, DatabaseUnusable, Migration, open_database

#: URL schemes that select PostgreSQL.
SCHEMES: Final = ("postgresql", "postgres")


def is_postgresql_url(database: str) -> bool:
    return urllib.parse.urlsplit(database).scheme.lower() in SCHEMES


def _password(url: str) -> str | None:
    parts = urllib.parse.urlsplit(url)
    if parts.password:
        return parts.password
    for key, value in urllib.parse.parse_qsl(parts.query):
        if key == "password" and value:
            return value
    return None


def redact_url(url: str) -> str:
    """``url`` with its password (in the user part or a ``password=`` parameter) as ``***``."""
    try:
        parts = urllib.parse.urlsplit(url)
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        in_query = any(key == "password" for key, _ in query)
        if parts.password is None and not in_query:
            return url
        netloc = parts.netloc
        if parts.password is not None:
            userinfo, _, host = netloc.rpartition("@")
            netloc = f"{userinfo.split(':', 1)[0]}:***@{host}"
        shown = f"{parts.scheme}://{netloc}{parts.path}"
        if query:
            shown += "?" + "&".join(
                f"{key}=***" if key == "password" else f"{key}={urllib.parse.quote(value)}"
                for key, value in query
            )
        return shown
    except ValueError:
        return "<unparsable database URL>"


def redact_text(text: str, url: str) -> str:
    """``text`` (an error of the driver, say) without the password of ``url`` in it."""
    password = _password(url)
    if password:
        text = text.replace(password, "***").replace(urllib.parse.quote(password), "***")
    return text


def check_store_url(database: str | None) -> None:
    """Refuse a ``--database`` that selects no engine this hyperhive has (clear, at start-up).

    ``None`` or ``""`` is the sqlite file in the state dir; a ``postgresql://`` or
    ``postgres://`` URL is PostgreSQL; anything else is refused.
    """
    if not database or is_postgresql_url(database):
        return
    # Only its scheme is shown: whatever else it holds may be a secret.
    scheme = urllib.parse.urlsplit(database).scheme
    shown = f"a {scheme}: URL" if scheme else "a value without a URL scheme"
    raise DatabaseUnusable(
        f"--database: {shown} is not a postgresql:// or postgres:// URL "
        "(leave it unset for the sqlite file in the state dir)"
    )


@asynccontextmanager
async def open_store(
    database: str | None,
    path: Path,
    *,
    synchronous: str,
    migrations: Sequence[Migration],
    reserve_bytes: int = 0,
) -> AsyncIterator[Database]:
    """The daemon's store: PostgreSQL at ``database``, or (unset) the sqlite file ``path``."""
    check_store_url(database)
    if database:
        from hyperhive.store._pg import open_pg_database

        async with open_pg_database(database, migrations=migrations) as db:
            yield db
    else:
        async with open_database(
            path, synchronous=synchronous, migrations=migrations, reserve_bytes=reserve_bytes
        ) as db:
            yield db


def check_pg_database(url: str, known_versions: int) -> None:
    """:func:`hyperhive.store._pg.check_pg_database`, importing the driver only now."""
    from hyperhive.store._pg import check_pg_database as check

    check(url, known_versions)


__all__ = [
    "SCHEMES",
    "check_pg_database",
    "check_store_url",
    "is_postgresql_url",
    "open_store",
    "redact_text",
    "redact_url",
]
