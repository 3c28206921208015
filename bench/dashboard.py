"""Dashboard benchmark: snapshot latency and event fan-out, each as a ratio to a same-run baseline.

    python -m bench.dashboard --out bench/results/dashboard.json

Against a real daemon process (external backend, dashboard on a free port), logged in with
its printed URL, over keep-alive HTTP/1.1 connections:

- ``state``: with 100 agents (``--agents``; ``make bench`` also runs 1000) and 10k messages in
  the broker (read by the agents, as in a working hive, except the latest broadcast and the
  operator's 100) on top of ``--history`` old acked ones (1M in that run), p50/p99 of
  ``GET /api/state`` in ms, divided by the p50 of ``GET /static/dashboard.css`` on the same
  connection (a trivial authenticated request: the session check and a small file).
- ``sse_fanout``: 20 clients on ``/api/stream``; operator messages are sent one at a time
  and each client times the ``sent`` frame from the moment the daemon published it (the
  event's ``ts``; same host, same clock) to the moment it parsed the frame; p50/p99 in ms,
  divided by the same measured with a single client.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import h11
import trio

from bench._daemon import start_daemon
from bench._floor import cpu_seconds, prefill_history
from bench._results import write_results
from hyperhive.client import Client
from hyperhive.config import MAX_RECV_BATCH, Paths
from hyperhive.protocol import HostSend, Recv, Send, Spawn

TARGET_STATE_P50_MS = 10.0
TARGET_STATE_P99_MS = 25.0
TARGET_FANOUT_P99_MS = 5.0


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(len(ordered) * fraction) - 1)]


class Http:
    """One keep-alive HTTP/1.1 connection (h11 on trio)."""

    def __init__(self, stream: trio.SocketStream, host: str, cookie: str | None) -> None:
        self.stream = stream
        self.host = host
        self.cookie = cookie
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, base: str, cookie: str | None = None) -> Http:
        parts = urlsplit(base)
        assert parts.hostname is not None and parts.port is not None
        stream = await trio.open_tcp_stream(parts.hostname, parts.port)
        return cls(stream, parts.netloc, cookie)

    async def _event(self) -> Any:
        while (event := self.conn.next_event()) is h11.NEED_DATA:
            self.conn.receive_data(await self.stream.receive_some(65536))
        return event

    async def start(self, target: str, headers: dict[str, str] | None = None) -> h11.Response:
        if self.conn.our_state is h11.DONE:
            self.conn.start_next_cycle()
        head = {"host": self.host, **(headers or {})}
        if self.cookie:
            head["cookie"] = self.cookie
        request = h11.Request(method="GET", target=target, headers=list(head.items()))
        data = (self.conn.send(request) or b"") + (self.conn.send(h11.EndOfMessage()) or b"")
        await self.stream.send_all(data)
        response = await self._event()
        assert isinstance(response, h11.Response), response
        return response

    async def get(self, target: str) -> tuple[int, bytes]:
        response = await self.start(target)
        body = []
        while not isinstance(event := await self._event(), h11.EndOfMessage):
            body.append(bytes(event.data))
        return response.status_code, b"".join(body)

    async def frames(self, on_frame: Callable[[str, dict[str, Any]], None]) -> None:
        """Read an event stream forever, calling ``on_frame(kind, data)`` for each frame."""
        buffer = ""
        while True:
            event = await self._event()
            if not isinstance(event, h11.Data):
                return
            buffer += bytes(event.data).decode()
            while "\n\n" in buffer:
                frame, buffer = buffer.split("\n\n", 1)
                fields = dict(
                    line.split(": ", 1) for line in frame.split("\n") if not line.startswith(":")
                )
                if "event" in fields:
                    on_frame(fields["event"], json.loads(fields["data"]))

    async def aclose(self) -> None:
        await self.stream.aclose()


async def login(url: str) -> tuple[str, str]:
    """Follow the printed login URL; returns the base URL and the session cookie."""
    parts = urlsplit(url)
    base = f"{parts.scheme}://{parts.netloc}"
    http = await Http.open(base)
    response = await http.start(f"{parts.path}?{parts.query}", {"connection": "close"})
    await http.aclose()
    cookie = dict(response.headers)[b"set-cookie"].decode().split(";", 1)[0]
    return base, cookie


async def populate(paths: Paths, agents: int, messages: int) -> None:
    """``agents`` agents in all (the manager too) and ``messages`` messages in the broker."""
    async with await Client.connect(paths.host_socket, hello_role="cli") as host:
        for i in range(agents - 1):
            await host.call(Spawn(f"agent-{i:03d}"))
        to_operator = min(100, messages // 10)
        async with await Client.connect(paths.agent_socket("agent-000")) as agent:
            for i in range(to_operator):
                await agent.call(Send("operator", f"report {i}: all green"))
        # A broadcast writes one row per agent in one transaction.
        left = messages - to_operator
        for i in range(left // agents - 1):
            await host.call(HostSend("*", f"broadcast {i}: status please"))
        for i in range(left % agents):
            await host.call(HostSend("manager", f"note {i}"))
    # Like a working hive: the agents have read their mail, bar the latest broadcast.
    async with trio.open_nursery() as nursery:
        for i in range(agents - 1):
            nursery.start_soon(drain, paths, f"agent-{i:03d}")
        nursery.start_soon(drain, paths, "manager")
    async with await Client.connect(paths.host_socket, hello_role="cli") as host:
        await host.call(HostSend("*", "latest broadcast: left unread"))


async def drain(paths: Paths, name: str) -> None:
    async with await Client.connect(paths.agent_socket(name)) as agent:
        while (await agent.call(Recv(max=MAX_RECV_BATCH))).messages:  # type: ignore[attr-defined]
            pass


async def state_latency(base: str, cookie: str, samples: int, pid: int) -> dict[str, Any]:
    http = await Http.open(base, cookie)

    async def timed(target: str) -> tuple[list[float], int]:
        size = 0
        for _ in range(10):  # warm-up
            await http.get(target)
        times = []
        for _ in range(samples):
            start = time.perf_counter()
            status, body = await http.get(target)
            times.append(time.perf_counter() - start)
            assert status == 200, (target, status)
            size = len(body)
        return times, size

    baseline, _ = await timed("/static/dashboard.css")
    cpu = cpu_seconds(pid)
    state, size = await timed("/api/state")
    cpu = cpu_seconds(pid) - cpu
    _, body = await http.get("/api/state")
    snapshot = json.loads(body)
    await http.aclose()
    p50, base50 = statistics.median(state), statistics.median(baseline)
    return {
        "agents": len(snapshot["agents"]),
        "samples": samples,
        "response_bytes": size,
        "daemon_cpu_ms_per_request": cpu / (samples + 10) * 1000,
        "p50_ms": p50 * 1000,
        "p99_ms": percentile(state, 0.99) * 1000,
        "baseline": "GET /static/dashboard.css",
        "baseline_p50_ms": base50 * 1000,
        "p50_ratio_to_baseline": p50 / base50,
        "target_p50_ms": TARGET_STATE_P50_MS,
        "target_p99_ms": TARGET_STATE_P99_MS,
        "meets_target": p50 * 1000 <= TARGET_STATE_P50_MS
        and percentile(state, 0.99) * 1000 <= TARGET_STATE_P99_MS,
    }


async def fanout_latency(
    paths: Paths, base: str, cookie: str, clients: int, samples: int
) -> list[float]:
    """Publish-to-parse latencies (s) of ``samples`` events at ``clients`` stream readers."""
    latencies: list[float] = []
    arrived: Counter[int] = Counter()
    done: dict[int, trio.Event] = {}
    marker = f"fanout-{clients}-"

    def on_frame(kind: str, data: dict[str, Any]) -> None:
        if kind != "sent" or not str(data.get("body", "")).startswith(marker):
            return
        now = time.time()
        i = int(data["body"][len(marker) :])
        if i >= 0:
            latencies.append(now - data["ts"])
        arrived[i] += 1
        if arrived[i] == clients:
            done[i].set()

    streams = [await Http.open(base, cookie) for _ in range(clients)]
    async with (
        trio.open_nursery() as nursery,
        await Client.connect(paths.host_socket, hello_role="cli") as host,
    ):
        for http in streams:
            response = await http.start("/api/stream", {"accept": "text/event-stream"})
            assert response.status_code == 200
            nursery.start_soon(http.frames, on_frame)
        for i in range(-5, samples):  # negative: warm-up, not counted
            done[i] = trio.Event()
            await host.call(HostSend("manager", f"{marker}{i}"))
            with trio.fail_after(10):
                await done[i].wait()
        nursery.cancel_scope.cancel()
    for http in streams:
        await http.aclose()
    return latencies


async def measure(paths: Paths, url: str, args: argparse.Namespace, pid: int) -> dict[str, Any]:
    await populate(paths, args.agents, args.messages)
    base, cookie = await login(url)
    state = await state_latency(base, cookie, args.samples, pid)
    state["messages"] = args.messages
    state["history"] = args.history
    single = await fanout_latency(paths, base, cookie, 1, args.samples)
    many = await fanout_latency(paths, base, cookie, args.clients, args.samples)
    p50, p99 = statistics.median(many), percentile(many, 0.99)
    one50, one99 = statistics.median(single), percentile(single, 0.99)
    return {
        "state": state,
        "sse_fanout": {
            "clients": args.clients,
            "samples": args.samples,
            "p50_ms": p50 * 1000,
            "p99_ms": p99 * 1000,
            "baseline": "the same with a single client",
            "baseline_p50_ms": one50 * 1000,
            "baseline_p99_ms": one99 * 1000,
            "p50_ratio_to_single_client": p50 / one50,
            "p99_ratio_to_single_client": p99 / one99,
            "target_p99_ms": TARGET_FANOUT_P99_MS,
            "meets_target": p99 * 1000 <= TARGET_FANOUT_P99_MS,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/dashboard.json"))
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument(
        "--history", type=int, default=0, help="old acked messages written before the start"
    )
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="hh-bench-", dir="/tmp"))
    paths = Paths(state_dir=root / "state", run_dir=root / "run")
    if args.history:
        prefill_history(paths.broker_db, args.history, ["manager", "agent-000", "agent-001"])
    proc, url = start_daemon(paths, dashboard=True)
    try:
        results: dict[str, Any] = {"machine": platform.node(), "cpus": os.cpu_count()}
        results.update(trio.run(measure, paths, url, args, proc.pid))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
        if proc.stdout is not None:
            proc.stdout.close()
        shutil.rmtree(root, ignore_errors=True)
    write_results(args.out, results)


if __name__ == "__main__":
    main()
