"""``GET /metrics``: the daemon's figures in the Prometheus text format, by ``prometheus_client``.

Nothing is counted in memory here: each scrape reads the current values (the registry, the
broker, the spend ledger in ``broker.sqlite``), so the counters that come from the ledger
(cost, tokens, turns, crashes) go on from where they were after a daemon restart. The
values are read with trio first (:func:`read_metrics`), then a :class:`SnapshotCollector`
hands them to a fresh ``CollectorRegistry`` for the exposition.

The state dir's size is a walk of the whole tree: it runs in a worker thread, at most once
per :data:`STATE_DIR_BYTES_EVERY` seconds (:class:`DirSize`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hyperhive.kinds import AgentState, TurnOutcome
from hyperhive.ledger import Sums

if TYPE_CHECKING:
    from hyperhive.hive import Hive

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"


class SnapshotCollector(Collector):
    """A collector of values already read: ``collect`` yields them as they are."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


async def read_metrics(hive: Hive) -> list[Metric]:
    """Every family of ``/metrics``, with the values of now."""
    families: list[Metric] = []
    agents = GaugeMetricFamily("hyperhive_agents", "Agents by state.", labels=["state"])
    counts = dict.fromkeys((s.value for s in AgentState), 0)
    records = hive.registry.all()
    for record in records:
        counts[record.state.value] += 1
    for state, n in counts.items():
        agents.add_metric([state], n)
    families.append(agents)

    unread = await hive.broker.unread_by_recipient()
    unread_family = GaugeMetricFamily(
        "hyperhive_unread_messages",
        "Messages not yet received, by recipient.",
        labels=["recipient"],
    )
    for recipient, n in sorted(unread.items()):
        unread_family.add_metric([recipient], n)
    families.append(unread_family)

    pending = len(await hive.approvals.list(pending_only=True))
    open_questions = len(await hive.questions.list())
    families += [
        _gauge("hyperhive_pending_approvals", "Approvals waiting for the operator.", pending),
        _gauge("hyperhive_open_questions", "Questions not yet resolved.", open_questions),
        CounterMetricFamily(
            "hyperhive_messages_sent",
            "Messages sent since the daemon started.",
            value=hive.broker.sent_total,
        ),
        _gauge(
            "hyperhive_parked_receivers",
            "Receivers parked in a long-poll recv.",
            hive.broker.parked(),
        ),
        _gauge(
            "hyperhive_event_seq", "Events published since the daemon started.", hive.events.seq
        ),
        _gauge(
            "hyperhive_problems",
            "Problems of the daemon itself (see status).",
            len(hive.problems_now()),
        ),
        _gauge(
            "hyperhive_disk_full",
            "1 while writes are refused for lack of space.",
            int(hive.db.full),
        ),
    ]
    space = hive.space.space
    if space is not None:
        families += [
            _gauge("hyperhive_state_dir_free_bytes", "Free space in the state dir.", space.free),
            _gauge(
                "hyperhive_state_dir_min_free_bytes", "The --min-free threshold.", space.threshold
            ),
            _gauge(
                "hyperhive_state_dir_low_space",
                "1 while free space is under --min-free.",
                int(space.low),
            ),
        ]
    if (usage := hive.disk_usage) is not None:  # measured by the daemon every few minutes
        families.append(
            _gauge("hyperhive_state_dir_bytes", "Bytes the state dir takes on disk.", usage.total)
        )
        disk = GaugeMetricFamily(
            "hyperhive_agent_disk_bytes",
            "Bytes an agent's dir and proposed config repo take on disk.",
            labels=["agent"],
        )
        for name, size in sorted(usage.agents.items()):
            disk.add_metric([name], size)
        families.append(disk)
    families += await _ledger_families(hive, [r.name for r in records])
    return families


async def _ledger_families(hive: Hive, names: list[str]) -> list[Metric]:
    _today, total, ctx = await hive.ledger.spend()
    crashes = await hive.ledger.crashes()
    names = sorted(set(names) | set(total) | set(crashes))
    cost = CounterMetricFamily(
        "hyperhive_agent_cost_usd", "USD spent by the agent's turns (the ledger).", labels=["agent"]
    )
    tokens = CounterMetricFamily(
        "hyperhive_agent_tokens", "Tokens of the agent's turns, by kind.", labels=["agent", "kind"]
    )
    turns = CounterMetricFamily(
        "hyperhive_agent_turns", "The agent's turns, by outcome.", labels=["agent", "outcome"]
    )
    crashed = CounterMetricFamily(
        "hyperhive_agent_crashes", "Unexpected exits of the agent's container.", labels=["agent"]
    )
    context = GaugeMetricFamily(
        "hyperhive_agent_context_tokens", "Context size of the agent's last turn.", labels=["agent"]
    )
    paused = GaugeMetricFamily(
        "hyperhive_agent_paused", "1 while the agent is paused.", labels=["agent"]
    )
    for name in names:
        sums = total.get(name, Sums())
        cost.add_metric([name], sums.cost_usd)
        for kind, value in (
            ("input", sums.input_tokens),
            ("output", sums.output_tokens),
            ("cache_read", sums.cache_read_tokens),
            ("cache_creation", sums.cache_creation_tokens),
        ):
            tokens.add_metric([name, kind], value)
        by_outcome = dict(sums.outcomes)
        for outcome in TurnOutcome:
            turns.add_metric([name, outcome.value], by_outcome.get(outcome, 0))
        crashed.add_metric([name], crashes.get(name, 0))
        if name in ctx:
            context.add_metric([name], ctx[name])
        paused.add_metric([name], int(hive.is_paused(name)))
    return [cost, tokens, turns, crashed, context, paused]


async def metrics_text(hive: Hive) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(await read_metrics(hive)))
    return generate_latest(registry)
