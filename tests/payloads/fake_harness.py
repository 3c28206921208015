"""A stand-in payload for container tests: says hello as the harness, then waits.

``FAKE_EXIT=<code>`` makes it exit at once with that status (a payload that always crashes).
It prints to stderr first, so crash reports carry a recognisable tail.
"""

from __future__ import annotations

import os
import sys

import trio

from hyperhive.client import Client


async def main() -> None:
    print(f"fake harness {os.environ.get('HYPERHIVE_AGENT')} pid {os.getpid()}", file=sys.stderr)
    sys.stderr.flush()
    code = os.environ.get("FAKE_EXIT")
    if code is not None:
        raise SystemExit(int(code))
    async with await Client.connect(os.environ["HYPERHIVE_SOCKET"], hello_role="harness"):
        print("connected", file=sys.stderr, flush=True)
        await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main)
