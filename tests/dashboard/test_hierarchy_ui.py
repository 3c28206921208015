"""The agents list as a tree: rows nested under their parent, re-parenting from the page
(its picker never offers a cycle), and a change made elsewhere (host.sock) shown live."""

from __future__ import annotations

from playwright.sync_api import Page, expect

from hyperhive.client import Client
from hyperhive.config import PROTOCOL_VERSION
from hyperhive.supervisor import Hive

from .conftest import UI


def rows(page: Page) -> list[str]:
    """Each agent row as its tree branch and name, top to bottom."""
    texts: list[str] = page.locator("#agents article.agent").evaluate_all(
        "els => els.map(e => e.querySelector('.branch').textContent"
        " + e.querySelector('.name').textContent)"
    )
    return texts


async def test_the_dashboard_draws_and_edits_the_tree(hive: Hive, ui: UI) -> None:
    for name in ("alice", "bob", "carol", "dave"):
        await hive.spawn(name)

    def flat(page: Page) -> None:
        expect(page.locator("#agents article.agent")).to_have_count(5)
        assert rows(page) == ["manager", "├─ alice", "├─ bob", "├─ carol", "└─ dave"]

    await ui(flat)

    def move_bob_below_alice(page: Page) -> None:
        bob = page.get_by_role("article", name="agent bob")
        picker = bob.get_by_role("combobox", name="parent of bob")
        expect(picker).to_have_value("manager")
        picker.select_option("alice")
        expect(page.get_by_text("bob is now below alice")).to_be_visible()
        expect(bob.locator(".branch")).to_have_text("│  └─ ")
        assert rows(page) == ["manager", "├─ alice", "│  └─ bob", "├─ carol", "└─ dave"]

    await ui(move_bob_below_alice)
    assert hive.registry.parent("bob") == "alice"

    # The operator moves carol below bob on host.sock: the page follows live.
    async with await Client.connect(hive.config.paths.host_socket, hello_role="cli") as op:
        reply = await op.request({"cmd": "set_parent", "child": "carol", "parent": "bob"})
        assert reply == {"ok": True, "protocol": PROTOCOL_VERSION}

    def nested(page: Page) -> None:
        carol = page.get_by_role("article", name="agent carol")
        expect(carol.locator(".branch")).to_have_text("│     └─ ")
        assert rows(page) == [
            "manager",
            "├─ alice",
            "│  └─ bob",
            "│     └─ carol",
            "└─ dave",
        ]
        # alice's picker offers no agent below her (that would be a cycle), nor herself.
        picker = page.get_by_role("combobox", name="parent of alice")
        offered = picker.locator("option").evaluate_all("os => os.map(o => o.value)")
        assert offered == ["dave", "manager"]
        # The manager is the root: it has no picker.
        manager = page.get_by_role("article", name="agent manager")
        expect(manager.get_by_role("combobox")).to_be_hidden()

    await ui(nested)
