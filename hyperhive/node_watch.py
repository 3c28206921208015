"""The nodes of the hive as this node sees them: each one's status, kept for the views.

:class:`NodeWatch` reads the ``nodes`` table every ``NODE_HEARTBEAT_SECONDS`` (and on demand)
and publishes ``node_changed`` when a node's status changes (``up``, ``down`` once silent for
``NODE_DOWN_SECONDS``, ``stopped``): the agent views (:mod:`hyperhive.agent_views`) are built
again for that node's agents, which are shown unreachable while it is not up, and the
dashboard takes a fresh snapshot. Between two reads the statuses are the last read ones: a
listing reads no table. This node is always ``up`` to itself.

The sans-IO part: :func:`changes` (which statuses changed between two reads) and
:func:`node_views` (the operator's table of nodes).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Final

import trio

from hyperhive.config import NODE_HEARTBEAT_SECONDS
from hyperhive.events import EventHub
from hyperhive.kinds import NodeStatus
from hyperhive.nodes import NodeInfo, Nodes
from hyperhive.protocol import NodeView
from hyperhive.protocol.event_payloads import NodeChanged

log = logging.getLogger(__name__)

#: Seconds between two reads of the nodes' statuses.
NODE_WATCH_SECONDS: Final = NODE_HEARTBEAT_SECONDS


def changes(before: Mapping[str, NodeStatus], after: Mapping[str, NodeStatus]) -> list[NodeChanged]:
    """The nodes whose status differs between two reads (new ones included), by name."""
    return [
        NodeChanged(node=name, status=status, previous=before.get(name))
        for name, status in sorted(after.items())
        if before.get(name) != status
    ]


def node_views(
    infos: Iterable[NodeInfo],
    statuses: Mapping[str, NodeStatus],
    agents: Mapping[str, int],
    this: str,
    now: float,
) -> list[NodeView]:
    """The operator's table of nodes (by name)."""
    return [
        NodeView(
            name=info.name,
            host=info.host,
            status=statuses.get(info.name, NodeStatus.UP),
            heartbeat_at=info.heartbeat_at,
            heartbeat_age_seconds=max(0.0, now - info.heartbeat_at),
            agents=agents.get(info.name, 0),
            dashboard_url=info.dashboard_url,
            this=info.name == this,
        )
        for info in sorted(infos, key=lambda i: i.name)
    ]


class NodeWatch:
    """The last read status of every node; see the module docstring."""

    def __init__(
        self,
        nodes: Nodes,
        events: EventHub,
        *,
        clock: Callable[[], float],
        interval: float = NODE_WATCH_SECONDS,
    ) -> None:
        self._nodes = nodes
        self._events = events
        self._clock = clock
        self._interval = interval
        self.infos: list[NodeInfo] = []
        self._statuses: dict[str, NodeStatus] = {}
        self._checking = trio.Lock()

    @property
    def this(self) -> str:
        return self._nodes.name

    def status(self, node: str) -> NodeStatus:
        """A node's last read status: this node is up; a node not read yet is taken as up
        (nothing says it is down)."""
        if node == self._nodes.name:
            return NodeStatus.UP
        return self._statuses.get(node, NodeStatus.UP)

    async def check(self) -> None:
        """Read the nodes now; publish each change of status (one read at a time, so a
        change is published once)."""
        async with self._checking:
            await self._check()

    async def _check(self) -> None:
        infos = await self._nodes.all()
        now = self._clock()
        after = {
            info.name: NodeStatus.UP
            if info.name == self._nodes.name
            else info.status(now, self._nodes.down_after)
            for info in infos
        }
        found = changes(self._statuses, after)
        self.infos, self._statuses = infos, after
        for change in found:
            if change.previous is not None or change.status != NodeStatus.UP:
                log.info("node %s is %s (was %s)", change.node, change.status, change.previous)
            self._events.emit(change)

    def views(self, agents: Mapping[str, int]) -> list[NodeView]:
        """The table of nodes from the last read (``agents``: live agents per node)."""
        return node_views(self.infos, self._statuses, agents, self._nodes.name, self._clock())

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Read now, then every ``interval`` seconds (on a store no other node shares, only
        now: this node is the only one, and always up to itself)."""
        await self.check()
        task_status.started()
        if not self._nodes.shared:
            await trio.sleep_forever()
        while True:
            await trio.sleep(self._interval)
            await self.check()


__all__ = ["NODE_WATCH_SECONDS", "NodeWatch", "changes", "node_views"]
