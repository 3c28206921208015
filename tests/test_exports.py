"""The public API of each package, pinned (trio's ``_tests/test_exports.py`` model).

A name added to or dropped from a package's surface fails here until the list below says
so: a change of the API is a decision, never a side effect of a refactoring.
"""

from __future__ import annotations

import importlib
import pkgutil
import types

import pytest

#: ``__all__`` of each package; it must also be everything public the package holds.
ALL: dict[str, list[str]] = {
    "hyperhive.store": [
        "BROKER_MIGRATIONS",
        "Database",
        "DatabaseClosed",
        "DatabaseFailed",
        "DatabaseStatistics",
        "DatabaseUnusable",
        "Migration",
        "check_database",
        "connect",
        "free_bytes",
        "is_disk_full",
        "open_database",
        # PostgreSQL as a second engine
        "Conn",
        "Dialect",
        "PgDatabase",
        "Row",
        "check_pg_database",
        "check_store_url",
        "dialect",
        "insert_id",
        "is_postgresql_url",
        "open_pg_database",
        "open_store",
        "redact_url",
        # singleton duties (hyperhive/duties.py)
        "LockLost",
    ],
    "hyperhive.containers": [
        "AgentRunner",
        "AgentSpec",
        "Backend",
        "CgroupLimits",
        "Containers",
        "FakeBackend",
        "FakeHandle",
        "FakeStart",
        "Handle",
        "NspawnBackend",
        "PayloadHandle",
        "ProcessBackend",
        "RestartPolicy",
        "RunRecord",
        "STOP_GRACE_SECONDS",
        "Started",
        "adopt",
        "default_harness_command",
        "start_ticks",
        "tail_lines",
    ],
    "hyperhive.web": ["Auth", "Dashboard", "load_or_create_token", "serve_dashboard"],
    "hyperhive.protocol": [
        "AGENT_TABLE",
        "CONVERTER",
        "EVENT_PAYLOADS",
        "EventPayload",
        "HOST_TABLE",
        "LineBuffer",
        "MANAGER_TABLE",
        "OVERSIZED",
        "Oversized",
        "REPLIES",
        "Reply",
        "Request",
        "RequestTable",
        "SYSTEM_MESSAGES",
        "SystemMessage",
        "encode_error",
        "encode_reply",
        "encode_request",
        "event_data",
        "json_schema",
        "kinds_js",
        "structure",
        "system_body",
    ],
}

#: The wire types and bounds ``hyperhive.protocol`` re-exports from its private modules
#: besides ``__all__`` (every request and reply class is part of the protocol).
PROTOCOL_TYPES = [
    "Ack",
    "AckReply",
    "AddSchedule",
    "AgentInfo",
    "AgentMetaReply",
    "AgentReply",
    "AgentStats",
    "AgentStatsReply",
    "AgentsReply",
    "Answer",
    "ApprovalInfo",
    "ApprovalReply",
    "Approvals",
    "ApprovalsReply",
    "Approve",
    "Ask",
    "Bounds",
    "CLEAN_TEXT",
    "CancelLooseEnd",
    "CancelQuestion",
    "CancelReminder",
    "CancelSchedule",
    "Compact",
    "Deny",
    "Destroy",
    "EditSchedule",
    "Empty",
    "FireScheduleNow",
    "GetAgentMeta",
    "GetLogs",
    "GetLooseEnds",
    "GetStats",
    "Hello",
    "HelloReply",
    "HostAnswer",
    "HostRequestSpawn",
    "HostSend",
    "HostStatus",
    "HostStatusReply",
    "ID",
    "IdReply",
    "Inbox",
    "Kill",
    "List",
    "ListContainers",
    "ListNodes",
    "ListSchedules",
    "Logs",
    "LogsReply",
    "LooseEnd",
    "LooseEndsReply",
    "Message",
    "NodeView",
    "NodesReply",
    "OutcomeCount",
    "Pause",
    "Pending",
    "QuestionInfo",
    "QuestionReply",
    "Questions",
    "QuestionsReply",
    "Rebuild",
    "Recent",
    "RecentMessage",
    "RecentReply",
    "Recv",
    "RecvReply",
    "Remind",
    "ReminderInfo",
    "ReminderReply",
    "Reminders",
    "RemindersReply",
    "RequestApplyCommit",
    "RequestSchedule",
    "RequestSpawn",
    "Restart",
    "Resume",
    "RetryReminder",
    "Revive",
    "ScheduleInfo",
    "ScheduleReply",
    "SchedulesReply",
    "Send",
    "SendReply",
    "SetModel",
    "SetParent",
    "SetStatus",
    "Spawn",
    "SpendTotals",
    "Start",
    "Stats",
    "StatsReply",
    "Status",
    "StatusReply",
    "Tombstone",
    "Tombstones",
    "TombstonesReply",
    "ToolCount",
    "TurnReport",
    "TurnReportReply",
    "Update",
    "Vacuum",
    "VacuumReply",
    "Wake",
    "Watch",
    "WatchReply",
    "WindowStats",
    "wire",
]

#: The harness package exports nothing itself; its API is its modules (the console script
#: is ``hyperhive_harness.cli:main``; the dashboard renders ``hyperhive_harness.page``).
HARNESS_MODULES = [
    "__main__",
    "claude",
    "cli",
    "commands",
    "config",
    "event_log",
    "login",
    "loop",
    "mcp_host",
    "mcp_http",
    "mcp_server",
    "mcp_shim",
    "model",
    "page",
    "policy",
    "prompt",
    "serve",
    "spend",
    "stream",
    "toolserver",
    "view",
    "web",
]


def public_names(module: types.ModuleType) -> set[str]:
    return {
        name
        for name in dir(module)
        if not name.startswith("_") and not isinstance(getattr(module, name), types.ModuleType)
    }


@pytest.mark.parametrize("package", sorted(ALL))
def test_all_is_pinned_and_every_name_exists(package: str) -> None:
    module = importlib.import_module(package)
    assert sorted(module.__all__) == sorted(ALL[package])
    assert len(set(module.__all__)) == len(module.__all__), "a name twice in __all__"
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert missing == []


@pytest.mark.parametrize("package", ["hyperhive.store", "hyperhive.containers", "hyperhive.web"])
def test_nothing_public_beside_all(package: str) -> None:
    module = importlib.import_module(package)
    assert public_names(module) == set(module.__all__)


def test_the_protocol_re_exports_exactly_its_wire_types() -> None:
    protocol = importlib.import_module("hyperhive.protocol")
    own = {
        name
        for name in public_names(protocol) - set(protocol.__all__)
        if getattr(getattr(protocol, name), "__module__", "").startswith("hyperhive.protocol.")
    }
    assert sorted(own) == PROTOCOL_TYPES


def test_the_harness_package_is_its_modules() -> None:
    harness = importlib.import_module("hyperhive_harness")
    assert public_names(harness) == set()
    modules = sorted(info.name for info in pkgutil.iter_modules(harness.__path__))
    assert modules == HARNESS_MODULES
