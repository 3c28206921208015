"""Writing a benchmark's results: one JSON file, also printed."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_results(out: Path, results: dict[str, Any]) -> None:
    """Write ``results`` (with the load average at the end of the run) to ``out`` and print them."""
    results["loadavg_after"] = os.getloadavg()[0]
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2)
    out.write_text(text + "\n")
    print(text)
