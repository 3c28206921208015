"""Turn benchmark: what hyperhive's MCP tools cost a claude turn, each figure with its baseline.

    python -m bench.turns --out bench/results/turns.json [--samples 20]

The real claude CLI (``HYPERHIVE_CLAUDE``, else ``.tools/node_modules/.bin/claude``) against
the instant scripted Messages API (``hyperhive.rehearsal.mock_api``) and a real daemon
(external backend). Samples of the kinds are interleaved, so load drifts hit all alike:

- ``bare``: ``claude -p`` with no MCP server (the baseline);
- ``tools``: hyperhive's tools configured the way the harness does (MCP over HTTP to
  :class:`hyperhive_harness.mcp_host.McpHost`, here in this process, the turn's secret in
  the URL); the model answers at once. Target: p50 / bare p50 ≤ 1.15;
- ``tools_shim``: the same through the stdlib stdio shim to the host's unix socket (the
  design before HTTP), for comparison;
- ``tool_call``: the same, and the model calls ``get_agent_meta`` (a read) and then ``send``
  (a durable write); each tool round trip is timed inside the host (line read → answer
  written). Target: p50 ≤ 5 ms. The baseline of each is the same request on the agent
  socket without MCP, so the ratio is what MCP adds (``send`` is mostly the daemon's
  durable commit, i.e. the disk);
- ``stdio_server``: the previous design, for comparison: claude starts
  ``python -m hyperhive_harness.mcp_server`` every turn.

``shim_session``: one whole run of the shim alone, what the shim adds to a turn's start.

Each kind also reports ``cpu_ms``: the CPU time (user + system) of the turn's processes
(claude and whatever it starts) plus this process's own (the mock API, the host) during
the turn. It moves much less with the machine's load than the wall time, so its ratio to
``bare`` shows what the tools cost even when the wall times are noisy.

``harness_rss``: a real ``hyperhive-harness serve`` process for a second agent: VmRSS once
ready, and idle again after one turn with a tool call. Target ≤ 60 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from bench._daemon import start_daemon
from bench._results import write_results
from hyperhive.client import Client
from hyperhive.config import Paths
from hyperhive.protocol import AgentsReply, GetAgentMeta, Inbox, List, Request, Send, Spawn
from hyperhive.rehearsal.mock_api import MockAnthropic, text, tool_use
from hyperhive_harness.mcp_host import McpHost
from hyperhive_harness.prompt import allowed_tools, mcp_config

REPO = Path(__file__).resolve().parent.parent
KINDS = ("bare", "tools", "tools_shim", "tool_call", "stdio_server")
TURN_RATIO_TARGET = 1.15
TOOL_P50_TARGET_MS = 5.0
RSS_TARGET_MB = 60.0


def claude_path() -> str:
    return os.environ.get("HYPERHIVE_CLAUDE") or str(REPO / ".tools/node_modules/.bin/claude")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary_ms(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {"n": len(ms), "p50_ms": statistics.median(ms), "p90_ms": pct(ms, 0.9)}


def cpu_seconds() -> float:
    """User + system CPU of this process and of its reaped children so far."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


async def run_turn(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """Wall time and CPU time of one claude run; it must end in a clean result."""
    cpu = cpu_seconds()
    started = time.perf_counter()
    proc = await trio.run_process(
        argv, stdin=subprocess.DEVNULL, capture_stdout=True, capture_stderr=True,
        env=env, cwd=cwd, check=False,
    )  # fmt: skip
    elapsed = time.perf_counter() - started
    cpu = cpu_seconds() - cpu
    events = [json.loads(line) for line in proc.stdout.decode().splitlines() if line.strip()]
    results = [e for e in events if e.get("type") == "result"]
    if proc.returncode != 0 or not results or results[-1].get("is_error"):
        raise SystemExit(f"claude run failed ({proc.returncode}): {proc.stderr.decode()[-2000:]}")
    return elapsed, cpu


def argv_for(claude: str, config: Path | None, tools: list[str]) -> list[str]:
    argv = [claude, "--print", "--verbose", "--output-format", "stream-json", "--model", "haiku"]
    if config is not None:
        argv += ["--mcp-config", str(config), "--strict-mcp-config"]
        argv += ["--allowedTools", ",".join(tools)]
    return [*argv, "--", "say ok"]


#: The tool calls of a ``tool_call`` turn: tool, its arguments, the same request without MCP.
CALLS: tuple[tuple[str, dict[str, Any], Request], ...] = (
    ("get_agent_meta", {}, GetAgentMeta()),
    ("send", {"to": "operator", "body": "bench"}, Send(to="operator", body="bench")),
)


async def direct_round_trips(socket: Path, request: Request, n: int) -> list[float]:
    """The request a tool makes, straight on the agent socket (no MCP)."""
    times = []
    async with await Client.connect(socket, hello_role="mcp") as client:
        for _ in range(n):
            started = time.perf_counter()
            await client.call(request)
            times.append(time.perf_counter() - started)
    return times


async def shim_sessions(host: McpHost, n: int) -> list[float]:
    """Whole runs of the shim as claude starts it: start, connect, secret, ``ok``, EOF, exit."""
    config = host.shim_config(sys.executable, host.open_turn())["mcpServers"]["hyperhive"]
    times = []
    for _ in range(n):
        started = time.perf_counter()
        proc = await trio.run_process(
            [config["command"], *config["args"]], stdin=b"", env=config["env"], check=True
        )
        times.append(time.perf_counter() - started)
        assert proc.returncode == 0
    host.close_turn()
    return times


async def turns(paths: Paths, root: Path, samples: int) -> dict[str, Any]:
    claude = claude_path()
    async with trio.open_nursery() as nursery:
        mock = MockAnthropic()
        await nursery.start(mock.serve)
        mock.default = text("ok")
        env = mock.claude_env(root / "home", max_retries=0)
        cwd = root / "cwd"
        cwd.mkdir()
        async with await Client.connect(paths.host_socket, hello_role="cli") as host_link:
            await host_link.call(Spawn("alice"))
        socket = paths.agent_socket("alice")
        host = McpHost(str(socket), root / "mcp.sock")
        hello = await host.pool.hello()
        host.set_identity(hello.role, hello.name)
        await nursery.start(host.run)
        tools = allowed_tools(hello.role)
        host_config = root / "host-mcp.json"
        stdio_config = root / "stdio-mcp.json"
        stdio_config.write_text(json.dumps(mcp_config(sys.executable, str(socket))))

        times: dict[str, list[float]] = {kind: [] for kind in KINDS}
        cpu: dict[str, list[float]] = {kind: [] for kind in KINDS}
        round_trips: dict[str, list[float]] = {tool: [] for tool, _, _ in CALLS}
        for i in range(samples + 1):  # the first round warms caches and is dropped
            for kind in KINDS:
                config: Path | None = None
                if kind in ("tools", "tool_call"):
                    host_config.write_text(
                        json.dumps(host.config(sys.executable, host.open_turn()))
                    )
                    config = host_config
                elif kind == "tools_shim":
                    host_config.write_text(
                        json.dumps(host.shim_config(sys.executable, host.open_turn()))
                    )
                    config = host_config
                elif kind == "stdio_server":
                    config = stdio_config
                if kind == "tool_call":
                    mock.script(
                        *(tool_use(f"mcp__hyperhive__{tool}", args) for tool, args, _ in CALLS),
                        text("done"),
                    )
                    host.call_durations.clear()
                elapsed, used = await run_turn(argv_for(claude, config, tools), env, cwd)
                host.close_turn()
                if kind == "tool_call":
                    if len(host.call_durations) != len(CALLS):
                        raise SystemExit(f"expected {len(CALLS)} calls: {len(host.call_durations)}")
                    if i:
                        for (tool, _, _), took in zip(CALLS, host.call_durations, strict=True):
                            round_trips[tool].append(took)
                if i:
                    times[kind].append(elapsed)
                    cpu[kind].append(used)
        direct = {tool: await direct_round_trips(socket, req, 200) for tool, _, req in CALLS}
        shim = await shim_sessions(host, 20)
        nursery.cancel_scope.cancel()

    bare = summary_ms(times["bare"])
    bare_cpu = statistics.median(cpu["bare"]) * 1000
    out: dict[str, Any] = {"claude": claude, "samples": samples}
    for kind in KINDS:
        fig: dict[str, Any] = dict(summary_ms(times[kind]))
        fig["cpu_p50_ms"] = statistics.median(cpu[kind]) * 1000
        if kind != "bare":
            fig["baseline"] = "bare"
            fig["ratio_to_bare_p50"] = fig["p50_ms"] / bare["p50_ms"]
            fig["cpu_ratio_to_bare_p50"] = fig["cpu_p50_ms"] / bare_cpu
        out[kind] = fig
    out["tools"]["target_ratio"] = TURN_RATIO_TARGET
    out["tools"]["meets_target"] = out["tools"]["ratio_to_bare_p50"] <= TURN_RATIO_TARGET
    out["tool_call"]["tool_calls"] = [tool for tool, _, _ in CALLS]
    for tool, _, _ in CALLS:
        rt = summary_ms(round_trips[tool])
        base = statistics.median(direct[tool]) * 1000
        out[f"tool_round_trip_{tool}"] = {
            **rt,
            "baseline": "the same request on the agent socket, without MCP (p50 of 200)",
            "baseline_p50_ms": base,
            "ratio_to_baseline_p50": rt["p50_ms"] / base,
            "target_p50_ms": TOOL_P50_TARGET_MS,
            "meets_target": rt["p50_ms"] <= TOOL_P50_TARGET_MS,
        }
    out["shim_session"] = {
        **summary_ms(shim),
        "what": "one whole shim run (python -I -S start, connect, secret, ok, EOF, exit)",
        "baseline": "bare",
        "ratio_to_bare_p50": statistics.median(shim) * 1000 / bare["p50_ms"],
    }
    return out


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def eventually(check: Callable[[], Any], within: float, what: str) -> Any:
    with trio.move_on_after(within):
        while True:
            value = await check()
            if value:
                return value
            await trio.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


async def harness_rss(paths: Paths, root: Path) -> dict[str, Any]:
    """A real harness for agent ``bob``: RSS once ready, and idle after one turn."""
    async with trio.open_nursery() as nursery:
        mock = MockAnthropic()
        await nursery.start(mock.serve)
        mock.script(
            tool_use("mcp__hyperhive__send", {"to": "operator", "body": "bench-done"}),
            text("done"),
        )
        async with await Client.connect(paths.host_socket, hello_role="cli") as host_link:
            await host_link.call(Spawn("bob"))
            state = root / "bob-state"
            env = {
                **mock.claude_env(root / "bob-home", max_retries=0),
                "HYPERHIVE_SOCKET": str(paths.agent_socket("bob")),
                "HYPERHIVE_STATE_DIR": str(state),
                "HYPERHIVE_CLAUDE": claude_path(),
                "PYTHONUNBUFFERED": "1",
            }
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "hyperhive_harness", "serve"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
            )  # fmt: skip
            try:
                assert proc.stdout is not None
                buf = b""
                with trio.fail_after(60):
                    while b"hyperhive-harness: ready" not in buf:
                        data = await proc.stdout.receive_some(4096)
                        if not data:
                            raise SystemExit("the harness exited before it was ready")
                        buf += data
                nursery.start_soon(_drain, proc.stdout)

                async def connected() -> bool:
                    reply = await host_link.call(List())
                    assert isinstance(reply, AgentsReply)
                    return any(a.name == "bob" and a.harness_connected for a in reply.agents)

                await eventually(connected, 30, "bob's harness to connect")
                ready = rss_mb(proc.pid)
                await host_link.call(Send(to="bob", body="report back"))

                async def done() -> bool:
                    inbox = await host_link.call(Inbox())
                    got = any(m.body == "bench-done" for m in getattr(inbox, "messages", []))
                    listing = await host_link.call(List())
                    assert isinstance(listing, AgentsReply)
                    acked = all(a.unread == 0 for a in listing.agents if a.name == "bob")
                    return got and acked

                await eventually(done, 60, "bob's turn with a tool call")
                after = rss_mb(proc.pid)
            finally:
                proc.send_signal(signal.SIGTERM)
                with trio.move_on_after(15):
                    await proc.wait()
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
        nursery.cancel_scope.cancel()
    return {
        "ready_mb": ready,
        "idle_after_turn_mb": after,
        "target_mb": RSS_TARGET_MB,
        "meets_target": after <= RSS_TARGET_MB,
    }


async def _drain(stream: trio.abc.ReceiveStream) -> None:
    while await stream.receive_some(4096):
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench/results/turns.json"))
    parser.add_argument("--samples", type=int, default=20)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="hh-bench-", dir="/tmp"))
    results: dict[str, Any] = {
        "machine": platform.node(),
        "cpus": os.cpu_count(),
        "loadavg_before": os.getloadavg()[0],
    }
    try:
        paths = Paths(state_dir=root / "state", run_dir=root / "run")
        proc, _ = start_daemon(paths)
        try:
            results["turns"] = trio.run(turns, paths, root, args.samples)
            results["harness_rss"] = trio.run(harness_rss, paths, root)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    write_results(args.out, results)


if __name__ == "__main__":
    main()
