"""``hyperhive-harness`` entry point; its commands arrive with the harness."""

from __future__ import annotations

import sys


def main() -> None:
    sys.stderr.write("hyperhive-harness: no commands yet\n")
    raise SystemExit(2)
