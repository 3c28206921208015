"""Several awaitables at once, their results by key.

Reads that each queue a transaction on the one writer (``hyperhive.store.Database``) share
its next batch, and so one transaction, when they are queued together; awaited one after
the other, each pays its own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import trio


async def gather(calls: Mapping[str, Callable[[], Awaitable[Any]]]) -> dict[str, Any]:
    """Run every call of ``calls`` concurrently; their results under the same keys.

    The first failure cancels the others and propagates (in a task group, as trio's
    nurseries do).
    """
    results: dict[str, Any] = {}

    async def one(key: str, call: Callable[[], Awaitable[Any]]) -> None:
        results[key] = await call()

    async with trio.open_nursery() as nursery:
        for key, call in calls.items():
            nursery.start_soon(one, key, call)
    return results
