"""The spend ledger end to end: the real claude CLI against the scripted API, its harness
reporting each turn, a real daemon recording it. The ledger (``broker.sqlite``), the
dashboard's ``/api/state``, ``hyperhive stats --json`` and ``/metrics`` (parsed with
``prometheus_client``) agree to the cent with what claude's ``result`` events said, also
after a daemon restart (with a report made while the daemon was down) and a revival."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.dashboard.conftest import http

from ..conftest import DaemonProcess
from .fixtures import (
    Harness,
    eventually,
    make_harness,
    operator_send,
    running,
    wait_acked,
)
from .mock_anthropic import MockAnthropic, hold, text


def claude_results(alice: Harness) -> list[dict[str, Any]]:
    """The ``result`` event of each claude run, as the harness logged claude's output."""
    return [
        e["payload"]["value"]
        for e in alice.events("stream")
        if e["payload"]["value"].get("type") == "result"
    ]


def expected(results: list[dict[str, Any]]) -> dict[str, float]:
    usage = [r["usage"] for r in results]
    return {
        "cost": round(sum(r["total_cost_usd"] for r in results), 2),
        "input": sum(u["input_tokens"] for u in usage),
        "output": sum(u["output_tokens"] for u in usage),
        "turns": len(results),
    }


def ledger_rows(db: Path) -> list[sqlite3.Row]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute("SELECT * FROM ledger_turns WHERE agent = 'alice'").fetchall()
    finally:
        conn.close()


def stats_cli(daemon: DaemonProcess) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "hyperhive",
            "stats",
            "--json",
            "--run-dir",
            str(daemon.paths.run_dir),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=daemon.env,
    )
    return dict(json.loads(out.stdout))


async def dashboard(daemon: DaemonProcess) -> tuple[dict[str, Any], str]:
    assert daemon.dashboard_login is not None
    base, _, query = daemon.dashboard_login.partition("/login")
    login = await http(base, "GET", "/login" + query)
    cookie = (login.header("set-cookie") or "").split(";", 1)[0]
    state = await http(base, "GET", "/api/state", headers={"cookie": cookie})
    metrics = await http(base, "GET", "/metrics", headers={"cookie": cookie})
    assert state.status == 200 and metrics.status == 200
    return state.json(), metrics.body.decode()


def metric(text: str, family: str, **labels: str) -> float:
    for fam in text_string_to_metric_families(text):
        if fam.name != family:
            continue
        for sample in fam.samples:
            if sample.name.endswith("_created"):
                continue
            if all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    raise AssertionError(f"no {family}{labels} in /metrics")


async def check_agreement(daemon: DaemonProcess, alice: Harness) -> dict[str, float]:
    """Every view of alice's spend agrees with claude's own figures; returns them."""
    want = expected(claude_results(alice))
    assert want["turns"] > 0 and want["cost"] > 0

    def recorded() -> list[sqlite3.Row] | None:
        rows = ledger_rows(daemon.paths.broker_db)
        return rows if len(rows) == want["turns"] else None

    rows = await eventually(recorded, what=f"{want['turns']} ledger rows")
    assert round(sum(r["cost_micros"] for r in rows) / 1e6, 2) == want["cost"]
    assert sum(r["input_tokens"] for r in rows) == want["input"]
    assert sum(r["output_tokens"] for r in rows) == want["output"]
    assert {r["outcome"] for r in rows} == {"ok"}

    stats = await trio.to_thread.run_sync(stats_cli, daemon)
    [mine] = [a for a in stats["agents"] if a["name"] == "alice"]
    assert round(mine["total"]["cost_usd"], 2) == want["cost"]
    assert round(mine["today"]["cost_usd"], 2) == want["cost"]
    assert round(stats["hive"]["total"]["cost_usd"], 2) == want["cost"]
    assert mine["total"]["input_tokens"] == want["input"]
    assert mine["total"]["output_tokens"] == want["output"]
    assert mine["total"]["turns"] == want["turns"]
    day = next(w for w in mine["windows"] if w["window"] == "24h")
    assert day["turns"] == want["turns"] and round(day["cost_usd"], 2) == want["cost"]
    assert day["duration_p50"] is not None and day["ctx_max"] is not None

    state, metrics = await dashboard(daemon)
    [row] = [a for a in state["agents"] if a["name"] == "alice"]
    assert round(row["cost_total_usd"], 2) == want["cost"]
    assert round(row["cost_today_usd"], 2) == want["cost"]
    assert row["ctx_tokens"] == mine["ctx_tokens"] is not None
    assert round(metric(metrics, "hyperhive_agent_cost_usd", agent="alice"), 2) == want["cost"]
    tokens_in = metric(metrics, "hyperhive_agent_tokens", agent="alice", kind="input")
    assert tokens_in == want["input"]
    assert metric(metrics, "hyperhive_agent_tokens", agent="alice", kind="output") == want["output"]
    assert metric(metrics, "hyperhive_agent_turns", agent="alice", outcome="ok") == want["turns"]
    assert metric(metrics, "hyperhive_agent_context_tokens", agent="alice") == row["ctx_tokens"]
    assert metric(metrics, "hyperhive_state_dir_bytes") > 0
    return want


async def turn(daemon: DaemonProcess, alice: Harness, body: str) -> None:
    sent = await operator_send(daemon.paths.host_socket, "alice", body)
    end = await alice.wait_for("turn_end", lambda p: p["id"] == sent)
    assert end[0]["payload"]["ok"] is True, alice.failure_help()
    await wait_acked(daemon.paths.agent_socket("alice"), sent)


async def test_ledger_stats_dashboard_and_metrics_agree_across_restart_and_revival(
    daemon: DaemonProcess,
    mock_api: MockAnthropic,
    claude_bin: Path,
    short_tmp: Path,
    nursery: trio.Nursery,
) -> None:
    assert (await daemon.call({"cmd": "spawn", "name": "alice"}))["ok"]
    # Big enough token counts that each turn costs cents.
    mock_api.default = text("done", input_tokens=120_000, output_tokens=30_000)
    alice = make_harness(
        "alice",
        mock_api,
        claude_bin,
        short_tmp,
        daemon.paths.agent_socket("alice"),
        HYPERHIVE_RECONNECT_BACKOFF="0.2,0.4,0.8",
    )
    async with running(alice, nursery):
        await turn(daemon, alice, "first")
        await turn(daemon, alice, "second")
        before = await check_agreement(daemon, alice)
        assert before["turns"] == 2

        # A turn that ends while the daemon is down: its report waits and is recorded once.
        gate = hold(text("late", input_tokens=50_000, output_tokens=10_000))
        mock_api.script(gate)
        sent = await operator_send(daemon.paths.host_socket, "alice", "during-downtime")
        with trio.fail_after(30):
            await gate.arrived.wait()
        assert await daemon.stop() == 0
        gate.release()
        await alice.wait_for("turn_end", lambda p: p["id"] == sent)
        await alice.wait_for("status_changed", lambda p: p["status"] == "disconnected")
        await daemon.start(nursery)
        await wait_acked(daemon.paths.agent_socket("alice"), sent)
        after_restart = await check_agreement(daemon, alice)
        assert after_restart["turns"] == 3 and after_restart["cost"] > before["cost"]

        # Destroy and revive: the ledger is keyed by name and goes on.
        assert (await daemon.call({"cmd": "destroy", "name": "alice"}))["ok"]
        revive = await daemon.call({"cmd": "revive", "name": "alice"})
        assert revive["ok"], revive
        approved = await daemon.call({"cmd": "approve", "id": revive["approval"]["id"]})
        assert approved["ok"], approved
        await turn(daemon, alice, "after-revival")
        revived = await check_agreement(daemon, alice)
        assert revived["turns"] == 4 and revived["cost"] > after_restart["cost"]
