"""The broker on PostgreSQL next to sqlite: messages/s send → recv (acked) through a real
daemon process on each store, measured in the same run, interleaved. See bench/README.md.

    python -m bench.postgresql --out bench/results/postgresql.json

A throwaway PostgreSQL server (``bench/_pg.py``, the tests' own: ``initdb`` + ``pg_ctl``
in a temp dir, unix socket, ``fsync=on``) and, for 1 and 16 sender/receiver pairs, rounds
of: a daemon on a fresh ``broker.sqlite`` (the default, ``synchronous=FULL``), then a
daemon with ``--database`` on a fresh database of that server (``synchronous_commit=on``),
the order swapped every round so a drift of the machine's load hits both alike. The
baseline of each PostgreSQL figure is the sqlite figure of the same rounds; the ratio is
PostgreSQL over sqlite (1.0: as fast). The daemon's CPU per message is reported for both;
on PostgreSQL the server's own CPU comes on top of it (``server_cpu_us_per_message``).

Cross-node wake (``cross_node_wake``): two daemons as nodes ``na`` and ``nb`` on one
database of that server, a ``recv`` parked on ``nb`` and a send on ``na`` (the wake goes
through ``NOTIFY``), timed from the send to the ``recv``'s reply; interleaved with the same
on one node (a send on ``na`` to a ``recv`` parked on ``na``, handed over in the send's
transaction), the baseline, on the same store in the same run.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from bench._daemon import start_daemon
from bench._floor import TICKS, cpu_seconds
from bench._pg import PgServer, find_pg_bin
from bench._results import write_results
from bench.broker import pair_throughput, percentile, spawn
from hyperhive.client import Client
from hyperhive.config import Paths
from hyperhive.protocol import Recv, Send

PAIRS = (1, 16)
ENGINES = ("sqlite", "postgresql")
#: Cross-node wake: p99 from a send on one node to the reply of a recv parked on another.
TARGET_CROSS_NODE_WAKE_P99_MS = 20.0


def messages_per_s(result: float | tuple[Any, ...]) -> float:
    """``pair_throughput``'s figure: a float, or the first item of the tuple it returns
    where it also reports its requests."""
    return float(result[0] if isinstance(result, tuple) else result)


def server_cpu_seconds(server: PgServer) -> float:
    """CPU seconds of the PostgreSQL server so far: the postmaster's own, its exited
    children's (backends it reaped: cutime, cstime) and those of the children still there."""
    pid = int((server.data_dir / "postmaster.pid").read_text().split()[0])
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    total = sum(int(fields[i]) for i in (11, 12, 13, 14)) / TICKS  # utime stime cutime cstime
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            child = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(child[1]) == pid:  # its parent
                total += cpu_seconds(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
    return total


def server_version(server: PgServer) -> str:
    with server.admin() as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "?"


def one_run(
    root: Path, name: str, pairs: int, per_pair: int, database: str | None
) -> dict[str, float]:
    """A fresh daemon on ``database`` (None: broker.sqlite): its messages/s and CPU."""
    paths = Paths(state_dir=root / f"{name}-s", run_dir=root / f"{name}-r")
    proc, _ = start_daemon(paths, database=database)
    try:

        async def body() -> tuple[float, float]:
            await spawn(paths, [f"{side}{i}" for side in "sr" for i in range(pairs)])
            cpu = cpu_seconds(proc.pid)
            rate = messages_per_s(await pair_throughput(paths, pairs, per_pair))
            return rate, cpu_seconds(proc.pid) - cpu

        rate, cpu = trio.run(body)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()
        shutil.rmtree(paths.state_dir, ignore_errors=True)
        shutil.rmtree(paths.run_dir, ignore_errors=True)
    return {"messages_per_s": rate, "daemon_cpu_seconds": cpu}


def stop_daemon(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    if proc.stdout is not None:
        proc.stdout.close()


async def parked_on(paths: Paths) -> int:
    async with await Client.connect(paths.host_socket) as host:
        return int((await host.request({"cmd": "status"}))["parked_receivers"])


async def wake_samples(
    sending: Paths, receiving: dict[str, Paths], samples: int
) -> dict[str, list[float]]:
    """For each receiver (``name``: its node's paths), ``samples`` times: park its recv,
    send from ``tx`` on ``sending``, time the send to the recv's reply. The receivers take
    turns sample by sample, the first one alternating (interleaved)."""
    sender = await Client.connect(sending.agent_socket("tx"))
    clients = {name: await Client.connect(p.agent_socket(name)) for name, p in receiving.items()}
    times: dict[str, list[float]] = {name: [] for name in receiving}
    names = list(receiving)
    try:
        for i in range(samples):
            for name in names if i % 2 == 0 else names[::-1]:
                got: list[float] = []

                async def park(name: str = name, got: list[float] = got) -> None:
                    reply = await clients[name].call(Recv(wait_seconds=30))
                    got.append(time.perf_counter())
                    assert reply.messages, "the parked recv returned empty"  # type: ignore[attr-defined]

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(park)
                    with trio.fail_after(30):
                        while await parked_on(receiving[name]) < 1:  # noqa: ASYNC110 - idem
                            await trio.sleep(0.001)
                    start = time.perf_counter()
                    await sender.call(Send(name, f"wake {i}"))
                times[name].append(got[0] - start)
    finally:
        for client in [sender, *clients.values()]:
            await client.aclose()
    return times


async def lists(paths: Paths, name: str) -> bool:
    """Whether the daemon of ``paths`` lists ``name`` (a node learns of another's agents)."""
    async with await Client.connect(paths.host_socket) as host:
        agents = (await host.request({"cmd": "list"}))["agents"]
    return name in {agent["name"] for agent in agents}


def cross_node_wake(server: PgServer, root: Path, samples: int) -> dict[str, Any]:
    """Two nodes on one database: a send on ``na`` waking a recv parked on ``nb``, next to
    a recv parked on ``na`` itself (the single-node wake, same store, interleaved)."""
    database = server.url(server.new_database())
    na = Paths(state_dir=root / "na-s", run_dir=root / "na-r")
    nb = Paths(state_dir=root / "nb-s", run_dir=root / "nb-r")
    proc_a, _ = start_daemon(na, database=database, node="na")
    try:
        proc_b, _ = start_daemon(nb, database=database, node="nb")
        try:

            async def body() -> dict[str, list[float]]:
                await spawn(na, ["tx", "local"], node="na")
                await spawn(nb, ["remote"], node="nb")
                with trio.fail_after(30):
                    while not await lists(na, "remote"):  # noqa: ASYNC110 - another process
                        await trio.sleep(0.01)
                return await wake_samples(na, {"remote": nb, "local": na}, samples)

            times = trio.run(body)
        finally:
            stop_daemon(proc_b)
    finally:
        stop_daemon(proc_a)
    figures: dict[str, Any] = {"samples": samples}
    for name, label in (("remote", "cross_node"), ("local", "single_node")):
        values = times[name]
        figures[label] = {
            "p50_ms": statistics.median(values) * 1000,
            "p99_ms": percentile(values, 0.99) * 1000,
            "max_ms": max(values) * 1000,
        }
    cross, single = figures["cross_node"], figures["single_node"]
    figures.update(
        {
            "measured": "a send on node na to the reply of a recv parked on node nb (NOTIFY)",
            "baseline": "the same to a recv parked on na itself (single_node), same store, "
            "interleaved",
            "p50_ratio_to_single_node": cross["p50_ms"] / single["p50_ms"],
            "p99_ratio_to_single_node": cross["p99_ms"] / single["p99_ms"],
            "target_p99_ms": TARGET_CROSS_NODE_WAKE_P99_MS,
            "meets_target": cross["p99_ms"] <= TARGET_CROSS_NODE_WAKE_P99_MS,
        }
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/postgresql.json"))
    parser.add_argument("--messages", type=int, default=4000, help="messages per daemon run")
    parser.add_argument("--rounds", type=int, default=2, help="runs per engine and pair count")
    parser.add_argument(
        "--wake-samples", type=int, default=1000, help="cross-node (and single-node) wakes"
    )
    parser.add_argument(
        "--only", choices=("throughput", "cross_node_wake"), help="one part of the benchmark"
    )
    args = parser.parse_args()
    bin_dir = find_pg_bin()
    if bin_dir is None:
        raise SystemExit("PostgreSQL (initdb, pg_ctl) is not installed: apt-get install postgresql")
    root = Path(tempfile.mkdtemp(prefix="hh-bench-pg-", dir="/tmp"))
    server = PgServer.start(bin_dir)
    results: dict[str, Any] = {
        "machine": platform.node(),
        "cpus": os.cpu_count(),
        "loadavg_before": os.getloadavg()[0],
        "postgresql": {
            "version": server_version(server),
            "server": "local, unix socket, fsync=on; the daemon: synchronous_commit=on",
        },
        "sqlite": "broker.sqlite in the state dir, synchronous=FULL (the daemon's default)",
    }
    try:
        if args.only != "throughput":
            results["cross_node_wake"] = cross_node_wake(server, root, args.wake_samples)
        throughput: dict[str, Any] = {}
        for pairs in PAIRS if args.only != "cross_node_wake" else ():
            per_pair = args.messages // pairs
            runs: dict[str, list[dict[str, float]]] = {engine: [] for engine in ENGINES}
            server_cpu = 0.0
            for n in range(args.rounds):
                order = ENGINES if n % 2 == 0 else ENGINES[::-1]
                for engine in order:
                    name = f"{engine}-{pairs}-{n}"
                    if engine == "sqlite":
                        runs[engine].append(one_run(root, name, pairs, per_pair, None))
                        continue
                    database = server.url(server.new_database())
                    before = server_cpu_seconds(server)
                    runs[engine].append(one_run(root, name, pairs, per_pair, database))
                    server_cpu += server_cpu_seconds(server) - before
            messages = pairs * per_pair
            figure: dict[str, Any] = {"messages_per_run": messages, "rounds": args.rounds}
            for engine in ENGINES:
                rates = [run["messages_per_s"] for run in runs[engine]]
                cpu = sum(run["daemon_cpu_seconds"] for run in runs[engine])
                figure[engine] = {
                    "messages_per_s": statistics.median(rates),
                    "messages_per_s_runs": rates,
                    "daemon_cpu_us_per_message": cpu / (messages * args.rounds) * 1e6,
                }
            figure["postgresql"]["server_cpu_us_per_message"] = (
                server_cpu / (messages * args.rounds) * 1e6
            )
            figure["baseline"] = "sqlite messages_per_s (median), same run, interleaved"
            figure["ratio_to_sqlite"] = (
                figure["postgresql"]["messages_per_s"] / figure["sqlite"]["messages_per_s"]
            )
            throughput[f"pairs_{pairs}"] = figure
        if throughput:
            results["throughput"] = throughput
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    write_results(args.out, results)


if __name__ == "__main__":
    main()
