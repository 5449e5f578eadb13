"""Threads of one's own: work that must not wait behind the endpoints' shared pool (which inference holds for as long
as a network runs) runs on a bounded set of threads of its own."""

from __future__ import annotations

from typing import Any, Callable, Optional, TypeVar

import anyio
import anyio.to_thread

T = TypeVar("T")


class OwnThreads:
    """At most ``size`` of this work running at once, on threads that nothing else takes.

    The limiter is made in the event loop, at the first call (anyio's limiters belong to a running loop).
    """

    def __init__(self, size: int):
        self.size = size
        self._limiter: Optional[anyio.CapacityLimiter] = None

    async def run(self, work: Callable[..., T], *args: Any) -> T:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.size)
        return await anyio.to_thread.run_sync(work, *args, limiter=self._limiter)
