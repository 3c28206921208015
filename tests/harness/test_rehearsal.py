"""``hyperhive rehearse --auto``: the whole story with the real daemon, agents and claude."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from pathlib import Path

import trio

from hyperhive.rehearsal import script


def _leftovers() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("hh-rehearse-*")}


async def test_rehearse_auto_plays_the_whole_story(claude_bin: Path) -> None:
    before = _leftovers()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HYPERHIVE_", "ANTHROPIC_", "CLAUDE"))
    }
    env["PYTHONUNBUFFERED"] = "1"
    done = await trio.run_process(
        [sys.executable, "-m", "hyperhive", "rehearse", "--auto", "--claude", str(claude_bin)],
        env=env,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    out, err = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 0, out + err
    assert "dashboard: http://127.0.0.1:" in out
    # Each step of the story, seen through host.sock, in order.
    steps = [
        f"operator -> manager: {script.KICKOFF}",
        f"The manager asks to spawn {script.NEW_AGENT!r}",
        "--auto: approving it",
        f"{script.NEW_AGENT} -> operator: {script.HELLO}",
        f"asks (question #1): {script.QUESTION}",
        f"--auto: answering {script.OPTIONS[0]!r}",
        f"{script.NEW_AGENT} -> operator: {script.REPLY_PREFIX} {script.OPTIONS[0]}.",
        "The story is over",
    ]
    positions = [out.find(step) for step in steps]
    assert -1 not in positions and positions == sorted(positions), out
    # Everything stopped (no process names its dirs) and its temporary dirs are gone.
    match = re.search(r"--run-dir (/\S+)/run", out)
    assert match, out
    root = match.group(1).encode()
    assert "Stopping the rehearsal's daemon" in out
    assert _leftovers() == before
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            assert root not in cmdline.read_bytes(), cmdline
