"""Bounded disk: agents' logs rotated while they run, and what the state dir holds.

A payload writes its output straight into its log file (it keeps running when the daemon
restarts, so nothing of the daemon's may stand in the way). To bound that file while it is
written, :func:`rotate_log` copies the newest ``cap`` bytes to ``<log>.1`` (older
generations move up to ``<log>.<keep>``, beyond that they go) and truncates the file in
place; the payload's descriptor is ``O_APPEND``, so its next write lands at the new end.
What is written between the copy and the truncation is lost (logrotate's ``copytruncate``
makes the same trade); nothing else is. Each generation holds at most ``cap`` bytes.

:func:`tree_bytes` is ``du``: the space the files of a tree take, symlinks not followed,
other file systems not entered, stopping after a bounded number of entries (an agent can
make a tree of millions of empty files).
"""

from __future__ import annotations

import errno
import os
import sqlite3
import stat
from pathlib import Path
from typing import Final

import attrs

#: Most free pages one :func:`reclaim_pages` returns in one go (~70 µs each: 8 MiB of
#: 4 KiB pages in about 0.15 s, so a writer is held only that long).
RECLAIM_PAGES_PER_PASS: Final = 2048
#: Most directory entries one :func:`tree_bytes` looks at.
MAX_TREE_ENTRIES: Final = 1_000_000
_COPY_CHUNK: Final = 1024 * 1024


@attrs.frozen
class Reclaimed:
    """What a retention pass did: rows deleted, and bytes given back to the file system."""

    deleted: int = 0
    freed: int = 0

    def __add__(self, other: Reclaimed) -> Reclaimed:
        return Reclaimed(self.deleted + other.deleted, self.freed + other.freed)


@attrs.frozen
class DiskUsage:
    """Bytes the state dir takes, and each agent's part of it (its dir and proposed repo)."""

    total: int = 0
    agents: dict[str, int] = attrs.Factory(dict)


@attrs.frozen
class LogPolicy:
    """How big a log may grow before it is rotated, and how many older ones are kept."""

    cap_bytes: int
    keep: int

    def __attrs_post_init__(self) -> None:
        if self.cap_bytes < 1:
            raise ValueError("the log cap must be at least one byte")
        if self.keep < 0:
            raise ValueError("the number of kept logs cannot be negative")


def generation(log_file: Path, n: int) -> Path:
    """``<log>.<n>``: the n-th older log (1 is the newest of them)."""
    return log_file.with_name(f"{log_file.name}.{n}")


def needs_rotation(size: int, policy: LogPolicy) -> bool:
    return size > policy.cap_bytes


def rotate_log(log_file: Path, policy: LogPolicy) -> bool:
    """Rotate ``log_file`` when it is over the cap (blocking); True when it was.

    Safe while a payload appends to it (see the module docstring), and at a start. A
    symlink or anything but a regular file is left alone.
    """
    try:
        st = os.lstat(log_file)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(st.st_mode) or not needs_rotation(st.st_size, policy):
        return False
    src = os.open(log_file, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if policy.keep:
            _shift_generations(log_file, policy.keep)
            _copy_tail(src, generation(log_file, 1), policy.cap_bytes)
        os.ftruncate(src, 0)
    finally:
        os.close(src)
    return True


def _shift_generations(log_file: Path, keep: int) -> None:
    for n in range(keep, 0, -1):
        older = generation(log_file, n)
        try:
            if n == keep:
                older.unlink()
            else:
                older.replace(generation(log_file, n + 1))
        except FileNotFoundError:
            pass


def _copy_tail(src: int, dest: Path, limit: int) -> None:
    """The last ``limit`` bytes of ``src`` into a new file ``dest``."""
    size = os.fstat(src).st_size
    offset = max(0, size - limit)
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
    try:
        while offset < size:
            chunk = os.pread(src, min(_COPY_CHUNK, size - offset), offset)
            if not chunk:
                break
            os.write(fd, chunk)
            offset += len(chunk)
    finally:
        os.close(fd)


def tree_bytes(root: Path, *, max_entries: int = MAX_TREE_ENTRIES) -> int:
    """Bytes the files under ``root`` take on disk (blocking; 0 when it does not exist)."""
    try:
        top = os.lstat(root)
    except FileNotFoundError:
        return 0
    if not stat.S_ISDIR(top.st_mode):
        return top.st_blocks * 512
    total = top.st_blocks * 512
    seen = 0
    stack = [root]
    while stack and seen < max_entries:
        directory = stack.pop()
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    seen += 1
                    if seen >= max_entries:
                        break
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    total += st.st_blocks * 512
                    if stat.S_ISDIR(st.st_mode) and st.st_dev == top.st_dev:
                        stack.append(Path(entry.path))
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.EACCES):
                raise
    return total


def reclaim_pages(conn: object, max_pages: int = RECLAIM_PAGES_PER_PASS) -> int:
    """Give up to ``max_pages`` free pages of an ``auto_vacuum = INCREMENTAL`` database back
    to the file system (it shrinks at the next checkpoint); the bytes given back.

    Python's sqlite3 steps ``PRAGMA incremental_vacuum`` once per ``execute`` and sqlite frees
    one page per step, so it is run once per page (``executescript`` would step it to the
    end, but commits the caller's transaction first).

    ``conn`` is any store connection (this module sits below :mod:`hyperhive.store`): on
    PostgreSQL (anything but sqlite's) it gives nothing back: the server's autovacuum
    reclaims dead rows itself.
    """
    if not isinstance(conn, sqlite3.Connection):
        return 0
    free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
    for _ in range(min(free, max_pages)):
        conn.execute("PRAGMA incremental_vacuum").close()
    left = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
    return (free - left) * int(conn.execute("PRAGMA page_size").fetchone()[0])
