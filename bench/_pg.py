"""A throwaway PostgreSQL server for the tests and the benchmarks: ``initdb`` + ``pg_ctl``
in a temp dir (one implementation for both; it does not import hyperhive).

It listens only on a unix socket in its own directory (no TCP port to clash over between
pytest-xdist workers), runs as an unprivileged user (``nobody`` when the tests run as root:
PostgreSQL refuses root), with ``fsync=on``. Each test gets its own database
(``CREATE DATABASE``, cheap) through :meth:`PgServer.new_database`.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import attrs
import psycopg

PORT = 5432
SUPERUSER = "hyperhive"


def find_pg_bin() -> Path | None:
    """Where ``initdb``/``pg_ctl`` are: PATH, or Debian's ``/usr/lib/postgresql/<v>/bin``."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    return Path(candidates[-1]).parent if candidates else None


@attrs.define
class PgServer:
    root: Path
    bin_dir: Path
    user: str | None  # the unprivileged user it runs as (None: as ourselves)
    _names: itertools.count[int] = attrs.field(factory=itertools.count)

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def url(self, database: str, *, password: str | None = None) -> str:
        auth = SUPERUSER if password is None else f"{SUPERUSER}:{password}"
        return f"postgresql://{auth}@/{database}?host={self.socket_dir}&port={PORT}"

    def admin(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.url("postgres"), autocommit=True)

    def new_database(self) -> str:
        """A new, empty database; its name."""
        name = f"t{os.getpid()}_{next(self._names)}"
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def _run(self, *args: str) -> None:
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            uid, gid = entry.pw_uid, entry.pw_gid
            cmd = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, cwd="/")

    @classmethod
    def start(cls, bin_dir: Path) -> PgServer:
        root = Path(tempfile.mkdtemp(prefix="hh-pg-"))
        user = None
        if os.geteuid() == 0:
            user = "nobody"
            entry = pwd.getpwnam(user)
            os.chmod(root, 0o755)
            os.chown(root, entry.pw_uid, entry.pw_gid)
        server = cls(root, bin_dir, user)
        server.socket_dir.mkdir()
        if user is not None:
            os.chown(server.socket_dir, pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid)
        server._run(
            "initdb", "-D", str(server.data_dir), "-U", SUPERUSER, "--auth=trust",
            "-E", "UTF8", "--no-instructions",
        )  # fmt: skip
        server._run(
            "pg_ctl", "-D", str(server.data_dir), "-w", "-l", str(root / "log"), "-o",
            f"-k {server.socket_dir} -p {PORT} -c listen_addresses='' -c fsync=on",
            "start",
        )  # fmt: skip
        return server

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
