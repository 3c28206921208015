"""What a process imports at start: the PostgreSQL driver only where a PostgreSQL URL is used.

Each check runs in a fresh interpreter (``python -c``): ``sys.modules`` of the test process
already holds everything the other tests imported.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def loaded(code: str, *, cwd: Path | None = None) -> set[str]:
    """The top-level packages in ``sys.modules`` after a fresh interpreter ran ``code``."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", script], check=True, capture_output=True, text=True, cwd=cwd
    ).stdout
    return {name.partition(".")[0] for name in json.loads(out.splitlines()[-1])}


@pytest.mark.parametrize(
    "module",
    [
        # what ``hyperhive-harness serve`` imports: its CLI, then the serve module
        "hyperhive_harness.cli",
        "hyperhive_harness.serve",
        "hyperhive.cli",
        "hyperhive.supervisor",
        "hyperhive.store",
    ],
)
def test_no_postgresql_driver_on_import(module: str) -> None:
    modules = loaded(f"import {module}")
    assert module.partition(".")[0] in modules
    assert "psycopg" not in modules


def test_the_sqlite_checks_and_url_helpers_leave_the_driver_out(tmp_path: Path) -> None:
    modules = loaded(
        "from pathlib import Path\n"
        "from hyperhive.config import Paths\n"
        "from hyperhive.startup import check_state\n"
        "from hyperhive.store import check_store_url, is_postgresql_url, redact_url\n"
        f"check_state(Paths(state_dir=Path({str(tmp_path / 'state')!r}), "
        f"run_dir=Path({str(tmp_path / 'run')!r})))\n"
        "check_store_url(None)\n"
        "assert is_postgresql_url('postgresql://u:pw@h/db')\n"
        "assert redact_url('postgresql://u:pw@h/db') == 'postgresql://u:***@h/db'\n"
    )
    assert "psycopg" not in modules


@pytest.mark.parametrize("name", ["PgDatabase", "open_pg_database", "check_pg_database"])
def test_the_engine_names_load_the_driver_on_use(name: str) -> None:
    """The exports stay usable: the engine (and psycopg) comes with the first use."""
    modules = loaded(
        "import hyperhive.store as store\n"
        "import sys\n"
        "assert 'psycopg' not in sys.modules\n"
        f"engine = getattr(store, {name!r})\n"
        f"if {name!r} == 'check_pg_database':\n"
        "    try:\n"
        "        engine('postgresql://nobody@127.0.0.1:1/none?connect_timeout=1', 1)\n"
        "    except store.DatabaseUnusable:\n"
        "        pass\n"
        "else:\n"
        "    from hyperhive.store import _pg\n"
        f"    assert engine is getattr(_pg, {name!r})\n"
    )
    assert "psycopg" in modules


#: What only the daemon needs: an operator's command (a client of host.sock) loads none of it.
DAEMON_ONLY = {"starlette", "hypercorn", "h2", "psycopg", "croniter"}
DAEMON_MODULES = {"hyperhive.supervisor", "hyperhive.web", "hyperhive.broker", "hyperhive.store"}


def cli_modules(*args: str, cwd: Path) -> set[str]:
    """Every module in ``sys.modules`` after ``hyperhive <args>`` ran in a fresh interpreter."""
    script = (
        "import json, sys\n"
        f"sys.argv = ['hyperhive', *{list(args)!r}]\n"
        "from hyperhive.cli import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], check=True, capture_output=True, text=True, cwd=cwd
    ).stdout
    return set(json.loads(out.splitlines()[-1]))


@pytest.mark.parametrize(
    "args",
    [
        ("--help",),
        ("status", "--help"),
        # no daemon there: the command runs to its connection attempt and fails
        ("status", "--run-dir", "run", "--state-dir", "state"),
        ("list", "--run-dir", "run", "--state-dir", "state", "--json"),
    ],
)
def test_an_operator_command_leaves_the_daemon_out(args: tuple[str, ...], tmp_path: Path) -> None:
    modules = cli_modules(*args, cwd=tmp_path)
    assert "hyperhive.cli" in modules
    assert "hyperhive.client" in modules
    assert {name.partition(".")[0] for name in modules} & DAEMON_ONLY == set()
    daemon = {m for m in modules if any(m == d or m.startswith(f"{d}.") for d in DAEMON_MODULES)}
    assert daemon == set()


def test_run_still_loads_the_daemon(tmp_path: Path) -> None:
    """The guard above can fail: ``run`` does import the daemon (here refused at once for an
    unknown --database scheme, after its imports)."""
    modules = cli_modules(
        "run", "--run-dir", "run", "--state-dir", "state", "--database", "mysql://x", cwd=tmp_path
    )
    assert "hyperhive.supervisor" in modules
    assert "starlette" in modules
