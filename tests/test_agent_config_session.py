"""agent.toml ``[session]``: the compaction watermark, validated and handed to the harness."""

from __future__ import annotations

import pytest

from hyperhive import contract
from hyperhive.agent_config import (
    SEED_AGENT_TOML,
    AgentConfig,
    InvalidAgentConfig,
    parse_agent_config,
)
from hyperhive.config import DEFAULT_COMPACT_AT_PERCENT
from hyperhive.hive import session_env
from hyperhive_harness.config import HarnessConfig


def test_the_watermark_defaults_to_75_percent_and_the_seed_says_so() -> None:
    assert DEFAULT_COMPACT_AT_PERCENT == 75
    assert AgentConfig().compact_at_percent == 75
    assert parse_agent_config(SEED_AGENT_TOML) == AgentConfig()
    assert "[session]\ncompact_at_percent = 75" in SEED_AGENT_TOML
    assert parse_agent_config("[session]\n").compact_at_percent == 75


@pytest.mark.parametrize("value", [0, 1, 60, 100])
def test_a_watermark_from_0_to_100_is_taken(value: int) -> None:
    config = parse_agent_config(f"[session]\ncompact_at_percent = {value}\n")
    assert config.compact_at_percent == value


@pytest.mark.parametrize("value", ["101", "-1", "true", '"75"', "75.0"])
def test_anything_else_is_refused_by_name(value: str) -> None:
    with pytest.raises(InvalidAgentConfig, match=r"session\.compact_at_percent"):
        parse_agent_config(f"[session]\ncompact_at_percent = {value}\n")


def test_unknown_session_keys_and_a_non_table_are_refused() -> None:
    with pytest.raises(InvalidAgentConfig, match="session: unknown key 'compact_at'"):
        parse_agent_config("[session]\ncompact_at = 50\n")
    with pytest.raises(InvalidAgentConfig, match="session must be a table"):
        parse_agent_config("session = 50\n")


def test_the_harness_gets_the_watermark_in_its_environment() -> None:
    env = session_env(parse_agent_config("[session]\ncompact_at_percent = 40\n"))
    assert env == {contract.COMPACT_AT_PERCENT_ENV: "40"}
    assert HarnessConfig.from_env(env).compact_at_percent == 40
    off = session_env(parse_agent_config("[session]\ncompact_at_percent = 0\n"))
    assert HarnessConfig.from_env(off).compact_at_percent == 0
