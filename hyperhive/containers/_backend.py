"""The container backend seam: what every backend does, and the handle of a running agent.

A backend turns an :class:`AgentSpec` into a running payload (the harness) that outlives
the daemon: it runs in its own session, is recorded as pid + start time, and is waited on
through a pidfd. The daemon never polls for exits. ``start`` returns what it started
(:class:`Started`: the handle and any warning); ``adopt`` re-attaches to a payload an
earlier daemon started. The runner sees a :class:`PayloadHandle` only, so an in-memory
backend (:class:`~hyperhive.containers.FakeBackend`) stands in for the real ones in tests.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Final, Protocol

import attrs
import trio

from hyperhive.config import (
    DEFAULT_CPU_QUOTA,
    DEFAULT_MEMORY_MAX,
    STOP_GRACE_SECONDS,
)
from hyperhive.disk import LogPolicy, rotate_log
from hyperhive.errors import RequestRefused

#: Most bytes a tail reads from the end of a log: the agent writes it, and a log of one
#: endless line must not be read whole; the reply fits a protocol line even escaped.
MAX_TAIL_BYTES: Final = 128 * 1024


@attrs.frozen
class AgentSpec:
    """Everything a backend needs to start one agent's payload."""

    name: str
    role: str
    socket_dir: Path  # host side of /run/hive
    state_dir: Path  # host side of /state
    claude_dir: Path  # host side of /root/.claude
    log_file: Path
    command: tuple[str, ...]
    env: dict[str, str] = attrs.Factory(dict)
    cpu_quota: str = DEFAULT_CPU_QUOTA
    memory_max: str = DEFAULT_MEMORY_MAX
    #: The manager's only: host side of /agents (every agent's proposed config repo).
    agents_dir: Path | None = None


@attrs.frozen
class RunRecord:
    """What is persisted about a running payload, to re-adopt it after a daemon restart."""

    pid: int
    start_ticks: int
    started_at: float


class PayloadHandle(Protocol):
    """What the runner needs of a running payload (the real :class:`Handle`, or a fake)."""

    record: RunRecord
    #: The exit status once it exited (None when unknown: not our child).
    exit_status: int | None

    @property
    def pid(self) -> int: ...

    async def wait(self) -> int | None: ...

    async def stop(self, grace: float = STOP_GRACE_SECONDS) -> int | None: ...

    def close(self) -> None: ...


@attrs.frozen
class Started:
    """What :meth:`Backend.start` started: the payload, and why limits are not enforced."""

    handle: PayloadHandle
    #: Shown to the operator on the agent (e.g. no writable cgroup hierarchy), or None.
    warning: str | None = None


class Handle:
    """A running payload: its pid and a pidfd to wait on."""

    def __init__(self, record: RunRecord, pidfd: int, *, child: bool) -> None:
        self.record = record
        self.pidfd = pidfd
        #: True when this daemon spawned it (so it can reap it and read its exit status).
        self.child = child
        self.exit_status: int | None = None
        self._exited = False

    @property
    def pid(self) -> int:
        return self.record.pid

    async def wait(self) -> int | None:
        """Wait for the payload to exit; its status (None when not our child). Cancellable."""
        if not self._exited:
            await trio.lowlevel.wait_readable(self.pidfd)
            self._exited = True
            if self.child:
                try:
                    # The pidfd said it exited: this reaps at once, it does not block.
                    _, status = os.waitpid(self.pid, os.WNOHANG)  # noqa: ASYNC222
                    self.exit_status = os.waitstatus_to_exitcode(status)
                except ChildProcessError:
                    self.exit_status = None
            self.close()
        return self.exit_status

    def signal_group(self, signum: int) -> None:
        try:
            os.killpg(self.pid, signum)
        except ProcessLookupError:
            pass
        except PermissionError:
            os.kill(self.pid, signum)

    async def stop(self, grace: float = STOP_GRACE_SECONDS) -> int | None:
        """SIGTERM the payload's process group, SIGKILL after ``grace``; its exit status."""
        self.signal_group(signal.SIGTERM)
        with trio.move_on_after(grace) as scope:
            return await self.wait()
        if scope.cancelled_caught:
            self.signal_group(signal.SIGKILL)
        return await self.wait()

    def close(self) -> None:
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1


def start_ticks(pid: int) -> int | None:
    """The process start time in clock ticks since boot (field 22 of /proc/<pid>/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def adopt(record: RunRecord) -> Handle | None:
    """Re-attach to a payload started by an earlier daemon, if it is still that process."""
    if start_ticks(record.pid) != record.start_ticks:
        return None  # gone, or the pid now belongs to someone else
    try:
        pidfd = os.pidfd_open(record.pid)
    except ProcessLookupError:
        return None
    if start_ticks(record.pid) != record.start_ticks:
        os.close(pidfd)
        return None
    child = True
    try:
        # Ours if it is still our child (the daemon did not restart in between).
        os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        child = False
    return Handle(record, pidfd, child=child)


async def adopt_detached(record: RunRecord) -> Handle | None:
    """:func:`adopt` off the event loop (it reads /proc): the real backends' ``adopt``."""
    return await trio.to_thread.run_sync(adopt, record)


def spawn_detached(
    argv: Sequence[str],
    *,
    env: dict[str, str],
    log_file: Path,
    log_policy: LogPolicy,
    cwd: Path,
    started_at: float,
) -> Handle:
    """Start ``argv`` in a new session with stdout+stderr appended to ``log_file`` (rotated
    first when it is over the cap; the running payload's is rotated by the daemon)."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    rotate_log(log_file, log_policy)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT  # inherited: no O_CLOEXEC
    # posix_spawn has no chdir before 3.13: a tiny shell does it, then execs the payload.
    shell = ("/bin/sh", "-c", 'cd "$0" && exec "$@"', str(cwd), *argv)
    try:
        pid = os.posix_spawn(
            shell[0],
            list(shell),
            env,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, str(log_file), flags, 0o640),
                (os.POSIX_SPAWN_DUP2, 1, 2),
            ],
            setsid=True,
        )
    except OSError as exc:
        raise RequestRefused(f"cannot start {argv[0]}: {exc}") from None
    pidfd = os.pidfd_open(pid)
    ticks = start_ticks(pid) or 0
    return Handle(RunRecord(pid, ticks, started_at), pidfd, child=True)


def tail_lines(log_file: Path, lines: int) -> list[str]:
    """The last ``lines`` lines of a log file, reading only its end (at most
    :data:`MAX_TAIL_BYTES`: the first line of a longer tail is cut)."""
    try:
        with log_file.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            block = min(size, max(4096, lines * 400), MAX_TAIL_BYTES)
            while True:
                f.seek(size - block)
                data = f.read(block)
                if data.count(b"\n") > lines or block in (size, MAX_TAIL_BYTES):
                    break
                block = min(size, block * 4, MAX_TAIL_BYTES)
    except FileNotFoundError:
        return []
    text = data.decode("utf-8", "replace").splitlines()
    return text[-lines:] if lines else []


class Backend(Protocol):
    name: str
    #: False for the process backend: the dashboard shows "no isolation".
    isolated: bool

    async def start(self, spec: AgentSpec, started_at: float) -> Started:
        """Start the payload (blocking work off the event loop); refused readably."""
        ...

    async def adopt(self, record: RunRecord) -> PayloadHandle | None:
        """Re-attach to a payload started earlier, if it is still that payload."""
        ...


__all__ = [
    "STOP_GRACE_SECONDS",
    "AgentSpec",
    "Backend",
    "Handle",
    "PayloadHandle",
    "RunRecord",
    "Started",
]
