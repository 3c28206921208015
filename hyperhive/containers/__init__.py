"""Agents' containers: the backend seam, the real backends, an in-memory one for tests, and
one supervisor per agent."""

from hyperhive.containers._backend import (
    STOP_GRACE_SECONDS,
    AgentSpec,
    Backend,
    Handle,
    PayloadHandle,
    RunRecord,
    Started,
    adopt,
    start_ticks,
    tail_lines,
)
from hyperhive.containers._backends import CgroupLimits, NspawnBackend, ProcessBackend
from hyperhive.containers._fake import FakeBackend, FakeHandle, FakeStart
from hyperhive.containers._manager import Containers, default_harness_command
from hyperhive.containers._policy import RestartPolicy
from hyperhive.containers._runner import AgentRunner

__all__ = [
    "STOP_GRACE_SECONDS",
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
    "Started",
    "adopt",
    "default_harness_command",
    "start_ticks",
    "tail_lines",
]
