"""The real backends: ``process`` (a plain child, no isolation) and ``nspawn`` (a container).

Both start the payload detached (own session, output to the agent's log file) so that it
outlives the daemon, and both give the same paths to the harness: the socket, the state
dir, the claude credentials dir, and for the manager the tree of every agent's proposed
config repo (:mod:`hyperhive.contract`). ``external`` starts nothing and has no class here.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Final

import trio

from hyperhive import contract
from hyperhive.config import DEFAULT_LOG_POLICY
from hyperhive.containers._backend import (
    AgentSpec,
    Handle,
    RunRecord,
    Started,
    adopt_detached,
    spawn_detached,
)
from hyperhive.disk import LogPolicy
from hyperhive.envfile import ENV_FILE_KEYS
from hyperhive.errors import RequestRefused
from hyperhive.names import machine_name

log = logging.getLogger(__name__)

#: Environment passed through from the daemon to every payload (the rest is not inherited).
PASSTHROUGH_ENV: Final = (
    "PATH",
    "LANG",
    "LC_ALL",
    "TZ",
    # The operator's API settings (``hyperhive run --env-file``, or the daemon's environment).
    *ENV_FILE_KEYS,
    contract.CLAUDE_ENV,
    contract.RATE_LIMIT_SLEEP_ENV,
    contract.RECONNECT_BACKOFF_ENV,
)
#: Built-in Claude Code tools an agent in a container may use besides the hyperhive ones:
#: the container is the sandbox. The process backend has none (no isolation).
CONTAINER_TOOLS: Final = "Read,Write,Edit,Glob,Grep,Bash"


def _base_env() -> dict[str, str]:
    return {k: os.environ[k] for k in PASSTHROUGH_ENV if k in os.environ}


def cpu_max(quota: str) -> str:
    """``200%`` → the cgroup v2 ``cpu.max`` line ``200000 100000``."""
    percent = int(quota.rstrip("%"))
    return f"{percent * 1000} 100000"


class CgroupLimits:
    """CPU/memory limits through cgroup v2 files, when the hierarchy is ours to write."""

    def __init__(self, root: Path = Path("/sys/fs/cgroup")) -> None:
        self.root = root
        self.base = root / "hyperhive"

    def available(self) -> bool:
        return (self.root / "cgroup.controllers").exists() and os.access(self.root, os.W_OK)

    def apply(self, name: str, pid: int, cpu_quota: str, memory_max: str) -> str | None:
        """Move ``pid`` into ``hyperhive/<name>`` with the limits; a warning if impossible."""
        if not self.available():
            return "no writable cgroup v2 hierarchy: CPU and memory limits are not enforced"
        try:
            self.base.mkdir(exist_ok=True)
            (self.base / "cgroup.subtree_control").write_text("+cpu +memory")
            group = self.base / name
            group.mkdir(exist_ok=True)
            (group / "cpu.max").write_text(cpu_max(cpu_quota))
            (group / "memory.max").write_text(memory_max)
            (group / "cgroup.procs").write_text(str(pid))
        except OSError as exc:
            return f"cannot set cgroup limits: {exc}"
        return None


class ProcessBackend:
    """The harness as a plain child process. No isolation: for laptops and non-root use."""

    name = "process"
    isolated = False

    def __init__(
        self, limits: CgroupLimits | None = None, log_policy: LogPolicy = DEFAULT_LOG_POLICY
    ) -> None:
        self._limits = limits or CgroupLimits()
        self._log_policy = log_policy

    def environment(self, spec: AgentSpec) -> dict[str, str]:
        return {
            **_base_env(),
            **spec.env,
            "HOME": str(spec.claude_dir.parent),
            "CLAUDE_CONFIG_DIR": str(spec.claude_dir),
            # Where claude keeps its login with CLAUDE_CONFIG_DIR (not $HOME/.claude).
            contract.CREDENTIALS_FILE_ENV: str(spec.claude_dir / contract.CREDENTIALS_FILE_NAME),
            **contract.agent_env(
                spec.name,
                socket=str(spec.socket_dir / contract.SOCKET_NAME),
                state_dir=str(spec.state_dir),
            ),
            **(contract.manager_env(str(spec.agents_dir)) if spec.agents_dir else {}),
        }

    async def start(self, spec: AgentSpec, started_at: float) -> Started:
        env = self.environment(spec)

        def start() -> Started:  # fork/exec and cgroup writes: off the event loop
            handle = spawn_detached(
                spec.command,
                env=env,
                log_file=spec.log_file,
                log_policy=self._log_policy,
                cwd=spec.state_dir,
                started_at=started_at,
            )
            warning = self._limits.apply(spec.name, handle.pid, spec.cpu_quota, spec.memory_max)
            return Started(handle, warning)

        return await trio.to_thread.run_sync(start)

    async def adopt(self, record: RunRecord) -> Handle | None:
        return await adopt_detached(record)


def _install_paths() -> list[Path]:
    """Host paths the payload needs besides /usr: the Python install, the venv, our source."""
    import hyperhive

    candidates = [
        Path(sys.prefix),
        Path(sys.base_prefix),
        Path(os.path.realpath(sys.executable)).parent.parent,
        Path(hyperhive.__file__).resolve().parent.parent,
    ]
    claude = os.environ.get(contract.CLAUDE_ENV)
    if claude:
        real = Path(os.path.realpath(claude))
        # The npm prefix that holds the claude package (…/node_modules/...).
        parts = real.parts
        root = (
            Path(*parts[: parts.index("node_modules")]) if "node_modules" in parts else real.parent
        )
        candidates.append(root)
    return _outermost(p for p in candidates if not _under(p, Path("/usr")))


def _under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _outermost(paths: object) -> list[Path]:
    unique = sorted({Path(p) for p in paths})  # type: ignore[attr-defined]
    kept: list[Path] = []
    for p in unique:
        if not any(_under(p, k) for k in kept):
            kept.append(p)
    return kept


class NspawnBackend:
    """Host-image containers: ``systemd-nspawn -D / --volatile=yes``, one machine per agent."""

    name = "nspawn"
    isolated = True

    def __init__(
        self, limits: CgroupLimits | None = None, log_policy: LogPolicy = DEFAULT_LOG_POLICY
    ) -> None:
        self._limits = limits or CgroupLimits()
        self._log_policy = log_policy
        self._systemd = Path("/run/systemd/system").is_dir()

    @staticmethod
    def available() -> bool:
        return shutil.which("systemd-nspawn") is not None and os.geteuid() == 0

    def argv(self, spec: AgentSpec) -> list[str]:
        nspawn = shutil.which("systemd-nspawn")
        if nspawn is None:
            raise RequestRefused("systemd-nspawn is not installed (Debian: systemd-container)")
        argv = [
            nspawn,
            "--quiet",
            "-D",
            "/",
            "--volatile=yes",
            f"--machine={machine_name(spec.name)}",
        ]
        if self._systemd:
            argv += [
                "--register=yes",
                f"--property=CPUQuota={spec.cpu_quota}",
                f"--property=MemoryMax={spec.memory_max}",
            ]
        else:
            argv += ["--register=no", "--keep-unit"]
        argv += [
            f"--bind={spec.socket_dir}:{contract.SOCKET_DIR}",
            f"--bind={spec.state_dir}:{contract.STATE_DIR}",
            f"--bind={spec.claude_dir}:{contract.CLAUDE_DIR}",
        ]
        if spec.agents_dir is not None:
            # The whole tree: a repo made later (a new agent) shows up without a restart.
            argv.append(f"--bind={spec.agents_dir}:{contract.AGENTS_DIR}")
        argv += [
            *(f"--bind-ro={p}" for p in _install_paths()),
            f"--chdir={contract.STATE_DIR}",
        ]
        # The API settings by name only: nspawn copies their values from its own environment
        # (``--setenv=NAME``), so keys stay out of its command line, which anyone can read.
        argv += [
            f"--setenv={k}" if k in ENV_FILE_KEYS else f"--setenv={k}={v}"
            for k, v in sorted(self.payload_env(spec).items())
        ]
        return [*argv, "--", *spec.command]

    def payload_env(self, spec: AgentSpec) -> dict[str, str]:
        """The payload's environment (``argv`` puts it on nspawn's command line)."""
        return {
            **_base_env(),
            **spec.env,
            "HOME": contract.HOME,
            # claude's .claude.json beside its login in the bound dir, not in the volatile /root.
            "CLAUDE_CONFIG_DIR": contract.CLAUDE_DIR,
            **contract.agent_env(spec.name, socket=contract.SOCKET, state_dir=contract.STATE_DIR),
            contract.EXTRA_ALLOWED_TOOLS_ENV: CONTAINER_TOOLS,
            **(contract.manager_env(contract.AGENTS_DIR) if spec.agents_dir else {}),
        }

    async def start(self, spec: AgentSpec, started_at: float) -> Started:
        argv = self.argv(spec)
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            # Only the API settings: nspawn reads other variables itself (SYSTEMD_*).
            **{k: v for k, v in self.payload_env(spec).items() if k in ENV_FILE_KEYS},
        }

        def start() -> Started:  # fork/exec and cgroup writes: off the event loop
            handle = spawn_detached(
                argv,
                env=env,
                log_file=spec.log_file,
                log_policy=self._log_policy,
                cwd=Path("/"),
                started_at=started_at,
            )
            warning = None
            if not self._systemd:
                warning = self._limits.apply(spec.name, handle.pid, spec.cpu_quota, spec.memory_max)
            return Started(handle, warning)

        return await trio.to_thread.run_sync(start)

    async def adopt(self, record: RunRecord) -> Handle | None:
        return await adopt_detached(record)
