"""A container payload that tries to reach another agent's web UI from inside its container.

    ui_probe.py PROBER VICTIM VICTIM_UI_SOCKET MARK

In every container but PROBER's it becomes the real harness. In PROBER's it tries, with the
standard library only:

- every TCP port listening on the host (the containers share the host's network): as the
  victim's UI (``GET /api/state``; if the answer names VICTIM, ``POST /api/send`` MARK with
  a matching Origin), and as the dashboard without a cookie
  (``GET /agent/VICTIM/api/state``, ``POST /agent/VICTIM/api/send``);
- the victim's UI socket by its host path;

then writes what happened to ``$HYPERHIVE_STATE_DIR/probe.json`` and waits to be stopped.
It only ever sends MARK to a server that answered as VICTIM.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

TIMEOUT = 3.0


def listening_ports() -> list[int]:
    """TCP ports in LISTEN state in this network namespace (the host's)."""
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A":
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return sorted(ports)


def request(
    connect: Callable[[], socket.socket], host: str, method: str, path: str, body: Any = None
) -> tuple[int, bytes]:
    """One HTTP/1.1 request; (status, body). Raises OSError/ValueError on anything else."""
    data = b"" if body is None else json.dumps(body).encode()
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
    if method == "POST":
        head += (
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
            f"Origin: http://{host}\r\n"
        )
    with connect() as sock:
        sock.settimeout(TIMEOUT)
        sock.sendall(head.encode() + b"\r\n" + data)
        out = b""
        while len(out) < 1 << 20:
            chunk = sock.recv(65536)
            if not chunk:
                break
            out += chunk
    status_line, _, rest = out.partition(b"\r\n")
    parts = status_line.split()
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
        raise ValueError(f"not HTTP: {out[:40]!r}")
    return int(parts[1]), rest.partition(b"\r\n\r\n")[2]


def outcome(fn: Callable[[], tuple[int, bytes]]) -> int | str:
    try:
        return fn()[0]
    except (OSError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"


def probe_port(port: int, victim: str, mark: str) -> dict[str, Any]:
    host = f"127.0.0.1:{port}"

    def tcp() -> socket.socket:
        return socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)

    result: dict[str, Any] = {"victim_ui": False, "sent": None}
    try:
        status, body = request(tcp, host, "GET", "/api/state")
    except (OSError, ValueError) as exc:
        # Not an HTTP server (or it hangs): nothing more to try on this port.
        result["api_state"] = f"{type(exc).__name__}: {exc}"
        return result
    result["api_state"] = status
    try:
        label = json.loads(body).get("label") if status == 200 else None
    except (ValueError, AttributeError):
        label = None
    if label == victim:
        result["victim_ui"] = True
        result["sent"] = outcome(lambda: request(tcp, host, "POST", "/api/send", {"body": mark}))
    result["agent_state"] = outcome(lambda: request(tcp, host, "GET", f"/agent/{victim}/api/state"))
    result["agent_send"] = outcome(
        lambda: request(tcp, host, "POST", f"/agent/{victim}/api/send", {"body": mark})
    )
    return result


def main() -> None:
    prober, victim, victim_ui, mark = sys.argv[1:5]
    if os.environ.get("HYPERHIVE_AGENT") != prober:
        os.execv(sys.executable, [sys.executable, "-m", "hyperhive_harness", "serve"])
    ports = listening_ports()
    with ThreadPoolExecutor(32) as pool:
        found = pool.map(lambda p: probe_port(p, victim, mark), ports)
        results = dict(zip(ports, found, strict=True))

    def unix() -> socket.socket:
        sock = socket.socket(socket.AF_UNIX)
        try:
            sock.connect(victim_ui)
        except OSError:
            sock.close()
            raise
        return sock

    report = {
        "ports": results,
        "victim_ui_ports": [p for p, r in results.items() if r["victim_ui"]],
        "sent": [p for p, r in results.items() if r["sent"] is not None],
        "victim_ui_socket": outcome(lambda: request(unix, "localhost", "GET", "/api/state")),
        "own_socket_dir": os.listdir("/run/hive"),
    }
    path = os.path.join(os.environ["HYPERHIVE_STATE_DIR"], "probe.json")
    with open(path + ".tmp", "w") as f:
        json.dump(report, f)
    os.replace(path + ".tmp", path)
    print(f"probe done: {len(ports)} ports", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
