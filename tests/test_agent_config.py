"""agent.toml: the seed, every key's checks, and that nothing but InvalidAgentConfig escapes."""

from __future__ import annotations

import datetime
import json
import math
import os
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hyperhive.agent_config import (
    KNOWN_KEYS,
    MAX_AGENT_TOML_BYTES,
    SEED_AGENT_TOML,
    AgentConfig,
    ExtraMcpServer,
    InvalidAgentConfig,
    agent_config_from_dict,
    load_agent_config,
    parse_agent_config,
)
from hyperhive.errors import RequestRefused

FULL_EXAMPLE = """\
model = "sonnet"
available_models = ["sonnet", "opus"]
allowed_recipients = ["alice", "bob-2", "manager", "operator"]
cpu_quota = "150%"
memory_max = "512M"
description = "reviews pull requests"

[env]
RUST_LOG = "info"
_private = ""

[extra_mcp_servers.fetch]
command = ["uvx", "--quiet"]
args = ["mcp-server-fetch"]
allowed_tools = ["fetch"]
env = { FETCH_UA = "hyperhive" }

[extra_mcp_servers.git-tools]
command = "/usr/bin/git-mcp"
allowed_tools = ["*"]
"""


def test_seed_parses_to_the_defaults() -> None:
    assert parse_agent_config(SEED_AGENT_TOML) == AgentConfig()
    assert AgentConfig().model == "haiku"
    assert AgentConfig().cpu_quota == "200%"
    assert AgentConfig().memory_max == "4G"
    assert parse_agent_config("") == AgentConfig()


def test_seed_documents_every_key() -> None:
    for key in KNOWN_KEYS:
        assert f"{key} =" in SEED_AGENT_TOML or f"[{key}]" in SEED_AGENT_TOML, key
    # The commented example of an extra server is valid once uncommented.
    example = SEED_AGENT_TOML.split("[extra_mcp_servers]\n", 1)[1]
    uncommented = "\n".join(line.removeprefix("# ") for line in example.splitlines())
    servers = parse_agent_config(uncommented).extra_mcp_servers
    assert servers["fetch"].argv == ["uvx", "mcp-server-fetch"]


def test_docs_list_every_key() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "agent-toml.md").read_text()
    for key in KNOWN_KEYS:
        assert f"`{key}`" in doc, key
    # The example in the docs is valid.
    example = doc.split("```toml\n", 1)[1].split("```", 1)[0]
    parse_agent_config(example)


def test_full_example() -> None:
    config = parse_agent_config(FULL_EXAMPLE)
    assert config.model == "sonnet"
    assert config.available_models == ["sonnet", "opus"]
    assert config.allowed_recipients == ["alice", "bob-2", "manager", "operator"]
    assert config.env == {"RUST_LOG": "info", "_private": ""}
    assert config.cpu_quota_percent == 150
    assert config.memory_max_bytes == 512 * 1024 * 1024
    assert config.description == "reviews pull requests"
    assert config.extra_mcp_servers == {
        "fetch": ExtraMcpServer(
            command="uvx",
            args=["--quiet", "mcp-server-fetch"],
            env={"FETCH_UA": "hyperhive"},
            allowed_tools=["fetch"],
        ),
        "git-tools": ExtraMcpServer(command="/usr/bin/git-mcp", allowed_tools=["*"]),
    }
    assert config.mcp_allowed_tools() == ["mcp__fetch__fetch", "mcp__git-tools"]
    assert config.mcp_config() == {
        "mcpServers": {
            "fetch": {
                "type": "stdio",
                "command": "uvx",
                "args": ["--quiet", "mcp-server-fetch"],
                "env": {"FETCH_UA": "hyperhive"},
            },
            "git-tools": {"type": "stdio", "command": "/usr/bin/git-mcp", "args": [], "env": {}},
        }
    }


@pytest.mark.parametrize(
    ("memory_max", "expected"),
    [("1", 1), ("4K", 4096), ("4G", 4 * 1024**3), ("2T", 2 * 1024**4), ("infinity", None)],
)
def test_memory_max_bytes(memory_max: str, expected: int | None) -> None:
    config = parse_agent_config(f'memory_max = "{memory_max}"')
    assert config.memory_max_bytes == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('cpu_quota = "2 cores"', "agent.toml: cpu_quota '2 cores' must look like '200%'"),
        ('cpu_quota = "0%"', "cpu_quota '0%' must be at least 1%"),
        ("cpu_quota = 200", "cpu_quota must be a string, not an integer"),
        ('memory_max = "4GB"', "memory_max '4GB' must look like '4G'"),
        ('memory_max = "-1G"', "memory_max '-1G' must look like '4G'"),
        ('memory_max = "0"', "memory_max '0' must be more than 0"),
        ("memory_max = 4", "memory_max must be a string, not an integer"),
        ('model = "gpt-5"', "model 'gpt-5' is not one of available_models (haiku, sonnet, opus)"),
        ('model = "two words"', "model 'two words' must be one word"),
        ('model = ""', "model '' must be one word"),
        ("model = true", "model must be a string, not a boolean"),
        ("available_models = []", "available_models must list at least one model"),
        ('available_models = "haiku"', "available_models must be an array of strings"),
        ("available_models = [1]", "available_models[0] must be a string, not an integer"),
        ('available_models = ["a b"]', "available_models: 'a b' must be one word"),
        ('allowed_recipients = ["Bob"]', "allowed_recipients[0]: invalid agent name 'Bob'"),
        (
            'allowed_recipients = ["system"]',
            "allowed_recipients[0]: agent name 'system' is reserved",
        ),
        ('allowed_recipients = ["*"]', "allowed_recipients[0]: invalid agent name '*'"),
        ("allowed_recipients = [[]]", "allowed_recipients[0] must be a string, not an array"),
        ('env = "X=1"', "env must be a table, not a string"),
        ('[env]\nPATH = "/tmp"', "env: PATH is set by hyperhive and cannot be overridden"),
        ('[env]\nHOME = "/tmp"', "env: HOME is set by hyperhive"),
        ('[env]\nHYPERHIVE_AGENT = "x"', "env: HYPERHIVE_AGENT is set by hyperhive"),
        ('[env]\n"1X" = "x"', "env: '1X' is not an environment variable name"),
        ('[env]\n"A-B" = "x"', "env: 'A-B' is not an environment variable name"),
        ("[env]\nX = 1", "env.X must be a string, not an integer"),
        ('[env]\nX = "a\\u0000b"', "env.X contains a NUL character"),
        ('[extra_mcp_servers.hyperhive]\ncommand = "x"', "'hyperhive' is reserved"),
        ('[extra_mcp_servers.HyperHive]\ncommand = "x"', "'HyperHive' is reserved"),
        ('[extra_mcp_servers."a b"]\ncommand = "x"', "server name 'a b' must be"),
        ("[extra_mcp_servers.x]\nargs = []", "extra_mcp_servers.x.command is missing"),
        ("[extra_mcp_servers.x]\ncommand = []", "extra_mcp_servers.x.command is an empty array"),
        ('[extra_mcp_servers.x]\ncommand = " "', "extra_mcp_servers.x.command is empty"),
        ("[extra_mcp_servers.x]\ncommand = 3", "extra_mcp_servers.x.command must be a string"),
        ('[extra_mcp_servers.x]\ncommand = "c"\nargs = "a"', "extra_mcp_servers.x.args must be"),
        (
            '[extra_mcp_servers.x]\ncommand = "c"\nport = 1',
            "extra_mcp_servers.x: unknown key 'port'",
        ),
        (
            '[extra_mcp_servers.x]\ncommand = "c"\nenv = { "a=b" = "c" }',
            "extra_mcp_servers.x.env: 'a=b' is not an environment variable name",
        ),
        (
            '[extra_mcp_servers.x]\ncommand = "c"\nallowed_tools = ["a b"]',
            "extra_mcp_servers.x.allowed_tools[0] 'a b' must be a tool name",
        ),
        ("extra_mcp_servers = [1]", "extra_mcp_servers must be a table, not an array"),
        ("[extra_mcp_servers]\nx = 1", "extra_mcp_servers.x must be a table, not an integer"),
        ("description = 3", "description must be a string, not an integer"),
        (f'description = "{"x" * 2001}"', "description is longer than 2000 characters"),
        ("modle = 'haiku'", "unknown key 'modle' (known keys: model, available_models"),
        ("when = 1979-05-27", "unknown key 'when'"),
        ("model = 1979-05-27", "model must be a string, not a date/time"),
        ("model = 1.5", "model must be a string, not a float"),
        ("model = {}", "model must be a string, not a table"),
        ('lead = "yes"', "lead must be a boolean (true or false), not a string"),
        ("lead = 1", "lead must be a boolean (true or false), not an integer"),
    ],
)
def test_invalid_values_name_the_key(text: str, expected: str) -> None:
    with pytest.raises(InvalidAgentConfig) as info:
        parse_agent_config(text)
    assert expected in str(info.value)
    assert str(info.value).startswith("agent.toml: ")
    assert isinstance(info.value, RequestRefused)


def test_lead_is_a_boolean_off_by_default() -> None:
    assert parse_agent_config("").lead is False
    assert parse_agent_config("lead = true").lead is True
    assert parse_agent_config("lead = false").lead is False


def test_syntax_error_gives_line_and_column() -> None:
    with pytest.raises(InvalidAgentConfig, match=r"not valid TOML: .*line 2, column 7"):
        parse_agent_config('model = "haiku"\nmodel "sonnet"\n')
    with pytest.raises(InvalidAgentConfig, match="not valid TOML"):
        parse_agent_config('model = "haiku"\nmodel = "sonnet"\n')  # duplicate key


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(InvalidAgentConfig) as info:
        parse_agent_config('cpu_quota = "x"\nmemory_max = "y"\nbogus = 1\n[env]\nPATH = "/"')
    problems = info.value.problems
    assert len(problems) == 4
    assert [p.split(" ")[0] for p in problems] == ["unknown", "env:", "cpu_quota", "memory_max"]


def test_model_checked_against_given_available_models() -> None:
    assert parse_agent_config('model = "x1"\navailable_models = ["x1"]').model == "x1"
    with pytest.raises(InvalidAgentConfig, match="'haiku' is not one of available_models"):
        parse_agent_config('available_models = ["opus"]')


def test_oversized_file_refused() -> None:
    text = 'description = ""\n' + "#" * MAX_AGENT_TOML_BYTES
    with pytest.raises(InvalidAgentConfig, match="larger than"):
        parse_agent_config(text)


def test_load_agent_config(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    assert load_agent_config(path) == AgentConfig()
    path.write_text('model = "opus"\n')
    assert load_agent_config(path).model == "opus"
    path.write_bytes(b'description = "\xff"\n')
    with pytest.raises(InvalidAgentConfig, match="not valid UTF-8"):
        load_agent_config(path)
    path.write_bytes(b"#" * (MAX_AGENT_TOML_BYTES + 1))
    with pytest.raises(InvalidAgentConfig, match="larger than"):
        load_agent_config(path)


def test_load_refuses_symlink_and_non_files(tmp_path: Path) -> None:
    secret = tmp_path / "secret.toml"
    secret.write_text('model = "opus"\n')
    link = tmp_path / "agent.toml"
    link.symlink_to(secret)
    with pytest.raises(InvalidAgentConfig, match="symlink"):
        load_agent_config(link)
    directory = tmp_path / "dir.toml"
    directory.mkdir()
    with pytest.raises(InvalidAgentConfig, match="not a regular file"):
        load_agent_config(directory)
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    with pytest.raises(InvalidAgentConfig, match="not a regular file"):
        load_agent_config(fifo)  # must not block waiting for a writer


# ---------------------------------------------------------------- properties

toml_scalars = (
    st.text(max_size=12)
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats()
    | st.booleans()
    | st.dates()
    | st.datetimes()
    | st.times()
)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
interesting_keys = st.sampled_from([*KNOWN_KEYS, "command", "args", "PATH", "hyperhive", "x"])
#: Values near the valid ones, so validation gets past the type checks often.
near_values = (
    toml_values
    | st.sampled_from(["haiku", "200%", "4G", "infinity", "0%", "alice", "operator", "", "PATH"])
    | st.lists(st.sampled_from(["haiku", "alice", "manager", "*", "X"]), max_size=3)
)
servers = st.dictionaries(
    st.sampled_from(["fetch", "hyperhive", "a b", "x"]),
    st.dictionaries(st.sampled_from(["command", "args", "env", "allowed_tools", "y"]), near_values),
    max_size=2,
)
config_dicts = st.dictionaries(
    interesting_keys | st.text(max_size=8),
    near_values | servers,
    max_size=6,
)


def _toml_string(text: str) -> str:
    # JSON escapes are TOML basic-string escapes; TOML also wants DEL escaped.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_key(key: str) -> str:
    return _toml_string(key)


def _toml_value(value: object) -> str:
    """A tiny TOML writer (inline tables and arrays), enough for the property tests."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise AssertionError(type(value))


def to_toml(data: dict[str, object]) -> str:
    return "".join(f"{_toml_key(k)} = {_toml_value(v)}\n" for k, v in data.items())


@given(config_dicts)
@settings(max_examples=400)
def test_any_dict_gives_a_config_or_invalid_agent_config(data: dict[str, object]) -> None:
    try:
        config = agent_config_from_dict(data)
    except InvalidAgentConfig as exc:
        assert exc.problems
        assert str(exc).startswith("agent.toml: ")
    else:
        assert isinstance(config, AgentConfig)
        assert set(data) <= set(KNOWN_KEYS)


@given(config_dicts)
@settings(max_examples=300)
def test_any_toml_document_gives_a_config_or_invalid_agent_config(
    data: dict[str, object],
) -> None:
    text = to_toml(data)
    assert tomllib.loads(text).keys() == data.keys()  # the writer above is sound
    try:
        parse_agent_config(text)
    except InvalidAgentConfig as exc:
        assert exc.problems


@given(st.text(max_size=200))
def test_any_text_gives_a_config_or_invalid_agent_config(text: str) -> None:
    try:
        parse_agent_config(text)
    except InvalidAgentConfig as exc:
        assert exc.problems


env_names = st.from_regex(r"[A-Z][A-Z0-9_]{0,10}", fullmatch=True).filter(
    lambda n: (
        n not in {"PATH", "HOME", "USER", "SHELL", "PWD", "TERM", "LOGNAME"}
        and not n.startswith(("HYPERHIVE_", "LD_", "PYTHON", "CLAUDE_", "NOTIFY_", "VIRTUAL_"))
    )
)
plain_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=20)


@given(
    model=st.sampled_from(["haiku", "sonnet", "opus"]),
    recipients=st.lists(st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True), max_size=4).filter(
        lambda names: not {"system", "reminder"} & set(names)
    ),
    env=st.dictionaries(env_names, plain_text, max_size=3),
    cpu=st.integers(min_value=1, max_value=9999),
    memory=st.integers(min_value=1, max_value=9999),
    unit=st.sampled_from(["", "K", "M", "G", "T"]),
    description=plain_text,
)
def test_valid_configs_round_trip(
    model: str,
    recipients: list[str],
    env: dict[str, str],
    cpu: int,
    memory: int,
    unit: str,
    description: str,
) -> None:
    data: dict[str, object] = {
        "model": model,
        "allowed_recipients": recipients,
        "env": env,
        "cpu_quota": f"{cpu}%",
        "memory_max": f"{memory}{unit}",
        "description": description,
    }
    config = parse_agent_config(to_toml(data))
    assert config.model == model
    assert config.allowed_recipients == recipients
    assert config.env == env
    assert config.cpu_quota_percent == cpu
    assert (
        config.memory_max_bytes
        == memory * {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}[unit]
    )
    assert config.description == description
