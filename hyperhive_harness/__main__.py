"""``python -m hyperhive_harness`` is ``hyperhive-harness``."""

from hyperhive_harness.cli import main

main()
