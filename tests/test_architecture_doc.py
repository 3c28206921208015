"""docs/architecture.md draws the code as it is: its layout table names every module and
nothing that is gone, its layers are the import-linter contract's, and its nursery tree is
the one in ``hyperhive.supervisor``'s docstring."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import hyperhive.supervisor

REPO = Path(__file__).resolve().parent.parent
DOC = (REPO / "docs" / "architecture.md").read_text()


def section(title: str) -> str:
    start = DOC.index(f"\n## {title}\n")
    end = DOC.find("\n## ", start + 1)
    return DOC[start : end if end != -1 else len(DOC)]


def first_block(text: str) -> str:
    start = text.index("```\n") + 4
    return text[start : text.index("```", start)]


def layout_paths() -> set[str]:
    rows = [line for line in section("Layout").splitlines() if line.startswith("| `")]
    return {re.match(r"\| `([^`]+)`", row).group(1) for row in rows}  # type: ignore[union-attr]


def modules() -> dict[str, list[str]]:
    """Each top-level module or package of both packages, with a package's own modules."""
    found: dict[str, list[str]] = {"hyperhive_harness/": []}
    root = REPO / "hyperhive"
    for path in sorted(root.iterdir()):
        if path.suffix == ".py" and path.stem not in ("__init__", "__main__"):
            found[f"hyperhive/{path.name}"] = []
        elif (path / "__init__.py").exists():
            found[f"hyperhive/{path.name}/"] = [
                f"hyperhive/{path.name}/{p.name}"
                for p in sorted(path.glob("*.py"))
                if p.stem != "__init__"
            ]
    return found


def test_the_layout_table_names_every_module_and_nothing_stale() -> None:
    listed = layout_paths()
    stale = sorted(p for p in listed if not (REPO / p).exists())
    assert stale == [], "the layout table names modules that do not exist"
    missing = sorted(
        name
        for name, inside in modules().items()
        if name not in listed and not (inside and all(p in listed for p in inside))
    )
    assert missing == [], "modules missing from the layout table in docs/architecture.md"


def test_the_layers_drawn_are_the_contracts() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    [layers] = [c for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers"]
    drawn = first_block(section("Layers")).splitlines()
    assert drawn == layers["layers"]


def test_the_supervisor_docstring_draws_the_same_tree() -> None:
    drawn = first_block(section("The nursery tree"))
    docstring = hyperhive.supervisor.__doc__
    assert docstring is not None
    indented = [line for line in docstring.splitlines() if line.startswith("    ")]
    assert "\n".join(line[4:] for line in indented) + "\n" == drawn


def test_the_tree_names_functions_that_exist() -> None:
    drawn = first_block(section("The nursery tree"))
    names = set(re.findall(r"[└├]── ([A-Za-z_.]+)", drawn)) - {"hyperhive", "nursery"}
    source = "\n".join(path.read_text() for path in (REPO / "hyperhive").rglob("*.py"))
    missing = sorted(
        name
        for name in names
        if not re.search(rf"\bdef {re.escape(name.rsplit('.', 1)[-1])}\b", source)
    )
    assert missing == []
