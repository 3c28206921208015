"""Screenshots of the dashboard's main views, for the docs.

    python scripts/screenshots.py [--out docs/screenshots] [--chromium /usr/bin/chromium]

Starts a daemon inside this process (process backend; each agent runs a stand-in payload
that logs a few lines and sleeps, except ``bob``'s, which crashes), fills it with a small
swarm (statuses, a kept tombstone, questions, approvals including a config change, traffic)
and saves PNGs of each view with Chromium: ``swarm.png``, ``calls.png``, ``flow.png``,
``logs.png`` and ``diff.png``. Everything lives in a temporary directory and the agents are
stopped when it ends.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import trio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hyperhive.client import Client  # noqa: E402
from hyperhive.config import Config, Paths  # noqa: E402
from hyperhive.registry import AgentState  # noqa: E402
from hyperhive.supervisor import Hive, open_daemon  # noqa: E402

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
]
#: The stand-in payload: a few log lines, then sleep (bob's fails at once, to show a crash).
PAYLOAD = """
echo "$(date -u +%FT%TZ) harness: starting $HYPERHIVE_AGENT ($HYPERHIVE_ROLE)"
echo "$(date -u +%FT%TZ) harness: socket $HYPERHIVE_SOCKET"
if [ "$HYPERHIVE_AGENT" = bob ]; then
  echo "$(date -u +%FT%TZ) harness: cannot reach the model API: connection refused" >&2
  exit 3
fi
echo "$(date -u +%FT%TZ) harness: waiting for messages"
exec sleep 3600
"""
VIEWS = ("swarm", "calls", "flow", "logs", "diff")


async def wait_for(check: Any, what: str, limit: float = 20) -> None:
    with trio.fail_after(limit):
        while not check():  # noqa: ASYNC110 - the supervisor's state, no event to wait on
            await trio.sleep(0.05)


def git(repo: Path, *args: str) -> str:
    identity = ["-c", "user.name=manager", "-c", "user.email=manager@hyperhive.invalid"]
    done = subprocess.run(["git", *identity, *args], cwd=repo, check=True, capture_output=True)
    return done.stdout.decode().strip()


async def populate(hive: Hive) -> tuple[Client, int]:
    """A small swarm with something in every section; returns alice's harness connection."""
    for name in ("alice", "bob", "carol", "dave", "eve"):
        await hive.spawn(name)
    await hive.registry.update("dave", parent="alice")
    await hive.destroy("eve", purge=False)
    await wait_for(
        lambda: all(
            hive.registry.get(n).state == AgentState.RUNNING for n in ("manager", "alice", "carol")
        ),
        "agents running",
    )
    await wait_for(lambda: hive.registry.get("bob").state != AgentState.RUNNING, "bob crashed")

    # A harness serves its web UI on its socket, then says hello: the row links to that UI.
    ui_socket = socket.socket(socket.AF_UNIX)
    ui_socket.bind(str(hive.config.paths.ui_socket("alice")))
    alice = await Client.connect(hive.config.paths.agent_socket("alice"), hello_role="harness")
    await alice.request({"cmd": "set_status", "text": "refactoring the retry loop: 3 files left"})
    await hive.registry.set_status_text("carol", "rate limited by the API until 14:00; sleeping")
    await hive.registry.set_status_text("dave", "needs login: run claude /login in its container")
    await hive.registry.set_status_text("manager", "planning the release: 2 agents busy")

    broker = hive.broker
    await broker.send("manager", "alice", "please review the retry logic in client.py")
    await broker.recv("alice")
    await broker.send("alice", "manager", "done: two nits, otherwise good")
    await broker.recv("manager")
    await broker.send("manager", "carol", "can you take the flaky test in test_cli?")
    await broker.send("alice", "operator", "may I push the refactor to main once CI is green?")
    await broker.send("carol", "operator", "the staging database is full again (92 %)")
    await broker.send("operator", "manager", "ship the release notes by Friday")
    await broker.recv("manager")

    questions = hive.questions
    await questions.ask(
        "alice",
        "Which test runner should the new service use?",
        ["pytest", "unittest", "nose2"],
        False,
        1800,
        None,
    )
    await questions.ask(
        "manager",
        "Which checks must pass before a deploy?",
        ["lint", "types", "tests"],
        True,
        None,
        None,
    )
    await questions.ask("carol", "Is the staging database free?", ["yes", "no"], False, None, "bob")
    done = await questions.ask("dave", "Use the EU region?", ["yes", "no"], False, None, None)
    await questions.answer_as_operator(done.id, "yes")

    approvals = hive.approvals
    await hive.request_spawn("frank", "writes the release notes", "manager")
    gina = await hive.request_spawn("gina", "a second reviewer", "manager")
    await approvals.deny(gina.id, "not this week: alice reviews")
    henry = await hive.request_spawn("henry", "docs helper", "manager")
    await approvals.approve(henry.id)
    repo = hive.config.paths.proposed_dir("alice")
    toml = repo / "agent.toml"
    toml.write_text(toml.read_text().replace('model = "haiku"', 'model = "sonnet"'))
    git(repo, "commit", "-qam", "alice: sonnet for the refactor")
    change = await hive.request_apply_commit(
        "alice", git(repo, "rev-parse", "HEAD"), "switch alice to sonnet for the refactor"
    )
    return alice, change.id


def shoot(login: str, out: Path, chromium: str, change_id: int) -> list[Path]:
    from playwright.sync_api import expect, sync_playwright

    saved: list[Path] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        page.goto(login)
        expect(page.locator("#conn")).to_have_text("● live", timeout=15_000)
        base = login.split("/login", 1)[0]

        def save(name: str, *, full: bool = False) -> None:
            path = out / f"{name}.png"
            page.screenshot(path=str(path), full_page=full)
            saved.append(path)

        expect(page.get_by_role("article", name="agent alice")).to_contain_text("● connected")
        expect(page.get_by_role("article", name="agent bob")).to_contain_text("○ no harness")
        save("swarm", full=True)

        page.get_by_role("article", name="agent alice").get_by_role(
            "button", name="logs of alice"
        ).click()
        expect(page.locator("#drawer-body")).to_contain_text("waiting for messages")
        save("logs")
        page.keyboard.press("Escape")

        page.goto(f"{base}/#call")
        expect(page.locator("#questions article")).to_have_count(3)
        page.locator("#approvals-history summary").click()
        page.locator("#questions .option").first.click()
        save("calls", full=True)

        page.get_by_role("button", name=f"diff of #{change_id}").click()
        expect(page.locator("#drawer-body")).to_contain_text('+model = "sonnet"')
        save("diff")
        page.keyboard.press("Escape")

        page.get_by_role("link", name="◆ FL0W ◆").click()
        expect(page.locator("#flow li")).not_to_have_count(0)
        page.get_by_role("combobox").press_sequentially("@")
        expect(page.get_by_role("listbox")).to_be_visible()
        save("flow")
        browser.close()
    return saved


async def run(out: Path, chromium: str) -> list[Path]:
    root = Path(tempfile.mkdtemp(prefix="hh-shots-", dir="/tmp"))
    try:
        config = Config(
            paths=Paths(state_dir=root / "state", run_dir=root / "run"),
            backend="process",
            synchronous="NORMAL",
            stop_agents_on_exit=True,
            dashboard_bind=("127.0.0.1:0",),
            harness_command=("sh", "-c", PAYLOAD),
        )
        async with open_daemon(config) as daemon:
            alice, change_id = await populate(daemon.hive)
            async with alice:
                login = daemon.dashboard_login_url()
                assert login is not None
                return await trio.to_thread.run_sync(shoot, login, out, chromium, change_id)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the demo crashes bob on purpose
    args.out.mkdir(parents=True, exist_ok=True)
    for path in trio.run(run, args.out, args.chromium):
        print(path)


if __name__ == "__main__":
    main()
