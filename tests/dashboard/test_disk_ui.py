"""The state dir's size in the header and each agent's on its row, kept current by the
``disk_usage_changed`` events the daemon publishes when it measures (here: the operator's
``vacuum`` over host.sock)."""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect
from prometheus_client.parser import text_string_to_metric_families

from hyperhive.client import Client
from hyperhive.supervisor import Daemon, Hive

from .conftest import UI, base_url, http


def _shown(n: int) -> str:
    """The page's ``bytes()`` (dom.js)."""
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    value, i = float(n), 0
    while value >= 1024 and i < len(units) - 1:
        value, i = value / 1024, i + 1
    return f"{value:.{1 if i else 0}f} {units[i]}"


async def test_the_state_dir_and_each_agent_show_their_size(
    inproc: Daemon, hive: Hive, ui: UI
) -> None:
    def header_has_a_size(page: Page) -> None:
        expect(page.locator("#disk")).to_have_text(re.compile(r"^state \d+(\.\d)? (B|KiB|MiB)$"))

    await ui(header_has_a_size)
    await hive.spawn("alice")
    async with await Client.connect(hive.config.paths.host_socket, hello_role="cli") as host:
        reply = await host.request({"cmd": "vacuum"})
        assert reply["ok"], reply
        status = await host.request({"cmd": "status"})
        [alice] = [
            a for a in (await host.request({"cmd": "list"}))["agents"] if a["name"] == "alice"
        ]
    assert alice["disk_bytes"] > 0

    def sizes_shown(page: Page) -> None:
        expect(page.locator("#disk")).to_have_text(f"state {_shown(status['state_dir_bytes'])}")
        row = page.get_by_role("article", name="agent alice")
        expect(row.locator(".disk")).to_have_text(f"⛁ {_shown(alice['disk_bytes'])}")

    await ui(sizes_shown)

    # /metrics says the same, from the same measurement.
    assert inproc.auth is not None
    response = await http(
        base_url(inproc),
        "GET",
        "/metrics",
        headers={"authorization": f"Bearer {inproc.auth.token}"},
    )
    assert response.status == 200
    samples = {
        (sample.name, sample.labels.get("agent")): sample.value
        for family in text_string_to_metric_families(response.body.decode())
        for sample in family.samples
    }
    assert samples[("hyperhive_state_dir_bytes", None)] == status["state_dir_bytes"]
    assert samples[("hyperhive_agent_disk_bytes", "alice")] == alice["disk_bytes"]
