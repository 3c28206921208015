"""What ``hyperhive run`` checks before it creates or changes anything on disk.

A state or run dir the daemon cannot use, a corrupt ``broker.sqlite`` or one with a schema
newer than this hyperhive, is refused with one readable sentence (``hyperhive run`` prints
it as ``hyperhive: <reason>`` and exits 1), and the files stay exactly as they were found:
nothing is created, chmod-ed, locked, migrated or opened for writing before every check
passed.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from hyperhive.config import Paths
from hyperhive.errors import RequestRefused
from hyperhive.store import (
    BROKER_MIGRATIONS,
    check_database,
    check_pg_database,
    check_store_url,
)


def check_dir(path: Path, what: str, *, must_own: bool) -> None:
    """Refuse an existing ``path`` that is no directory, not the daemon's (``must_own``)
    or not writable. A missing one is fine (the daemon creates it)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise RequestRefused(f"{what} {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise RequestRefused(f"{what} {path} is not a directory")
    uid = os.geteuid()
    if must_own and st.st_uid != uid:
        raise RequestRefused(
            f"{what} {path} is owned by uid {st.st_uid}, not by the daemon's uid {uid}; "
            f"chown it to {uid} or point the daemon at its own directory"
        )
    if not _writable(path, st, uid):
        raise RequestRefused(f"{what} {path} is not writable by the daemon (uid {uid})")


def _writable(path: Path, st: os.stat_result, uid: int) -> bool:
    # Root passes os.access whatever the mode: a directory its owner made read-only
    # (no owner write bit) is read-only to the daemon too.
    if st.st_uid == uid and not st.st_mode & stat.S_IWUSR:
        return False
    if not os.access(path, os.W_OK | os.X_OK):
        return False
    return not os.statvfs(path).f_flag & os.ST_RDONLY


def check_state(paths: Paths, database: str | None = None) -> None:
    """Every check of the state and run dirs and of ``broker.sqlite`` (or, with
    ``database``, of the PostgreSQL store: reachable, no newer schema); writes nothing."""
    check_store_url(database)
    check_dir(paths.state_dir, "state dir", must_own=True)
    check_dir(paths.run_dir, "run dir", must_own=False)
    if database:
        check_pg_database(database, len(BROKER_MIGRATIONS))
    elif paths.state_dir.exists():
        check_database(paths.broker_db, len(BROKER_MIGRATIONS))


def make_dir(path: Path, mode: int, what: str) -> None:
    """Create ``path`` (and its parents) where missing and give it ``mode``."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, mode)
    except OSError as exc:
        raise RequestRefused(f"cannot create the {what} {path}: {exc.strerror}") from None


__all__ = ["check_dir", "check_state", "make_dir"]
