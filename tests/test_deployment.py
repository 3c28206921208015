"""Deployment: the NixOS module, the packaged systemd unit, sd_notify, socket permissions.

The permission tests create a throwaway system user and group, run ``hyperhive run`` as
root with ``--admin-group``, and probe the sockets as that user with the system Python
(stdlib only), through ``setpriv``.
"""

from __future__ import annotations

import configparser
import grp
import itertools
import json
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import socket
import stat
import statistics
import struct
import subprocess
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from hyperhive import config
from hyperhive.config import Paths
from tests.conftest import DaemonProcess, make_paths, need

REPO = Path(__file__).resolve().parent.parent
MODULE = REPO / "nixos-module" / "default.nix"
FLAKE = REPO / "flake.nix"
UNIT = REPO / "packaging" / "hyperhive.service"
SYSTEM_PYTHON = Path("/usr/bin/python3")

#: What the NixOS module and the packaged unit must agree on (systemd [Service] keys).
SHARED_SERVICE_KEYS = (
    "Type",
    "NotifyAccess",
    "WatchdogSec",
    "TimeoutStartSec",
    "TimeoutStopSec",
    "KillMode",
    "Restart",
    "RestartSec",
    "RuntimeDirectory",
    "RuntimeDirectoryMode",
    "RuntimeDirectoryPreserve",
    "StateDirectory",
    "StateDirectoryMode",
    "LimitNOFILE",
)


def _read_unit(path: Path) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(interpolation=None, strict=True)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    unit.read_string(path.read_text(encoding="utf-8"))
    return unit


# ---------------------------------------------------------------- the NixOS module


@pytest.mark.parametrize("path", [MODULE, FLAKE], ids=["module", "flake"])
def test_nix_files_parse(path: Path) -> None:
    need(shutil.which("nix-instantiate") is not None, "nix-instantiate (Debian: nix-bin)")
    result = subprocess.run(
        ["nix-instantiate", "--parse", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


#: Just enough of nixpkgs' ``lib``, ``pkgs`` and ``utils`` to call the module function and
#: read the service it produces (nixpkgs itself is not available offline).
NIX_HARNESS = r"""
{ module, overrides }:
let
  ov = builtins.fromJSON overrides;
  lib = rec {
    mkOption = o: o // { _type = "option"; };
    mkEnableOption = d: mkOption { default = false; description = d; };
    mkIf = c: v: if c then v else null;
    optional = c: x: if c then [ x ] else [ ];
    optionals = c: xs: if c then xs else [ ];
    hasPrefix = p: s: builtins.substring 0 (builtins.stringLength p) s == p;
    hasInfix = i: s: builtins.length (builtins.split i s) > 1;
    removePrefix = p: s:
      if hasPrefix p s
      then builtins.substring (builtins.stringLength p) (builtins.stringLength s) s
      else s;
    literalExpression = text: { _type = "literalExpression"; inherit text; };
    types = {
      str = "str"; bool = "bool"; port = "port"; package = "package";
      enum = xs: "enum"; nullOr = t: "nullOr"; listOf = t: "listOf";
      strMatching = r: "strMatching";
    };
  };
  pkgs = { hyperhive = "/nix/store/hyperhive"; git = "/nix/store/git"; };
  utils.escapeSystemdExecArgs = args: builtins.concatStringsSep " "
    (map (a: builtins.replaceStrings [ "%" "$" ] [ "%%" "$$" ] (builtins.toJSON a)) args);
  isOption = v: builtins.isAttrs v && (v._type or "") == "option";
  defaults = opts: builtins.mapAttrs (n: v: if isOption v then v.default else defaults v) opts;
  merge = a: b: a // builtins.mapAttrs
    (n: v: if builtins.isAttrs v && builtins.isAttrs (a.${n} or null) then merge a.${n} v else v) b;
  call = config: import module { inherit config lib pkgs utils; };
  declared = (call (throw "options must not read config")).options.services.hyperhive;
  cfg = merge (defaults declared) ov;
  out = (call { services.hyperhive = cfg; systemd.package = "/nix/store/systemd"; }).config;
in
  { inherit cfg declared; } // out
"""


def _eval_module(tmp_path: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    need(shutil.which("nix-instantiate") is not None, "nix-instantiate (Debian: nix-bin)")
    harness = tmp_path / "harness.nix"
    harness.write_text(NIX_HARNESS, encoding="utf-8")
    result = subprocess.run(
        [
            "nix-instantiate",
            "--eval",
            "--strict",
            "--json",
            str(harness),
            "--arg",
            "module",
            str(MODULE),
            "--argstr",
            "overrides",
            json.dumps(overrides),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def test_nixos_module_produces_the_service(tmp_path: Path) -> None:
    out = _eval_module(tmp_path, {"enable": True})
    service = out["systemd"]["services"]["hyperhive"]
    sc = service["serviceConfig"]
    assert sc["Type"] == "notify"
    assert sc["WatchdogSec"] == "30s"
    assert sc["RuntimeDirectory"] == "hyperhive"
    assert sc["RuntimeDirectoryPreserve"] == "yes"
    assert sc["RuntimeDirectoryMode"] == "0751"
    assert sc["StateDirectory"] == "hyperhive"
    assert sc["KillMode"] == "process"  # agents survive a restart of the daemon
    assert sc["Restart"] == "on-failure"
    assert sc["RestartSec"] == "5s"
    # systemd-nspawn (systemd's package) and git on the service's path.
    assert service["path"] == ["/nix/store/systemd", "/nix/store/git"]
    assert service["wantedBy"] == ["multi-user.target"]
    argv = shlex.split(sc["ExecStart"])
    assert argv == [
        "/nix/store/hyperhive/bin/hyperhive",
        "run",
        "--state-dir",
        "/var/lib/hyperhive",
        "--run-dir",
        "/run/hyperhive",
        "--backend",
        "auto",
        "--dashboard-bind",
        "127.0.0.1:7000",
        "--admin-group",
        "hyperhive",
    ]
    assert out["users"]["groups"] == {"hyperhive": {}}
    assert out["networking"]["firewall"]["allowedTCPPorts"] is None
    assert out["environment"]["variables"] == {"HYPERHIVE_RUN_DIR": "/run/hyperhive"}
    assert out["environment"]["systemPackages"] == ["/nix/store/hyperhive"]
    assert out["warnings"] == []
    assert all(a["assertion"] for a in out["assertions"])


def test_nixos_module_defaults_are_the_daemons(tmp_path: Path) -> None:
    """The module's option defaults are Config's (hyperhive/config.py), option by option."""
    out = _eval_module(tmp_path, {"enable": True})
    cfg, declared = out["cfg"], out["declared"]
    fields = attrs.fields_dict(config.Config)
    assert cfg["backend"] == fields["backend"].default == config.DEFAULT_BACKEND
    assert cfg["dashboard"]["enable"] is True
    assert cfg["dashboard"]["bind"] == config.DEFAULT_DASHBOARD_HOST
    assert cfg["dashboard"]["port"] == config.DEFAULT_DASHBOARD_PORT
    assert cfg["stateDir"] == config.ROOT_STATE_DIR
    assert cfg["runDir"] == config.ROOT_RUN_DIR
    # null: the daemon's built-in default, which the description names.
    assert cfg["agentDefaults"] == {"model": None, "cpuQuota": None, "memoryMax": None}
    assert fields["agent_model"].default is None
    agent = declared["agentDefaults"]
    assert f"built-in default ({config.DEFAULT_MODEL})" in agent["model"]["description"]
    assert f"built-in default ({config.DEFAULT_CPU_QUOTA})" in agent["cpuQuota"]["description"]
    assert f"built-in default ({config.DEFAULT_MEMORY_MAX})" in agent["memoryMax"]["description"]
    # The backend option offers exactly the daemon's backends (the stub loses enum lists).
    text = MODULE.read_text(encoding="utf-8")
    enum = re.search(r"backend = mkOption \{\s*type = types\.enum \[([^\]]*)\]", text)
    assert enum is not None
    assert tuple(re.findall(r'"([a-z]+)"', enum.group(1))) == config.BACKENDS
    # The packaged unit runs with the same dirs, and documents the same dashboard default.
    argv = shlex.split(_read_unit(UNIT)["Service"]["ExecStart"])
    assert argv[argv.index("--state-dir") + 1] == config.ROOT_STATE_DIR
    assert argv[argv.index("--run-dir") + 1] == config.ROOT_RUN_DIR
    assert f"HYPERHIVE_DASHBOARD_BIND={config.DEFAULT_DASHBOARD_BIND} " in UNIT.read_text()


def test_nixos_module_options_reach_the_command_line(tmp_path: Path) -> None:
    out = _eval_module(
        tmp_path,
        {
            "enable": True,
            "stateDir": "/var/lib/hive2",
            "runDir": "/run/hive2",
            "backend": "nspawn",
            "adminGroup": "ops",
            "dashboard": {"bind": "::", "port": 7443, "openFirewall": True},
            "agentDefaults": {"model": "sonnet", "cpuQuota": "100%", "memoryMax": "8G"},
            "extraArgs": ["--log-level", "debug 100%"],
        },
    )
    sc = out["systemd"]["services"]["hyperhive"]["serviceConfig"]
    assert sc["StateDirectory"] == "hive2"
    assert sc["RuntimeDirectory"] == "hive2"
    # Escaped for systemd: a literal % is doubled, quoting keeps one argument together.
    assert '"debug 100%%"' in sc["ExecStart"]
    argv = shlex.split(sc["ExecStart"].replace("%%", "%"))
    assert argv[1:] == [
        "run",
        "--state-dir",
        "/var/lib/hive2",
        "--run-dir",
        "/run/hive2",
        "--backend",
        "nspawn",
        "--dashboard-bind",
        "[::]:7443",
        "--admin-group",
        "ops",
        "--agent-model",
        "sonnet",
        "--agent-cpu-quota",
        "100%",
        "--agent-memory-max",
        "8G",
        "--log-level",
        "debug 100%",
    ]
    assert out["users"]["groups"] == {"ops": {}}
    assert out["networking"]["firewall"]["allowedTCPPorts"] == [7443]
    assert out["environment"]["variables"] == {"HYPERHIVE_RUN_DIR": "/run/hive2"}


def test_nixos_module_refuses_dirs_systemd_cannot_manage(tmp_path: Path) -> None:
    out = _eval_module(
        tmp_path,
        {
            "enable": True,
            "stateDir": "/srv/hive",
            "runDir": "/tmp/hive",
            "adminGroup": None,
            "dashboard": {"openFirewall": True},
        },
    )
    failed = [a["message"] for a in out["assertions"] if not a["assertion"]]
    assert len(failed) == 2
    assert "stateDir must be below /var/lib" in failed[0]
    assert "runDir must be below /run" in failed[1]
    assert out["users"]["groups"] is None  # no admin group: root only
    assert (
        "--admin-group" not in out["systemd"]["services"]["hyperhive"]["serviceConfig"]["ExecStart"]
    )
    assert len(out["warnings"]) == 1 and "openFirewall" in out["warnings"][0]


def test_nixos_module_dashboard_off(tmp_path: Path) -> None:
    out = _eval_module(
        tmp_path, {"enable": True, "dashboard": {"enable": False, "openFirewall": True}}
    )
    argv = shlex.split(out["systemd"]["services"]["hyperhive"]["serviceConfig"]["ExecStart"])
    assert argv[argv.index("--dashboard-bind") + 1] == "off"
    assert out["networking"]["firewall"]["allowedTCPPorts"] is None


def test_nixos_module_and_packaged_unit_agree(tmp_path: Path) -> None:
    sc = _eval_module(tmp_path, {"enable": True})["systemd"]["services"]["hyperhive"][
        "serviceConfig"
    ]
    unit = _read_unit(UNIT)["Service"]
    for key in SHARED_SERVICE_KEYS:
        assert str(sc[key]) == unit[key], key


# ---------------------------------------------------------------- the packaged unit


def test_packaged_unit_semantics() -> None:
    unit = _read_unit(UNIT)
    service = unit["Service"]
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    assert service["KillMode"] == "process"
    assert service["Restart"] == "on-failure"
    assert service["RestartSec"] == "5s"
    assert service["WatchdogSec"] == "30s"
    assert service["RuntimeDirectory"] == "hyperhive"
    assert service["RuntimeDirectoryMode"] == "0751"
    assert service["RuntimeDirectoryPreserve"] == "yes"
    assert service["StateDirectory"] == "hyperhive"
    assert service["StateDirectoryMode"] == "0700"
    argv = shlex.split(service["ExecStart"])
    assert argv[1:6] == ["run", "--state-dir", "/var/lib/hyperhive", "--run-dir", "/run/hyperhive"]
    assert unit["Unit"]["StartLimitBurst"] == "5"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def _unit_diagnostics(path: Path) -> tuple[int, list[str]]:
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    lines = (result.stdout + result.stderr).splitlines()
    return result.returncode, [line for line in lines if path.name in line]


@pytest.fixture
def unit_executable() -> Iterator[Path]:
    """The executable the unit names; a link to this checkout's while the test runs."""
    need(shutil.which("systemd-analyze") is not None, "systemd-analyze (Debian: systemd)")
    exe = Path(shlex.split(_read_unit(UNIT)["Service"]["ExecStart"])[0])
    if os.access(exe, os.X_OK):
        yield exe
        return
    need(os.geteuid() == 0, f"root is needed to create {exe} for the check")
    ours = Path(sys.executable).parent / "hyperhive"
    assert os.access(ours, os.X_OK), ours
    created = [p for p in reversed(exe.parents) if not p.exists()]
    exe.parent.mkdir(parents=True, exist_ok=True)
    exe.symlink_to(ours)
    try:
        yield exe
    finally:
        exe.unlink()
        for p in reversed(created):
            p.rmdir()


def test_packaged_unit_verifies(unit_executable: Path, tmp_path: Path) -> None:
    code, diagnostics = _unit_diagnostics(UNIT)
    assert code == 0 and diagnostics == [], diagnostics
    # The check sees mistakes: the same unit with a typo is reported.
    broken = tmp_path / UNIT.name
    broken.write_text(UNIT.read_text().replace("Type=notify", "Type=notfy"), encoding="utf-8")
    assert _unit_diagnostics(broken)[1] != []


# ---------------------------------------------------------------- sd_notify


#: Linux's SO_TIMESTAMP (also the SCM_TIMESTAMP message type); the stdlib does not name it.
SO_TIMESTAMP = getattr(socket, "SO_TIMESTAMP", 29)


@attrs.define
class NotifyListener:
    """The service manager's end of NOTIFY_SOCKET; each datagram with its kernel timestamp."""

    sock: socket.socket
    received: list[tuple[float, str]] = attrs.Factory(list)

    @classmethod
    def bind(cls, path: Path) -> NotifyListener:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(str(path))
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMP, 1)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    async def next(self) -> str:
        while True:
            try:
                data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(16))
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.sock)
                continue
            sent = next(
                sec + usec / 1e6
                for level, kind, raw in ancillary
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMP
                for sec, usec in [struct.unpack("qq", raw[:16])]
            )
            self.received.append((sent, data.decode()))
            return data.decode()

    async def until(self, message: str) -> None:
        while await self.next() != message:
            pass

    def close(self) -> None:
        self.sock.close()


async def _hello(path: Path) -> trio.SocketStream:
    """Connect and send ``hello``; the reply is read later (the daemon may be stopped)."""
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.connect(str(path))
    stream = trio.SocketStream(sock)
    await stream.send_all(b'{"cmd": "hello", "role": "cli", "protocol": 1}\n')
    return stream


async def _reply(stream: trio.SocketStream) -> dict[str, Any]:
    data = b""
    while not data.endswith(b"\n"):
        chunk = await stream.receive_some(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    return dict(json.loads(data))


async def _dashboard_url(stdout: trio.abc.ReceiveStream) -> urllib.parse.SplitResult:
    """The dashboard login URL from the daemon's ``hyperhive: dashboard URL`` line."""
    out = b""
    with trio.fail_after(10):
        while (found := re.search(rb"^hyperhive: dashboard (\S+)$", out, re.MULTILINE)) is None:
            chunk = await stdout.receive_some(65536)
            assert chunk, f"no dashboard line in {out!r}"
            out += chunk
    return urllib.parse.urlsplit(found.group(1).decode())


WATCHDOG_USEC = 1_000_000


async def test_ready_after_every_socket_watchdog_at_half_period_stopping_on_sigterm(
    short_tmp: Path,
) -> None:
    paths = make_paths(short_tmp)
    listener = NotifyListener.bind(short_tmp / "notify.sock")
    env = {
        **os.environ,
        "NOTIFY_SOCKET": str(short_tmp / "notify.sock"),
        "WATCHDOG_USEC": str(WATCHDOG_USEC),
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("WATCHDOG_PID", None)
    daemon = DaemonProcess(paths, env)
    command = daemon.command()
    assert "--dashboard-bind" in command  # the dashboard's TCP socket is one of them
    proc = await trio.lowlevel.open_process(command, env=env, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    try:
        with trio.fail_after(30):
            await listener.until("READY=1")
        # Freeze the daemon the moment it says READY: nothing it would do later can make a
        # socket listen in time. A listening socket still accepts into its backlog.
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            # The login URL was printed before READY: it is in the pipe already.
            login = await _dashboard_url(proc.stdout)
            streams = [
                await _hello(paths.host_socket),
                await _hello(paths.agent_socket("manager")),
            ]
            web = await trio.open_tcp_stream(login.hostname, login.port)
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        resumed = time.time()
        with trio.fail_after(10):
            replies = [await _reply(s) for s in streams]
            await web.send_all(b"GET /api/state HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            status_line = (await web.receive_some(4096)).split(b"\r\n", 1)[0]
        for s in [*streams, web]:
            await s.aclose()
        assert [(r["ok"], r["name"]) for r in replies] == [(True, "operator"), (True, "manager")]
        assert status_line.startswith(b"HTTP/1.1 "), status_line
        before_ready = [m for _, m in listener.received[:-1]]
        assert set(before_ready) <= {"WATCHDOG=1"}, before_ready

        # Pings at about half of WATCHDOG_USEC (timed by the kernel, as they were sent).
        with trio.fail_after(30):
            while sum(1 for t, m in listener.received if m == "WATCHDOG=1" and t > resumed) < 7:
                await listener.next()
        pings = [t for t, m in listener.received if m == "WATCHDOG=1" and t > resumed]
        gaps = [b - a for a, b in itertools.pairwise(pings[1:])]  # the first may span the stop
        half = WATCHDOG_USEC / 2e6
        assert all(0.5 * half <= g < 2 * half for g in gaps), gaps
        assert 0.8 * half <= statistics.median(gaps) <= 1.5 * half, gaps
        assert "STOPPING=1" not in [m for _, m in listener.received]

        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(15):
            await listener.until("STOPPING=1")
            assert await proc.wait() == 0
        assert [m for _, m in listener.received].count("READY=1") == 1
    finally:
        if proc.returncode is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            await proc.wait()
        listener.close()


# ---------------------------------------------------------------- permissions


@attrs.frozen
class Account:
    user: str
    uid: int
    gid: int
    admin_group: str
    admin_gid: int


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


@pytest.fixture
def account() -> Iterator[Account]:
    """A throwaway system user (not yet in the admin group) and an admin group."""
    need(os.geteuid() == 0, "root is needed to create a user and a group")
    for tool in ("useradd", "groupadd", "usermod", "userdel", "groupdel", "setpriv"):
        need(shutil.which(tool) is not None, f"{tool} (Debian: passwd, util-linux)")
    need(SYSTEM_PYTHON.exists(), f"{SYSTEM_PYTHON} (Debian: python3)")

    tag = secrets.token_hex(3)
    user, group = f"hhuser{tag}", f"hhadmin{tag}"
    _run("groupadd", "--system", group)
    try:
        _run(
            "useradd",
            "--system",
            "--no-create-home",
            "--user-group",
            "--shell",
            "/usr/sbin/nologin",
            user,
        )
        try:
            entry = pwd.getpwnam(user)
            yield Account(user, entry.pw_uid, entry.pw_gid, group, grp.getgrnam(group).gr_gid)
        finally:
            _run("userdel", user)
    finally:
        _run("groupdel", group)


#: Runs as the probed user: stdlib only (the project's Python is not reachable by others).
PROBE = r"""
import errno, json, os, socket, sys

def attempt(op, path):
    try:
        if op == "stat":
            os.stat(path)
            return {"result": "ok"}
        if op == "listdir":
            os.listdir(path)
            return {"result": "ok"}
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(path)
        f = s.makefile("rwb")
        replies = []
        for req in ({"cmd": "hello", "role": "cli", "protocol": 1}, {"cmd": "status"}):
            f.write(json.dumps(req).encode() + b"\n")
            f.flush()
            replies.append(json.loads(f.readline()))
        s.close()
        return {"result": "ok", "replies": replies}
    except OSError as exc:
        return {"result": errno.errorcode.get(exc.errno, str(exc))}

print(json.dumps({
    "uid": os.getuid(),
    "groups": sorted(set(os.getgroups()) | {os.getgid()}),
    "results": [attempt(op, path) for op, path in json.loads(sys.argv[1])],
}))
"""


def _probe(account: Account, member: bool, checks: list[tuple[str, Path]]) -> dict[str, Any]:
    groups = ["--init-groups"] if member else ["--clear-groups"]
    result = subprocess.run(
        [
            "setpriv",
            f"--reuid={account.uid}",
            f"--regid={account.gid}",
            *groups,
            str(SYSTEM_PYTHON),
            "-I",
            "-c",
            PROBE,
            json.dumps([(op, str(path)) for op, path in checks]),
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd="/",
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


@attrs.define
class AdminDaemon(DaemonProcess):
    """``hyperhive run`` with more arguments."""

    extra: list[str] = attrs.Factory(list)

    def command(self) -> list[str]:
        return [*super().command(), *self.extra]


@pytest.fixture
async def admin_daemon(
    short_tmp: Path, account: Account, nursery: trio.Nursery
) -> AsyncIterator[AdminDaemon]:
    # Like /run: the parent of the run dir is traversable by everyone.
    short_tmp.chmod(0o755)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("NOTIFY_SOCKET", None)
    d = AdminDaemon(make_paths(short_tmp), env, extra=["--admin-group", account.admin_group])
    await d.start(nursery)
    yield d
    with trio.CancelScope(shield=True):
        await d.stop()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


async def test_socket_and_directory_modes(admin_daemon: AdminDaemon, account: Account) -> None:
    paths: Paths = admin_daemon.paths
    reply = await admin_daemon.call({"cmd": "spawn", "name": "alice"})
    assert reply["ok"], reply
    host = paths.host_socket.lstat()
    assert stat.S_ISSOCK(host.st_mode)
    assert (_mode(paths.host_socket), host.st_uid, host.st_gid) == (0o660, 0, account.admin_gid)
    assert (_mode(paths.run_dir), paths.run_dir.stat().st_uid) == (0o751, 0)
    for name in ("manager", "alice"):
        sock = paths.agent_socket(name)
        assert stat.S_ISSOCK(sock.lstat().st_mode), sock
        assert (_mode(sock), sock.lstat().st_uid) == (0o600, 0), sock
        assert (_mode(sock.parent), sock.parent.stat().st_uid) == (0o700, 0), sock.parent


async def test_only_admin_group_members_reach_host_socket(
    admin_daemon: AdminDaemon, account: Account
) -> None:
    paths: Paths = admin_daemon.paths
    assert (await admin_daemon.call({"cmd": "spawn", "name": "alice"}))["ok"]
    checks = [
        ("stat", paths.host_socket),  # the run dir is traversable: 0751
        ("connect", paths.host_socket),
        ("listdir", paths.run_dir),
        ("connect", paths.agent_socket("manager")),
        ("connect", paths.agent_socket("alice")),
    ]

    outsider = await trio.to_thread.run_sync(_probe, account, False, checks)
    assert outsider["uid"] == account.uid
    assert account.admin_gid not in outsider["groups"]
    assert [r["result"] for r in outsider["results"]] == [
        "ok",
        "EACCES",
        "EACCES",
        "EACCES",
        "EACCES",
    ]

    await trio.to_thread.run_sync(
        _run, "usermod", "--append", "--groups", account.admin_group, account.user
    )
    member = await trio.to_thread.run_sync(_probe, account, True, checks)
    assert member["uid"] == account.uid
    assert account.admin_gid in member["groups"]
    results = member["results"]
    assert [r["result"] for r in results] == ["ok", "ok", "EACCES", "EACCES", "EACCES"]
    hello, status = results[1]["replies"]
    assert hello["ok"] and hello["name"] == "operator"
    assert status["ok"] and status["pid"] == admin_daemon.pid


async def test_unknown_admin_group_is_refused(short_tmp: Path) -> None:
    group = f"hhnone{secrets.token_hex(3)}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("NOTIFY_SOCKET", None)
    d = AdminDaemon(make_paths(short_tmp), env, extra=["--admin-group", group])
    result = await trio.run_process(
        d.command(), env=env, capture_stdout=True, capture_stderr=True, check=False
    )
    assert result.returncode == 1
    assert f"admin group {group!r} does not exist" in result.stderr.decode()
    assert not d.paths.host_socket.exists()
