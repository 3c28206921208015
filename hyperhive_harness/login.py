"""The UI's login panel: run ``claude auth login`` under plain pipes, show its URL, pass the
pasted code to its stdin. When the command exits successfully the parked turn loop is woken
(it also notices the credentials file changing on its own).

The command is ``HYPERHIVE_LOGIN_CMD`` (split on spaces) or ``<claude> auth login``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import trio

from hyperhive_harness.claude import LineSplitter

URL_RE: Final = re.compile(r"https?://[^\s\"'<>]+")
ANSI_RE: Final = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
MAX_OUTPUT_LINES: Final = 200


def first_url(lines: Sequence[str]) -> str | None:
    """The first http(s) URL in the output (ANSI colour codes removed)."""
    for line in lines:
        match = URL_RE.search(ANSI_RE.sub("", line))
        if match:
            return match.group(0).rstrip(".,;)")
    return None


class LoginSession:
    def __init__(
        self,
        command: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path,
        on_success: Callable[[], None],
        on_note: Callable[[str], object],
    ) -> None:
        self.command = list(command)
        self.env = dict(env)
        self.cwd = cwd
        self._on_success = on_success
        self._on_note = on_note
        self._proc: trio.Process | None = None
        self.output: deque[str] = deque(maxlen=MAX_OUTPUT_LINES)
        self.running = False
        self.finished = False
        self.exit_note: str | None = None

    def state(self) -> dict[str, Any]:
        return {
            "running": self.running,
            "finished": self.finished,
            "url": first_url(list(self.output)),
            "output": [ANSI_RE.sub("", line) for line in self.output][-40:],
            "exit_note": self.exit_note,
        }

    async def start(self, nursery: trio.Nursery) -> None:
        if self.running:
            return
        self.output.clear()
        self.finished = False
        self.exit_note = None
        try:
            proc = await trio.lowlevel.open_process(
                self.command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=os.fspath(self.cwd),
                start_new_session=True,
            )
        except OSError as exc:
            self.finished = True
            self.exit_note = f"cannot start {' '.join(self.command)}: {exc}"
            self._on_note(self.exit_note)
            return
        self._proc = proc
        self.running = True
        self._on_note(f"login started: {' '.join(self.command)}")
        nursery.start_soon(self._watch, proc)

    async def _watch(self, proc: trio.Process) -> None:
        assert proc.stdout is not None
        splitter = LineSplitter()
        try:
            async with proc.stdout:
                while True:
                    try:
                        data = await proc.stdout.receive_some(65536)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        break
                    if not data:
                        break
                    self.output.extend(splitter.feed(data))
            self.output.extend(splitter.finish())
            code = await proc.wait()
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with trio.CancelScope(shield=True):
                    await proc.wait()
            self.running = False
            self.finished = True
            self._proc = None
        self.exit_note = "login finished" if code == 0 else f"login command exited with {code}"
        self._on_note(self.exit_note)
        if code == 0:
            self._on_success()

    async def send_code(self, code: str) -> bool:
        proc = self._proc
        if proc is None or proc.stdin is None:
            return False
        try:
            await proc.stdin.send_all(code.strip().encode() + b"\n")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    def cancel(self) -> bool:
        proc = self._proc
        if proc is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        return True
