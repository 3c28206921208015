"""Registry reads of the small files an agent's harness writes (model, UI socket)."""

from __future__ import annotations

import os
import socket

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
