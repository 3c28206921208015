"""Broker benchmark: durable throughput and wake latency, each as a ratio to a same-run baseline.

    python -m bench.broker --out bench/results/broker.json

- ``throughput``: messages/s that go send → recv (acked) over real unix sockets through a
  real daemon process with ``synchronous=FULL``, divided by raw single-row sqlite commits/s
  at the same synchronous level on the same disk (the cost floor of one durable write).
  Measured with one sender/receiver pair (sequential) and with several pairs at once.
- ``wake_latency``: with 100 receivers parked in ``recv{wait_seconds:180}``, the time from
  a ``send`` to the matching ``recv`` returning; p50/p99 in ms, and divided by the p50 of a
  plain request round trip on the same socket (the floor of any reply).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from bench._daemon import start_daemon
from hyperhive.client import Client
from hyperhive.config import Paths
from hyperhive.protocol import Recv, Send, Spawn, Status


def raw_commits_per_second(path: Path, synchronous: str, n: int) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT)")
    start = time.perf_counter()
    for i in range(n):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t (body) VALUES (?)", (f"message {i}",))
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return n / elapsed


async def spawn(paths: Paths, names: list[str]) -> None:
    async with await Client.connect(paths.host_socket) as host:
        for name in names:
            await host.call(Spawn(name))


async def pair_throughput(paths: Paths, pairs: int, per_pair: int) -> float:
    senders = [f"s{i}" for i in range(pairs)]
    receivers = [f"r{i}" for i in range(pairs)]
    await spawn(paths, senders + receivers)

    async def send_all(name: str, to: str) -> None:
        async with await Client.connect(paths.agent_socket(name)) as client:
            for i in range(per_pair):
                await client.call(Send(to, f"message {i}"))

    async def recv_all(name: str) -> None:
        got = 0
        async with await Client.connect(paths.agent_socket(name)) as client:
            while got < per_pair:
                reply = await client.call(Recv(wait_seconds=30, max=32))
                got += len(reply.messages)  # type: ignore[attr-defined]

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for s, r in zip(senders, receivers, strict=True):
            nursery.start_soon(send_all, s, r)
            nursery.start_soon(recv_all, r)
    return pairs * per_pair / (time.perf_counter() - start)


async def wake_latency(paths: Paths, parked: int, samples: int) -> dict[str, float]:
    names = [f"p{i}" for i in range(parked)]
    await spawn(paths, names)
    clients = {n: await Client.connect(paths.agent_socket(n)) for n in names}
    sender = await Client.connect(paths.agent_socket("manager"))
    latencies: list[float] = []
    roundtrips: list[float] = []
    for _ in range(samples):
        t = time.perf_counter()
        await sender.call(Status())
        roundtrips.append(time.perf_counter() - t)
    done: dict[str, trio.Event] = {}
    sent_at: dict[str, float] = {}

    async def park(name: str) -> None:
        while True:
            reply = await clients[name].call(Recv(wait_seconds=180))
            if reply.messages:  # type: ignore[attr-defined]
                latencies.append(time.perf_counter() - sent_at[name])
                done[name].set()

    async def parked_count() -> int:
        async with await Client.connect(paths.host_socket) as host:
            reply = await host.request({"cmd": "status"})
            return int(reply["parked_receivers"])

    async def all_parked() -> None:
        with trio.fail_after(30):
            while await parked_count() < parked:  # noqa: ASYNC110 - state of another process
                await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        for name in names:
            nursery.start_soon(park, name)
        # Rounds over distinct receivers, so each one woken is parked (not re-parking).
        for i in range(samples):
            if i % parked == 0:
                await all_parked()
            name = names[i % parked]
            done[name] = trio.Event()
            sent_at[name] = time.perf_counter()
            await sender.call(Send(name, f"wake {i}"))
            await done[name].wait()
        nursery.cancel_scope.cancel()
    for client in [*clients.values(), sender]:
        await client.aclose()
    latencies.sort()
    roundtrips.sort()
    p50 = statistics.median(latencies)
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    rt50 = statistics.median(roundtrips)
    return {
        "parked_receivers": parked,
        "samples": samples,
        "p50_ms": p50 * 1000,
        "p99_ms": p99 * 1000,
        "baseline_roundtrip_p50_ms": rt50 * 1000,
        "p50_ratio_to_roundtrip": p50 / rt50,
        "p99_ratio_to_roundtrip": p99 / rt50,
        "target_p99_ms": 2.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench/results/broker.json"))
    parser.add_argument("--messages", type=int, default=2000)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="hh-bench-", dir="/tmp"))
    try:
        raw_full = raw_commits_per_second(root / "raw.sqlite", "FULL", args.messages)
        results: dict[str, Any] = {"machine": platform.node(), "cpus": os.cpu_count()}
        throughput: dict[str, Any] = {"synchronous": "FULL", "raw_commits_per_s": raw_full}
        for pairs in (1, 4, 16):
            paths = Paths(state_dir=root / f"s{pairs}", run_dir=root / f"r{pairs}")
            proc, _ = start_daemon(paths)
            try:
                rate = trio.run(pair_throughput, paths, pairs, args.messages // pairs)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=15)
            throughput[f"pairs_{pairs}"] = {
                "messages_per_s": rate,
                "ratio_to_raw_commits": rate / raw_full,
            }
        throughput["target_ratio"] = 0.5
        results["throughput"] = throughput
        paths = Paths(state_dir=root / "sw", run_dir=root / "rw")
        proc, _ = start_daemon(paths)
        try:
            results["wake_latency"] = trio.run(wake_latency, paths, 100, 300)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
