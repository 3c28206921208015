"""Fixtures of the harness tests: the mock Anthropic API and the real ``claude`` binary.

- ``mock_api``: a :class:`MockAnthropic` running in the test's nursery (see its module
  docstring for scripting and recorded requests).
- ``claude_bin``: path of the real Claude Code CLI (env ``HYPERHIVE_TEST_CLAUDE``, else the
  project-local ``.tools`` install); skips locally, fails in CI, when it is missing.
- ``claude_home``: an isolated, empty ``HOME`` for one claude run.
- ``claude_env``: the environment for running ``claude_bin`` against ``mock_api`` in
  ``claude_home`` (``mock_api.claude_env(home, **extra)`` builds variants).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from .mock_anthropic import MockAnthropic

try:  # tests/ is not a package: pytest imports its conftest as the top-level "conftest"
    from conftest import need
except ImportError:  # pragma: no cover - tests/ became a package
    from ..conftest import need

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CLAUDE = ROOT / ".tools" / "node_modules" / ".bin" / "claude"


def claude_path() -> Path | None:
    path = Path(os.environ.get("HYPERHIVE_TEST_CLAUDE") or DEFAULT_CLAUDE)
    return path if path.is_file() and os.access(path, os.X_OK) else None


@pytest.fixture
async def mock_api(nursery: trio.Nursery) -> MockAnthropic:
    mock = MockAnthropic()
    await nursery.start(mock.serve)
    return mock


@pytest.fixture
def claude_bin() -> Path:
    path = claude_path()
    need(path is not None, "the Claude Code CLI is not installed (make tools)")
    assert path is not None
    return path


@pytest.fixture
def claude_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    return home


@pytest.fixture
def claude_env(mock_api: MockAnthropic, claude_home: Path) -> dict[str, str]:
    return mock_api.claude_env(claude_home)
