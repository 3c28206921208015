"""``hyperhive rehearse`` without ``--auto``: the operator follows its printed instructions.

At each decision the rehearsal waits and prints a CLI command; the operator runs exactly
that line (from a shell whose ``PATH`` does not hold the venv, as after ``make demo`` in a
fresh checkout), and the story goes on to its end.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import trio

from hyperhive.rehearsal import script
from hyperhive.rehearsal.story import hyperhive_command
from tests.conftest import require_backend


def test_the_printed_command_runs_this_hyperhive(tmp_path: Path) -> None:
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    python = str(bin_dir / "python")
    empty = str(tmp_path / "empty")
    # Nothing beside the Python and nothing on PATH: the module itself.
    assert hyperhive_command(python, path=empty) == [python, "-m", "hyperhive"]
    script_path = bin_dir / "hyperhive"
    script_path.write_text("#!/bin/sh\n")
    script_path.chmod(0o755)
    # The venv's script when PATH does not lead to it (make demo in a checkout).
    assert hyperhive_command(python, path=empty) == [str(script_path)]
    # Plain ``hyperhive`` once PATH finds that same script (an activated venv).
    assert hyperhive_command(python, path=str(bin_dir)) == ["hyperhive"]


async def test_the_operator_runs_the_printed_commands(claude_bin: Path) -> None:
    require_backend("process")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HYPERHIVE_", "ANTHROPIC_", "CLAUDE", "VIRTUAL_ENV"))
    }
    env["PYTHONUNBUFFERED"] = "1"
    # The operator's shell: the system's PATH, without the venv's bin directory.
    shell_env = {**env, "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    argv = [sys.executable, "-m", "hyperhive", "rehearse", "--backend", "process"]
    proc = await trio.lowlevel.open_process(
        [*argv, "--claude", str(claude_bin)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proc.stdout is not None
    out: list[str] = []
    ran: list[str] = []
    try:
        with trio.fail_after(300):
            buffer = b""
            waiting = False
            while chunk := await proc.stdout.receive_some(4096):
                buffer += chunk
                while b"\n" in buffer:
                    raw, buffer = buffer.split(b"\n", 1)
                    line = raw.decode()
                    out.append(line)
                    if "Your turn:" in line:
                        assert "dashboard (tab Y3R C4LL)" in line, line
                        waiting = True
                    elif waiting:
                        waiting = False
                        # Exactly the printed line, as the operator pastes it.
                        done = await trio.run_process(
                            shlex.split(line),
                            env=shell_env,
                            capture_stdout=True,
                            capture_stderr=True,
                            check=False,
                        )
                        ran.append(line.strip())
                        assert done.returncode == 0, line + done.stderr.decode()
            assert await proc.wait() == 0, "\n".join(out)
    finally:
        if proc.returncode is None:  # Ctrl-C: the rehearsal stops its daemon and agents
            proc.send_signal(signal.SIGINT)
            with trio.move_on_after(60):
                await proc.wait()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = "\n".join(out)
    verbs = [next(w for w in shlex.split(c) if w in ("approve", "answer")) for c in ran]
    assert verbs == ["approve", "answer"], ran
    assert f"{script.NEW_AGENT} -> operator: {script.REPLY_PREFIX} {script.OPTIONS[0]}." in text
    assert "The story is over" in text
