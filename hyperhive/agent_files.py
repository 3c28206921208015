"""Reading and writing files in directories an agent can write (blocking).

An agent's ``/state`` is ``<state>/agents/<name>/state`` on the host, and the daemon runs
as root there. Whatever the agent leaves under a name the daemon uses may be a symlink to
any host file, a FIFO that blocks a reader forever, or a device that never ends
(``/dev/zero``). So the daemon never follows a symlink there, never opens anything but a
regular file, reads at most a bound, and writes only to a temporary file it just created
under an unguessable name (``O_EXCL``), renamed over the target: a symlink planted at the
target is replaced, never written through.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def read_small_file(path: Path, limit: int) -> bytes | None:
    """The bytes of the regular file ``path``; None when it is absent, a symlink, anything
    but a regular file, larger than ``limit`` bytes, or unreadable."""
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            return None
        data = os.read(fd, limit + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    return data if len(data) <= limit else None


def file_key(path: Path) -> tuple[int, int, int, int] | None:
    """What identifies the current content of a regular file without reading it (``lstat``:
    inode, mtime, size, device); None when ``path`` is not a regular file."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size, st.st_dev)


def replace_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` atomically through a fresh temporary file beside it."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, _WRITE_FLAGS, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def write_under(root: Path, relative: tuple[str, ...], data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``root/<relative…>`` atomically, creating the directories between.

    Every directory is opened relative to the one before it and never through a symlink
    (``O_NOFOLLOW``: a planted symlink fails the write with ``ELOOP``/``ENOTDIR``), and the
    file is a fresh temporary one renamed over the last name, as in :func:`replace_file`.
    ``relative`` holds plain names only (no ``..``, no ``/``); the caller validated them.
    """
    if not relative or any(p in ("", ".", "..") or "/" in p or "\x00" in p for p in relative):
        raise ValueError(f"not a plain relative path: {relative!r}")
    fd = os.open(root, _DIR_FLAGS)
    try:
        for part in relative[:-1]:
            try:
                inner = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
                inner = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = inner
        name = relative[-1]
        tmp = f".{name}.{secrets.token_hex(8)}.tmp"
        out = os.open(tmp, _WRITE_FLAGS, mode, dir_fd=fd)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(out, view) :]
            finally:
                os.close(out)
            os.replace(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=fd)
            raise
    finally:
        os.close(fd)
