"""Every default, bound, per-agent path and container name is spelled in one place.

``hyperhive/config.py`` holds the daemon's defaults and bounds and (``Paths``) where each
agent's files live on the host; ``hyperhive/contract.py`` what a payload finds in its
container and the environment it gets. These tests read the source (the syntax tree, so
docstrings and comments may still explain the names) and fail when a literal copy appears
anywhere else.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import attrs
import pytest

from hyperhive import config, contract
from hyperhive.config import Config, Paths
from hyperhive.containers import AgentSpec, NspawnBackend, ProcessBackend
from hyperhive_harness.config import HarnessConfig

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("hyperhive", "hyperhive_harness")
#: The two modules allowed to spell the names.
HOMES = {REPO / "hyperhive" / "config.py", REPO / "hyperhive" / "contract.py"}

#: File names of one agent (host side and in the container).
FILE_NAMES = {
    contract.EVENTS_DB_NAME,
    contract.MODEL_FILE_NAME,
    contract.CLAUDE_PID_FILE_NAME,
    contract.CREDENTIALS_FILE_NAME,
    contract.SOCKET_NAME,
    contract.UI_SOCKET_NAME,
    "container.log",
}
#: Directories of one agent, as ``agent_dir / "<name>"``.
SUBDIRS = {"state", "claude", "logs"}
#: In-container paths.
CONTAINER_PATHS = (contract.SOCKET_DIR, contract.STATE_DIR, contract.CLAUDE_DIR, contract.HOME)
#: Defaults an agent.toml, the CLI, the NixOS module and the harness share.
DEFAULT_VALUES = {
    config.DEFAULT_MODEL,
    config.DEFAULT_CPU_QUOTA,
    config.DEFAULT_MEMORY_MAX,
    config.DEFAULT_DASHBOARD_BIND,
}


def _sources() -> Iterator[Path]:
    for package in PACKAGES:
        yield from sorted((REPO / package).rglob("*.py"))


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docstrings or bare string statements."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            found.add(id(node.value))
    return found


def _strings(path: Path) -> Iterator[tuple[int, str, ast.AST | None]]:
    """(line, text, parent) of every string literal in code (f-string parts included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    skip = _docstrings(tree)
    parents: dict[int, ast.AST] = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[id(child)] = node
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            yield node.lineno, node.value, parents.get(id(node))


def _path_offence(text: str, parent: ast.AST | None) -> str | None:
    if text in FILE_NAMES or any(text.endswith("/" + name) for name in FILE_NAMES):
        return "a per-agent file name: use config.Paths or hyperhive.contract"
    if (
        text in SUBDIRS
        and isinstance(parent, ast.BinOp)
        and isinstance(parent.op, ast.Div)
        and isinstance(parent.right, ast.Constant)
        and parent.right.value == text
        # ``<root> / "state"`` is also the daemon's own state dir (the rehearsal's, XDG's).
        and (text != "state" or "agent" in ast.unparse(parent.left))
    ):
        return "a per-agent directory: use config.Paths"
    if any(text == p or text.startswith(p + "/") for p in CONTAINER_PATHS):
        return "an in-container path: use hyperhive.contract"
    return None


def _default_offence(text: str, parent: ast.AST | None) -> str | None:
    return "a default: import it from hyperhive.config" if text in DEFAULT_VALUES else None


Check = Callable[[str, "ast.AST | None"], "str | None"]


def _offences(check: Check, paths: Iterable[Path] | None = None) -> list[str]:
    found = []
    for path in _sources() if paths is None else paths:
        if path in HOMES:
            continue
        for line, text, parent in _strings(path):
            why = check(text, parent)
            if why:
                found.append(f"{path.name}:{line}: {text!r} ({why})")
    return found


def test_sources_are_found() -> None:
    paths = set(_sources())
    assert REPO / "hyperhive" / "supervisor.py" in paths
    assert REPO / "hyperhive_harness" / "config.py" in paths
    assert paths >= HOMES


def test_no_per_agent_path_is_spelled_outside_config_and_contract() -> None:
    assert _offences(_path_offence) == []


def test_defaults_are_spelled_once() -> None:
    assert _offences(_default_offence) == []


def test_the_checks_would_see_a_copy(tmp_path: Path) -> None:
    """The scanner is not blind: each spelling it looks for is found in a sample, and a
    docstring or the daemon's own state root is not."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        'x = agent_dir / "state" / "hyperhive-events.sqlite"\n'
        'y = f"{state}/hyperhive-model"\n'
        'z = "/run/hive/mcp.sock"\n'
        '"""hyperhive-model in a docstring is fine"""\n'
        'root = tmp / "state"\n'
        'logs = spec_dir / "logs"\n'
        'model = "haiku"\n',
        encoding="utf-8",
    )
    assert sorted(f.split(" (")[0] for f in _offences(_path_offence, [sample])) == [
        "sample.py:1: 'hyperhive-events.sqlite'",
        "sample.py:1: 'state'",
        "sample.py:2: '/hyperhive-model'",
        "sample.py:3: '/run/hive/mcp.sock'",
        "sample.py:6: 'logs'",
    ]
    assert _offences(_default_offence, [sample]) == [
        "sample.py:7: 'haiku' (a default: import it from hyperhive.config)"
    ]


def test_environment_names_come_from_the_contract() -> None:
    """The backends set, and the harness reads, the payload's environment by the contract's
    names only; a ``HYPERHIVE_*`` literal there is a second spelling."""
    for rel in ("hyperhive/containers/_backends.py", "hyperhive_harness/config.py"):
        path = REPO / rel
        literal = [
            (line, text) for line, text, _ in _strings(path) if text.startswith("HYPERHIVE_")
        ]
        assert literal == [], rel


def test_role_is_not_in_the_environment() -> None:
    """Nothing reads ``HYPERHIVE_ROLE`` (the harness learns its role from ``hello``)."""
    for path in _sources():
        assert "HYPERHIVE_ROLE" not in path.read_text(encoding="utf-8"), path


def test_daemon_constants_are_defined_once() -> None:
    """No ``Final`` constant of the daemon is defined in two of its modules."""
    where: dict[str, list[str]] = defaultdict(list)
    for path in sorted((REPO / "hyperhive").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and "Final" in ast.unparse(node.annotation)
                and not node.target.id.startswith("_")
            ):
                where[node.target.id].append(str(path.relative_to(REPO)))
    twice = {name: files for name, files in where.items() if len(files) > 1}
    assert twice == {}
    for name in ("DEFAULT_MODEL", "DEFAULT_CPU_QUOTA", "DEFAULT_MEMORY_MAX", "MAX_ID"):
        assert where[name] == ["hyperhive/config.py"], name


def test_harness_defaults_are_the_contract() -> None:
    """With an empty environment the harness looks where the container puts things."""
    cfg = HarnessConfig.from_env({})
    assert str(cfg.socket) == contract.SOCKET
    assert str(cfg.ui_socket) == contract.UI_SOCKET
    assert str(cfg.state_dir) == contract.STATE_DIR
    assert str(cfg.events_db) == contract.EVENTS_DB
    assert str(cfg.model_file) == contract.MODEL_FILE
    assert str(cfg.credentials_file) == contract.CREDENTIALS_FILE


def test_backends_hand_the_harness_what_paths_name(tmp_path: Path) -> None:
    """The process backend's environment, read back by the harness, names the host files
    ``Paths`` gives for that agent; nspawn's names the contract's in-container paths."""
    paths = Paths(state_dir=tmp_path / "state", run_dir=tmp_path / "run")
    spec = AgentSpec(
        name="alice",
        role="agent",
        socket_dir=paths.socket_dir("alice"),
        state_dir=paths.agent_state_dir("alice"),
        claude_dir=paths.claude_dir("alice"),
        log_file=paths.container_log("alice"),
        command=("true",),
    )
    host = HarnessConfig.from_env(ProcessBackend().environment(spec))
    assert host.socket == paths.agent_socket("alice")
    assert host.ui_socket == paths.ui_socket("alice")
    assert host.state_dir == paths.agent_state_dir("alice")
    assert host.events_db == paths.events_db("alice")
    assert host.model_file == paths.model_file("alice")
    assert host.credentials_file == paths.credentials_file("alice")
    inside = HarnessConfig.from_env(NspawnBackend().payload_env(spec))
    assert str(inside.socket) == contract.SOCKET
    assert str(inside.events_db) == contract.EVENTS_DB
    assert str(inside.model_file) == contract.MODEL_FILE
    assert inside.extra_allowed_tools  # the container is the sandbox: built-in tools too
    assert ProcessBackend().environment(spec)[contract.AGENT_ENV] == "alice"


def test_config_defaults() -> None:
    defaults = {f.name: f.default for f in attrs.fields(Config)}
    assert defaults["backend"] == config.DEFAULT_BACKEND == "auto"
    assert config.DEFAULT_BACKEND in config.BACKENDS
    assert AgentSpec.__attrs_attrs__.cpu_quota.default == config.DEFAULT_CPU_QUOTA  # type: ignore[attr-defined]
    assert AgentSpec.__attrs_attrs__.memory_max.default == config.DEFAULT_MEMORY_MAX  # type: ignore[attr-defined]


def test_every_contract_variable_is_documented() -> None:
    """docs/harness.md's environment table lists each variable the contract names."""
    text = (REPO / "docs" / "harness.md").read_text(encoding="utf-8")
    table = text.split("## Environment", 1)[1]
    names = [v for k, v in vars(contract).items() if k.endswith("_ENV") and isinstance(v, str)]
    assert len(names) > 20
    missing = [name for name in names if f"| `{name}` |" not in table]
    assert missing == []


def test_documented_agent_defaults_are_configs() -> None:
    """docs/agent-toml.md's table shows the defaults config.py seeds new agents with."""
    rows = {
        line.split("|")[1].strip(" `"): line.split("|")[3].strip()
        for line in (REPO / "docs" / "agent-toml.md").read_text(encoding="utf-8").splitlines()
        if line.startswith("| `")
    }
    assert rows["model"] == f'`"{config.DEFAULT_MODEL}"`'
    assert rows["cpu_quota"] == f'`"{config.DEFAULT_CPU_QUOTA}"`'
    assert rows["memory_max"] == f'`"{config.DEFAULT_MEMORY_MAX}"`'
    models = ", ".join(f'"{m}"' for m in config.DEFAULT_AVAILABLE_MODELS)
    assert rows["available_models"] == f"`[{models}]`"


def test_agent_toml_cannot_set_a_contract_variable() -> None:
    """Every variable of the contract is reserved: an agent's [env] cannot redirect its
    socket, state or files."""
    from hyperhive.agent_config import RESERVED_ENV_PREFIXES, InvalidAgentConfig, parse_agent_config

    names = [v for k, v in vars(contract).items() if k.endswith("_ENV") and isinstance(v, str)]
    assert all(name.startswith(RESERVED_ENV_PREFIXES) for name in names)
    with pytest.raises(InvalidAgentConfig, match=contract.SOCKET_ENV):
        parse_agent_config(f'[env]\n{contract.SOCKET_ENV} = "/tmp/other.sock"\n')
