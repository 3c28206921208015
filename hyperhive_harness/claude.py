"""Running one ``claude`` process for one turn (the trio shell around :mod:`turns`).

claude starts in its own session (process group), stdin ``/dev/null``, stdout and stderr
read line by line and handed to callbacks as they come. ``TurnControl.cancel()`` sends it
SIGINT (claude then stops the request and exits); if it has not exited after the grace
period, its whole process group (claude and the MCP server it started) is killed.

The pid and start time of the running claude are kept in a small file in the state dir, so
a harness that was killed (``kill -9``) and restarted ends the orphaned claude of the
previous life before it turns the same message again.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import attrs
import trio

LineCallback = Callable[[str], None]


class LineSplitter:
    """Bytes in, complete lines out (decoded, newline dropped); ``finish`` flushes the rest."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes | bytearray) -> list[str]:
        self._buf += data
        if b"\n" not in data:
            return []
        *lines, rest = bytes(self._buf).split(b"\n")
        self._buf = bytearray(rest)
        return [line.decode("utf-8", "replace").rstrip("\r") for line in lines]

    def finish(self) -> list[str]:
        rest, self._buf = bytes(self._buf), bytearray()
        return [rest.decode("utf-8", "replace").rstrip("\r")] if rest.strip() else []


@attrs.define
class TurnControl:
    """The handle on the running turn that the UI's cancel button uses."""

    process: trio.Process | None = None
    cancelled: trio.Event = attrs.field(factory=trio.Event)

    def cancel(self) -> bool:
        """SIGINT the running claude; False when no claude runs."""
        proc = self.process
        if proc is None or proc.returncode is not None:
            return False
        self.cancelled.set()
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)
        return True


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def record_pid(pid_file: Path, pid: int) -> None:
    start = _start_time(pid)
    if start is None:
        return
    with contextlib.suppress(OSError):
        pid_file.write_text(f"{pid} {start}\n")


def clear_pid(pid_file: Path) -> None:
    with contextlib.suppress(OSError):
        pid_file.unlink()


def kill_orphan(pid_file: Path) -> int | None:
    """Kill the process group of a claude left by a previous harness; its pid, if any."""
    try:
        pid_text, start = pid_file.read_text().split()
        pid = int(pid_text)
    except (OSError, ValueError):
        clear_pid(pid_file)
        return None
    killed = None
    if pid > 1 and _start_time(pid) == start:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
            killed = pid
    clear_pid(pid_file)
    return killed


def _kill_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def _pump(stream: trio.abc.ReceiveStream, callback: LineCallback) -> None:
    splitter = LineSplitter()
    async with stream:
        while True:
            try:
                data = await stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                break
            if not data:
                break
            for line in splitter.feed(data):
                callback(line)
    for line in splitter.finish():
        callback(line)


async def run_claude(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    on_stdout: LineCallback,
    on_stderr: LineCallback,
    control: TurnControl,
    pid_file: Path | None = None,
    cancel_grace: float = 10.0,
) -> int:
    """Run claude to the end and return its exit code (negative: killed by that signal).

    Raises ``OSError`` when it cannot be started. If the calling task is cancelled (the
    harness shuts down), claude's process group is terminated before this returns.
    """
    proc = await trio.lowlevel.open_process(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=os.fspath(cwd),
        env=dict(env),
        start_new_session=True,
    )
    control.process = proc
    if pid_file is not None:
        record_pid(pid_file, proc.pid)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_enforce_cancel_grace, proc, control, cancel_grace)
            nursery.start_soon(_end_stragglers, proc)
            async with trio.open_nursery() as pumps:
                pumps.start_soon(_pump, proc.stdout, on_stdout)
                pumps.start_soon(_pump, proc.stderr, on_stderr)
            await proc.wait()
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            if proc.returncode is None:
                _kill_group(proc.pid, signal.SIGTERM)
                with trio.move_on_after(5):
                    await proc.wait()
                _kill_group(proc.pid, signal.SIGKILL)
                await proc.wait()
            else:
                _kill_group(proc.pid, signal.SIGKILL)
            control.process = None
            if pid_file is not None:
                clear_pid(pid_file)
    assert proc.returncode is not None
    return proc.returncode


async def _end_stragglers(proc: trio.Process) -> None:
    """claude exited but something it started still holds our pipes: end its group."""
    await proc.wait()
    await trio.sleep(2)
    _kill_group(proc.pid, signal.SIGKILL)


async def _enforce_cancel_grace(proc: trio.Process, control: TurnControl, grace: float) -> None:
    """Once cancelled, give claude ``grace`` seconds to exit, then kill its group."""
    await control.cancelled.wait()
    with trio.move_on_after(grace):
        await proc.wait()
        return
    _kill_group(proc.pid, signal.SIGKILL)
