"""Fixtures that start real daemons: in-process (``hive``) or as a subprocess (``daemon``).

Both use real unix sockets and real sqlite files under a short temporary directory (unix
socket paths are limited to 107 bytes, so pytest's long tmp paths are not used for them).
"""

from __future__ import annotations

import contextlib
import http.cookiejar
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, settings

from bench._pg import PgServer, find_pg_bin
from hyperhive.client import Client
from hyperhive.config import Config, Paths
from hyperhive.supervisor import Daemon, Hive, open_daemon

#: Wall-clock limit of one trio test; a hung test fails instead of hanging the run.
TRIO_TEST_TIMEOUT = float(os.environ.get("HYPERHIVE_TEST_TIMEOUT", "120"))
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

# The suite runs in several processes at once (make pytest), beside claude, Chromium and
# containers: how long one example takes says nothing about the code under test, so no
# per-example deadline and no too-slow health check. What the properties assert is unchanged.
settings.register_profile(
    "shared-machine", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("shared-machine")


async def wait_until(
    predicate: Callable[[], Awaitable[bool]], *, limit: float = 10, interval: float = 0.005
) -> None:
    """Poll a condition held by another process, with a deadline (no event exists for it)."""
    with trio.fail_after(limit):
        while not await predicate():  # noqa: ASYNC110 - the state lives in another process
            await trio.sleep(interval)


def require_backend(backend: str) -> None:
    """A container backend's real components (nspawn needs root and systemd-nspawn)."""
    if backend == "nspawn":
        need(shutil.which("systemd-nspawn") is not None, "systemd-nspawn (systemd-container)")
        need(os.geteuid() == 0, "nspawn needs root")


def kill_leftovers(root: Path) -> None:
    """Agents outlive their daemon by design: a failed test must not leave them behind."""
    db = make_paths(root).broker_db
    if not db.exists():
        return
    conn = sqlite3.connect(db)
    pids = [r[0] for r in conn.execute("SELECT pid FROM agents WHERE pid IS NOT NULL")]
    conn.close()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def git(repo: Path, *args: str) -> str:
    """git with no user or system config, as a manager inside its container would run it."""
    env = {
        **os.environ,
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "m",
        "GIT_AUTHOR_EMAIL": "m@x",
        "GIT_COMMITTER_NAME": "m",
        "GIT_COMMITTER_EMAIL": "m@x",
    }
    return subprocess.run(
        ["git", "-C", str(repo), *args], env=env, check=True, capture_output=True, text=True
    ).stdout.strip()


def propose_config(paths: Paths, agent: str, toml: str) -> str:
    """Git plumbing for tests of the daemon's side of a deploy (approvals, tags, rebuild
    decisions): commit a new agent.toml in the proposed repo from the host; its sha.

    Not a stand-in for the manager: a test of the manager's workflow drives the manager's
    claude inside its container (tests/harness/test_manager_config.py)."""
    repo = paths.proposed_dir(agent)
    (repo / "agent.toml").write_text(toml)
    git(repo, "commit", "-qam", "change config")
    return git(repo, "rev-parse", "HEAD")


def need(condition: bool, reason: str) -> None:
    """Skip when a real component is missing, but fail in CI, where it must be there."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"missing in CI: {reason}")
    pytest.skip(reason)


#: With systemd as PID 1 the nspawn backend registers every container with machined under
#: its agent's machine name (``h-<name>``, ``hm1nd``), one per host: two tests could not both
#: start a manager. There, the tests marked ``nspawn`` run one at a time, on one pytest-xdist
#: worker. Without systemd (``--register=no``) the name is only the container's hostname.
MACHINED = Path("/run/systemd/system").is_dir()


@pytest.hookimpl(trylast=True)  # after pytest-trio has marked the trio tests
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if isinstance(item, pytest.Function) and item.get_closest_marker("trio"):
            item.fixturenames.append("_trio_deadline")
        if MACHINED and item.get_closest_marker("nspawn"):
            item.add_marker(pytest.mark.xdist_group("machined"))


@pytest.fixture
async def _trio_deadline() -> AsyncIterator[None]:
    """Fail a trio test that runs past the wall-clock limit (a watchdog thread, not a signal)."""
    finished = threading.Event()

    async def watchdog() -> None:
        expired = await trio.to_thread.run_sync(
            lambda: not finished.wait(TRIO_TEST_TIMEOUT), abandon_on_cancel=True
        )
        if expired:
            raise TimeoutError(f"test ran longer than {TRIO_TEST_TIMEOUT} s")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watchdog)
        yield
        finished.set()
        nursery.cancel_scope.cancel()


#: Real idle time after which :func:`daemon_clock` jumps to the next deadline, per store:
#: far above one database round trip (on PostgreSQL a batch is several network round
#: trips, which a loaded machine can hold for tens of milliseconds), far below a test's
#: budget.
AUTOJUMP_AFTER = {"sqlite": 0.02, "postgresql": 0.1}


@pytest.fixture
def daemon_clock(store: str) -> trio.testing.MockClock:
    """trio's MockClock for a test that runs a daemon: pytest-trio runs a test taking it on it.

    It autojumps after a short real idle time, not at once like pytest-trio's
    ``autojump_clock``: the database runs in a worker thread, and a clock that jumps
    whenever the loop waits for it jumps to the next far timer (the hourly retention loop,
    the space monitor) in the middle of a request. Pair it with ``Config(wall_clock=
    TrioWallClock())`` so stored times follow it. No ``fail_after`` under it: a virtual
    timeout can still fire early; the wall-clock test watchdog applies.
    """
    return trio.testing.MockClock(autojump_threshold=AUTOJUMP_AFTER[store])


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="hh-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def make_paths(root: Path) -> Paths:
    return Paths(state_dir=root / "state", run_dir=root / "run")


#: ``HYPERHIVE_TEST_STORE=postgresql``: the daemons of the tests not marked ``both_stores``
#: keep their store on PostgreSQL.
TEST_STORE = os.environ.get("HYPERHIVE_TEST_STORE", "sqlite")
#: The stores a test marked ``both_stores`` runs on: its ``store`` fixture's parameter.
STORES = ("sqlite", "postgresql")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "store" not in metafunc.fixturenames:
        return
    if metafunc.definition.get_closest_marker("sqlite_only"):
        metafunc.parametrize("store", ["sqlite"], indirect=True)
    elif metafunc.definition.get_closest_marker("both_stores"):
        metafunc.parametrize("store", STORES, indirect=True)


@pytest.fixture
def store(request: pytest.FixtureRequest) -> str:
    """The engine of the test's store: both in turn when marked ``both_stores``, else
    ``HYPERHIVE_TEST_STORE`` (sqlite)."""
    return str(getattr(request, "param", TEST_STORE))


NewDatabase = Callable[[], str | None]


@pytest.fixture
def new_database(store: str, request: pytest.FixtureRequest) -> NewDatabase:
    """A new, empty store on each call, as ``Config.database``: None (broker.sqlite in the
    state dir) or the URL of a new database of :func:`pg_server`."""
    if store == "sqlite":
        return lambda: None
    server: PgServer = request.getfixturevalue("pg_server")
    return lambda: server.url(server.new_database())


@pytest.fixture
def database(new_database: NewDatabase) -> str | None:
    """The ``--database`` of the test's daemons (see :func:`new_database`)."""
    return new_database()


@pytest.fixture
async def inproc(short_tmp: Path, database: str | None) -> AsyncIterator[Daemon]:
    """A daemon running inside the test's trio run, on real sockets and a real database."""
    config = Config(paths=make_paths(short_tmp), backend="external", database=database)
    async with open_daemon(config) as d:
        yield d


@pytest.fixture
def hive(inproc: Daemon) -> Hive:
    """The daemon's :class:`Hive`: what most tests drive."""
    return inproc.hive


async def connect_agent(paths: Paths, name: str, *, role: str | None = None) -> Client:
    return await Client.connect(paths.agent_socket(name), hello_role=role)


Connect = Callable[..., Awaitable[Client]]


@pytest.fixture
async def connect(hive: Hive) -> AsyncIterator[Connect]:
    """Open agent connections on ``hive`` that are closed at teardown."""
    opened: list[Client] = []

    async def _connect(name: str, *, role: str | None = None, spawn: bool = True) -> Client:
        if spawn and name != "manager":
            await hive.spawn(name)
        client = await connect_agent(hive.config.paths, name, role=role)
        opened.append(client)
        return client

    yield _connect
    for client in opened:
        with trio.CancelScope(shield=True):
            await client.aclose()


@attrs.define
class DaemonProcess:
    """``hyperhive run`` as a real subprocess, for crash, signal and CPU tests."""

    paths: Paths
    env: dict[str, str]
    proc: trio.Process | None = None
    output: list[str] = attrs.Factory(list)
    #: ``http://127.0.0.1:PORT/login?token=…`` as printed by the daemon.
    dashboard_login: str | None = None
    #: More options of ``hyperhive run`` (set before a (re)start).
    args: list[str] = attrs.Factory(list)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "hyperhive",
            "run",
            "--state-dir",
            str(self.paths.state_dir),
            "--run-dir",
            str(self.paths.run_dir),
            "--backend",
            "external",
            "--dashboard-bind",
            "127.0.0.1:0",
            *self.args,
        ]

    async def start(self, nursery: trio.Nursery) -> None:
        self.output = []
        self.proc = await trio.lowlevel.open_process(
            self.command(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=self.env
        )
        ready = trio.Event()
        nursery.start_soon(self._pump, self.proc, ready)
        with trio.fail_after(30):
            await ready.wait()
        if not any("ready" in line for line in self.output):
            raise RuntimeError("daemon exited before it was ready:\n" + "".join(self.output))

    async def _pump(self, proc: trio.Process, ready: trio.Event) -> None:
        assert proc.stdout is not None
        buf = b""
        async with proc.stdout:
            while True:
                data = await proc.stdout.receive_some(65536)
                if not data:
                    break
                buf += data
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    text = line.decode(errors="replace") + "\n"
                    self.output.append(text)
                    if text.startswith("hyperhive: dashboard "):
                        self.dashboard_login = text.split(" ", 2)[2].strip()
                    if "hyperhive: ready" in text:
                        ready.set()
        ready.set()

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        with trio.fail_after(15):
            return await self.proc.wait()

    async def kill(self) -> None:
        await self.stop(signal.SIGKILL)

    def cpu_seconds(self) -> float:
        """utime + stime of the daemon from /proc/<pid>/stat."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    async def host(self) -> Client:
        return await Client.connect(self.paths.host_socket, hello_role="cli")

    async def call(self, payload: dict[str, Any]) -> dict[str, Any]:
        async with await self.host() as client:
            return await client.request(payload)

    async def wait_parked(self, count: int) -> None:
        """Until at least ``count`` receivers are parked (the daemon's own count)."""

        async def parked() -> bool:
            return bool((await self.call({"cmd": "status"}))["parked_receivers"] >= count)

        await wait_until(parked)


@pytest.fixture
async def daemon(
    short_tmp: Path, nursery: trio.Nursery, database: str | None
) -> AsyncIterator[DaemonProcess]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("NOTIFY_SOCKET", None)
    env.pop("HYPERHIVE_DATABASE", None)
    if database is not None:
        env["HYPERHIVE_DATABASE"] = database
    d = DaemonProcess(make_paths(short_tmp), env)
    await d.start(nursery)
    yield d
    if d.proc is not None and d.proc.returncode is None:
        d.proc.send_signal(signal.SIGKILL)
        with trio.CancelScope(shield=True), trio.fail_after(15):
            await d.proc.wait()


@attrs.define
class SyncDaemon:
    """A daemon subprocess for synchronous tests (hypothesis), reached with stdlib sockets."""

    paths: Paths
    proc: subprocess.Popen[bytes]

    def alive(self) -> bool:
        return self.proc.poll() is None


def run_command(paths: Paths) -> list[str]:
    """``hyperhive run`` on ``paths``: external backend, no dashboard."""
    return [
        sys.executable,
        "-m",
        "hyperhive",
        "run",
        "--state-dir",
        str(paths.state_dir),
        "--run-dir",
        str(paths.run_dir),
        "--backend",
        "external",
        "--dashboard-bind",
        "off",
    ]


@pytest.fixture
def sync_daemon(short_tmp: Path) -> Iterator[SyncDaemon]:
    import select

    paths = make_paths(short_tmp)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("NOTIFY_SOCKET", None)
    cmd = run_command(paths)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    assert proc.stdout is not None
    seen = b""
    deadline = 30.0
    import time

    end = time.monotonic() + deadline
    while b"hyperhive: ready" not in seen:
        left = end - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            proc.kill()
            proc.wait()
            proc.stdout.close()
            raise RuntimeError(f"daemon did not become ready: {seen.decode(errors='replace')}")
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if ready:
            seen += os.read(proc.stdout.fileno(), 65536)
    try:
        yield SyncDaemon(paths, proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One real PostgreSQL server per test process (see bench/_pg.py); skipped without it,
    failed in CI."""
    bin_dir = find_pg_bin()
    if bin_dir is None:
        if IN_CI:
            pytest.fail("missing in CI: PostgreSQL (initdb, pg_ctl)")
        pytest.skip("PostgreSQL (initdb, pg_ctl) is not installed")
    server = PgServer.start(bin_dir)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """The URL of a new, empty database of :func:`pg_server`."""
    return pg_server.url(pg_server.new_database())


def process_alive(pid: int | None) -> bool:
    """Whether process ``pid`` runs: it exists and is not a zombie waiting to be reaped."""
    if pid is None:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def dashboard_state(login_url: str) -> dict[str, Any]:
    """``/api/state`` of the dashboard behind ``login_url`` (its one-time login link), as the
    operator's browser gets it after logging in."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    opener.open(login_url, timeout=10).read()
    base = login_url.split("/login", 1)[0]
    with opener.open(f"{base}/api/state", timeout=10) as response:
        state: dict[str, Any] = json.loads(response.read())
    return state
