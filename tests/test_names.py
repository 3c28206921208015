import pytest
from hypothesis import given
from hypothesis import strategies as st

from hyperhive.config import Paths
from hyperhive.names import InvalidAgentName, machine_name, parse_agent_name


@pytest.mark.parametrize("name", ["a", "alice", "bob-2", "a23456789", "x-y-z"])
def test_valid_names(name: str) -> None:
    assert parse_agent_name(name) == name
    assert len(machine_name(name)) <= 11


@pytest.mark.parametrize(
    "name",
    ["", "../x", "a/b", "UPPER", "toolongname1", "1abc", "-ab", "a b", "alice\n", "é", ".", "a.b"],
)
def test_invalid_names(name: str) -> None:
    with pytest.raises(InvalidAgentName):
        parse_agent_name(name)


@pytest.mark.parametrize("name", ["operator", "system", "reminder", "manager"])
def test_reserved_names(name: str) -> None:
    with pytest.raises(InvalidAgentName, match="reserved"):
        parse_agent_name(name)


def test_manager_only_when_allowed() -> None:
    assert parse_agent_name("manager", allow_manager=True) == "manager"
    with pytest.raises(InvalidAgentName):
        parse_agent_name("operator", allow_manager=True)
    assert machine_name("manager") == "hm1nd"


def test_non_string() -> None:
    with pytest.raises(InvalidAgentName, match="string"):
        parse_agent_name(5)


@given(st.text(max_size=30))
def test_paths_never_escape(raw: str) -> None:
    paths = Paths(
        state_dir=__import__("pathlib").Path("/s"), run_dir=__import__("pathlib").Path("/r")
    )
    try:
        agent_dir = paths.agent_dir(raw)
        sock = paths.agent_socket(raw)
    except InvalidAgentName:
        return
    assert agent_dir.parent.as_posix() == "/s/agents"
    assert sock.as_posix() in (f"/r/agents/{raw}/mcp.sock", "/r/manager/mcp.sock")
