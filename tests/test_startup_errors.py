"""``hyperhive run`` refuses state it cannot use with one line, exit 1, and no change.

Each case starts from the state a real daemon left behind (run once, stopped cleanly),
breaks one thing, runs ``hyperhive run`` as a real process and compares a snapshot of
the state and run dirs (every path, its mode, owner, size, mtime and bytes) before and
after.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hyperhive.config import Paths
from hyperhive.store import BROKER_MIGRATIONS
from tests.conftest import make_paths, need, run_command

Snapshot = dict[str, tuple[int, int, int, int, str]]


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("NOTIFY_SOCKET", None)
    env.pop("HYPERHIVE_TEST_CRASH_AT", None)
    return env


def start_and_stop(paths: Paths) -> None:
    """Run the daemon until it is ready, then stop it cleanly."""
    proc = subprocess.Popen(
        run_command(paths), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_env()
    )
    assert proc.stdout is not None
    output = []
    for raw in proc.stdout:
        output.append(raw.decode(errors="replace"))
        if "hyperhive: ready" in output[-1]:
            break
    else:
        proc.wait(15)
        pytest.fail("daemon did not start:\n" + "".join(output))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    proc.stdout.close()


@pytest.fixture(scope="module")
def used_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The state and run dirs of a daemon that ran once and stopped cleanly."""
    root = Path(tmp_path_factory.mktemp("used"))
    start_and_stop(make_paths(root))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def state(used_state: Path, short_tmp: Path) -> Iterator[Paths]:
    """A private copy of the used state (modes kept), given back writable at the end."""
    for sub in ("state", "run"):
        shutil.copytree(used_state / sub, short_tmp / sub, symlinks=True)
    paths = make_paths(short_tmp)
    yield paths
    for sub in ("state", "run"):
        os.chown(short_tmp / sub, os.getuid(), os.getgid())
        os.chmod(short_tmp / sub, 0o700)


def snapshot(paths: Paths) -> Snapshot:
    result: Snapshot = {}
    for top in (paths.state_dir, paths.run_dir):
        for path in [top, *sorted(top.rglob("*"))]:
            st = path.lstat()
            digest = ""
            if path.is_file() and not path.is_symlink():
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            result[str(path)] = (st.st_mode, st.st_uid, st.st_size, st.st_mtime_ns, digest)
    return result


def refuses(paths: Paths, *expected: str) -> str:
    """Run the daemon; it must exit 1 with one ``hyperhive: ...`` line and change nothing."""
    before = snapshot(paths)
    proc = subprocess.run(run_command(paths), capture_output=True, env=_env(), timeout=60)
    stderr = proc.stderr.decode()
    assert proc.returncode == 1, (proc.returncode, stderr, proc.stdout)
    assert proc.stdout == b""
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("hyperhive: "), stderr
    for text in expected:
        assert text in lines[0], lines[0]
    after = snapshot(paths)
    assert after == before, {k: (before.get(k), after.get(k)) for k in before.keys() | after}
    return lines[0]


def _rewrite(path: Path, change: Callable[[bytearray], None]) -> None:
    data = bytearray(path.read_bytes())
    change(data)
    path.write_bytes(bytes(data))


def test_the_used_state_starts(state: Paths) -> None:
    """The baseline: the copied state itself is fine (so each refusal is the break's)."""
    start_and_stop(state)


def test_a_corrupt_header_is_one_line(state: Paths) -> None:
    _rewrite(state.broker_db, lambda data: data.__setitem__(slice(0, 16), b"\x00" * 16))
    refuses(state, str(state.broker_db), "not an sqlite database")


def test_corrupt_pages_are_one_line(state: Paths) -> None:
    db = state.broker_db
    page_size = int.from_bytes(db.read_bytes()[16:18], "big")
    assert db.stat().st_size >= 3 * page_size

    def smash(data: bytearray) -> None:
        # Keep the header, smash the schema page's cells and the next page.
        data[100 : 3 * page_size] = b"\xa5" * (3 * page_size - 100)

    _rewrite(db, smash)
    refuses(state, str(db), "corrupt")


def test_a_newer_schema_is_one_line_and_not_migrated(state: Paths) -> None:
    newer = len(BROKER_MIGRATIONS) + 1
    conn = sqlite3.connect(state.broker_db)
    conn.execute(f"PRAGMA user_version = {newer}")
    conn.commit()
    conn.close()
    assert not Path(f"{state.broker_db}-wal").exists()
    refuses(state, f"schema version {newer}", "newer")


def test_a_read_only_state_dir_is_one_line(state: Paths) -> None:
    os.chmod(state.state_dir, 0o500)
    refuses(state, str(state.state_dir), "not writable")


def test_a_foreign_owned_state_dir_is_one_line(state: Paths) -> None:
    need(os.geteuid() == 0, "only root can give a directory to another uid")
    os.chown(state.state_dir, os.geteuid() + 4242, -1)
    refuses(state, str(state.state_dir), f"uid {os.geteuid() + 4242}")


def test_an_unwritable_run_dir_is_one_line(state: Paths) -> None:
    os.chmod(state.run_dir, 0o500)
    refuses(state, str(state.run_dir), "not writable")
