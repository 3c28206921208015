"""A payload that writes numbered 4 KiB lines to its output, forever (log rotation tests)."""

import sys
import time

PAD = "x" * 4080
n = 0
while True:
    n += 1
    sys.stdout.write(f"{n:>12} {PAD}\n")
    sys.stdout.flush()
    time.sleep(0.002)  # pacing only (about 2 MB/s at most): leave the machine to the test
