"""The generated references in docs/ match the code they are generated from."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import typer

from hyperhive.cli import app
from hyperhive.protocol import json_schema

REPO = Path(__file__).resolve().parent.parent
GEN = REPO / "scripts" / "gen_docs.py"
DOCS = REPO / "docs"
CLI_DOC = DOCS / "cli-reference.md"
PROTOCOL_DOC = DOCS / "protocol-reference.md"


def _gen(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(GEN), *args], capture_output=True, text=True, check=False, cwd=REPO
    )


def test_generated_docs_are_current() -> None:
    result = _gen("--check")
    assert result.returncode == 0, (
        "docs/cli-reference.md or docs/protocol-reference.md is stale; "
        "run 'python scripts/gen_docs.py':\n" + result.stdout + result.stderr
    )


def test_check_reports_a_stale_or_missing_file(tmp_path: Path) -> None:
    shutil.copy(CLI_DOC, tmp_path / CLI_DOC.name)
    shutil.copy(PROTOCOL_DOC, tmp_path / PROTOCOL_DOC.name)
    assert _gen("--check", "--docs-dir", str(tmp_path)).returncode == 0

    edited = CLI_DOC.read_text().replace("Queue a spawn approval", "Queue a spawn request", 1)
    (tmp_path / CLI_DOC.name).write_text(edited)
    (tmp_path / PROTOCOL_DOC.name).unlink()
    result = _gen("--check", "--docs-dir", str(tmp_path))
    assert result.returncode == 1
    assert "-| [`request-spawn`](#hyperhive-request-spawn) | Queue a spawn request" in result.stdout
    assert (
        "+| [`request-spawn`](#hyperhive-request-spawn) | Queue a spawn approval" in result.stdout
    )
    assert f"{tmp_path / PROTOCOL_DOC.name} (committed)" in result.stdout
    assert "stale generated docs" in result.stderr

    # Without --check the files are rewritten, and then they are current.
    assert _gen("--docs-dir", str(tmp_path)).returncode == 0
    assert (tmp_path / CLI_DOC.name).read_text() == CLI_DOC.read_text()
    assert (tmp_path / PROTOCOL_DOC.name).read_text() == PROTOCOL_DOC.read_text()


def _sections(text: str, level: str) -> dict[str, str]:
    parts = re.split(rf"^{level} (.+)$", text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_cli_reference_names_every_command_and_option() -> None:
    text = CLI_DOC.read_text()
    sections = _sections(text, "##")
    shared = sections.pop("Common options")
    group = typer.main.get_command(app)
    visible = {
        f"{name} {sub}" if sub else name: cmd
        for name, top in group.commands.items()
        if not top.hidden
        # A command group (``hyperhive schedule …``) is documented command by command.
        for sub, cmd in (top.commands.items() if hasattr(top, "commands") else [("", top)])
        if not cmd.hidden
    }
    assert set(sections) == {"Commands"} | {f"hyperhive {name}" for name in visible}
    for name, command in visible.items():
        section = sections[f"hyperhive {name}"]
        assert (command.help or "").strip() in section
        also = next((line for line in section.splitlines() if line.startswith("Also ")), "")
        for param in command.params:
            if param.param_type_name == "argument":
                assert f"`{param.name.upper()}`" in section, (name, param.name)
                continue
            where = shared if f"`{param.opts[0]}`" in also else section
            shown = re.search(rf"`{re.escape(param.opts[0])}[ ,`/]", where) is not None
            assert shown != param.hidden, (name, param.opts[0])
            if shown and param.envvar:
                assert f"`{param.envvar}`" in where, (name, param.envvar)


def test_protocol_reference_names_every_command_and_field() -> None:
    text = PROTOCOL_DOC.read_text()
    schema = json_schema()
    sockets = list(schema["sockets"])
    table = _sections(text, "##")["Commands per socket"]
    assert table.splitlines()[2] == "| command | " + " | ".join(sockets) + " |"
    rows = {
        cells[0].strip("`"): cells[1:]
        for line in table.splitlines()[4:]
        if line.startswith("| `")
        for cells in [[c.strip() for c in line.strip("|").split("|")]]
    }
    for cmd in {c for commands in schema["sockets"].values() for c in commands}:
        assert rows[cmd] == ["yes" if cmd in schema["sockets"][s] else "" for s in sockets], cmd
    assert len(rows) == len({c for commands in schema["sockets"].values() for c in commands})
    commands = _sections(text, "###")
    for socket, specs in schema["sockets"].items():
        for cmd, spec in specs.items():
            own = commands.get(f"{socket}: `{cmd}`")
            if own is None:  # documented once, on the first socket with the same schema
                assert re.search(rf"Same request and reply as on the \w+ socket: .*`{cmd}`", text)
                continue
            for part in ("request", "reply"):
                for field in spec[part]["properties"]:
                    assert f"| `{field}` |" in own, (socket, cmd, part, field)
    for name, spec in schema["$defs"].items():
        for field in spec["properties"]:
            assert f"| `{field}` |" in commands[name], (name, field)
