"""Acceptance 7 and 8: the screenshot script and the dashboard benchmark run end to end."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

from pytest import approx

from tests.conftest import need

from .conftest import CHROMIUM

REPO = Path(__file__).resolve().parents[2]
VIEWS = ("swarm", "calls", "flow", "logs", "diff")


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", path
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_screenshots_script_saves_every_view(tmp_path: Path) -> None:
    need(Path(CHROMIUM).exists(), f"no Chromium at {CHROMIUM}")
    done = subprocess.run(
        [sys.executable, "scripts/screenshots.py", "--out", str(tmp_path), "--chromium", CHROMIUM],
        cwd=REPO,
        capture_output=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    printed = [Path(line) for line in done.stdout.decode().split()]
    assert sorted(p.name for p in printed) == sorted(f"{v}.png" for v in VIEWS)
    for view in VIEWS:
        width, height = png_size(tmp_path / f"{view}.png")
        assert width == 1280 and height >= 860, (view, width, height)
    # The full-page views hold the whole swarm and every card, so they are taller.
    assert png_size(tmp_path / "swarm.png")[1] > 860


def test_dashboard_benchmark_writes_its_results(tmp_path: Path) -> None:
    out = tmp_path / "dashboard.json"
    args = ["--agents", "5", "--messages", "300", "--clients", "3", "--samples", "20"]
    done = subprocess.run(
        [sys.executable, "-m", "bench.dashboard", "--out", str(out), *args],
        cwd=REPO,
        capture_output=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    results = json.loads(out.read_text())
    state, fanout = results["state"], results["sse_fanout"]
    assert state["agents"] == 5 and state["messages"] == 300 and state["samples"] == 20
    assert state["baseline_p50_ms"] > 0 and 0 < state["p50_ms"] <= state["p99_ms"]
    assert state["p50_ratio_to_baseline"] == approx(state["p50_ms"] / state["baseline_p50_ms"])
    assert state["target_p50_ms"] == 10.0
    assert fanout["clients"] == 3 and fanout["samples"] == 20
    assert 0 < fanout["p50_ms"] <= fanout["p99_ms"] and fanout["baseline_p99_ms"] > 0
    ratio = fanout["p99_ms"] / fanout["baseline_p99_ms"]
    assert fanout["p99_ratio_to_single_client"] == approx(ratio)
    assert fanout["target_p99_ms"] == 5.0
