"""Starting ``hyperhive run`` for a benchmark, as an operator would."""

from __future__ import annotations

import os
import subprocess
import sys

from hyperhive.config import Paths


def start_daemon(
    paths: Paths,
    *,
    dashboard: bool = False,
    database: str | None = None,
    node: str | None = None,
) -> tuple[subprocess.Popen[bytes], str]:
    """Start a daemon (external backend; its store at ``database``, or broker.sqlite) and
    return it with its dashboard login URL ("" when the dashboard is off) once it printed
    that it is ready."""
    cmd = [
        sys.executable, "-m", "hyperhive", "run",
        "--state-dir", str(paths.state_dir), "--run-dir", str(paths.run_dir),
        "--backend", "external", "--log-level", "warning",
        "--dashboard-bind", "127.0.0.1:0" if dashboard else "off",
    ]  # fmt: skip
    if database is not None:
        cmd += ["--database", database]
    if node is not None:
        cmd += ["--node", node]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    assert proc.stdout is not None
    login = ""
    for line in proc.stdout:
        if line.startswith(b"hyperhive: dashboard "):
            login = line.decode().split(" ", 2)[2].strip()
        if line.startswith(b"hyperhive: ready"):
            return proc, login
    proc.kill()
    raise SystemExit("the daemon exited before it was ready")
