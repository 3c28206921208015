"""Registry reads of the small files an agent's harness writes (model, UI socket)."""

from __future__ import annotations

import os
import socket

import pytest

from hyperhive.kinds import Transient
from hyperhive.registry import Registry
from hyperhive.supervisor import Hive


async def test_model_and_ui_url_follow_the_files(hive: Hive) -> None:
    await hive.spawn("alice")
    state = hive.config.paths.agent_dir("alice") / "state"
    assert hive.registry.model("alice") == "haiku"
    assert hive.registry.ui_url("alice") is None
    (state / "hyperhive-model").write_text("sonnet\n")
    assert hive.registry.model("alice") == "sonnet"
    # The harness's /model rewrites the file: the next read sees it (cache keyed on mtime).
    (state / "hyperhive-model").write_text("opus\n")
    st = (state / "hyperhive-model").stat()
    os.utime(state / "hyperhive-model", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert hive.registry.model("alice") == "opus"
    # The UI link follows the harness's UI socket, and points into the dashboard.
    ui = hive.config.paths.ui_socket("alice")
    ui.write_text("not a socket")
    assert hive.registry.ui_url("alice") is None
    ui.unlink()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(ui))
        [alice] = [a for a in await hive.agent_infos() if a.name == "alice"]
        assert alice.ui_url == "/agent/alice/" and alice.model == "opus"
    ui.unlink()
    assert hive.registry.ui_url("alice") is None


async def test_a_spawn_shows_spawning_until_it_is_done(hive: Hive) -> None:
    # The spawn's row is written first, showing the transient (as after a crash right then).
    record = await hive.registry.register("bob", transient=Transient.SPAWNING)
    assert record.transient == "spawning" and record.transient_since is not None
    [bob] = [a for a in await hive.agent_infos() if a.name == "bob"]
    assert (bob.state, bob.transient) == ("registered", "spawning")
    # Spawning again finishes it (idempotent) and the transient ends.
    done = await hive.spawn("bob")
    assert done.transient is None and done.transient_since is None
    # A spawn that completes leaves no transient either.
    assert (await hive.spawn("carol")).transient is None


async def test_an_update_writes_only_the_fields_it_changes(hive: Hive) -> None:
    # Two registries on one store, as two nodes are: each changes one field of bob's row
    # from its own (stale) copy; neither undoes the other's change.
    await hive.spawn("bob")
    other = Registry(
        hive.db,
        hive.config.paths,
        hive.events,
        backend=hive.backend,
        serve_socket=hive.registry._serve_socket,
        node=hive.registry.node,
    )
    await other.refresh()
    await hive.registry.set_status_text("bob", "working on the parser")
    await other.update("bob", warning="limits not enforced")
    await hive.registry.refresh(["bob"])
    bob = hive.registry.get("bob")
    assert (bob.status_text, bob.warning) == ("working on the parser", "limits not enforced")
    with pytest.raises(ValueError, match="not a column"):
        await other.update("bob", paused_at=1.0)
