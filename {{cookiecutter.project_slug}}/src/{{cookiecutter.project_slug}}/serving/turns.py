"""Work done once for many requests: as a turn of the event loop ends, or once a while.

Under load one turn of a worker's loop finishes dozens of requests. Their access lines are
written once for all of them, as the turn ends, and their durations once for all the turns of
a tenth of a second, rather than once each: most of what keeps observing a request cheap.
"""

import asyncio
import atexit
import os
from collections.abc import Callable


class EndOfTurn:
    """Calls `flush` once as the current turn of the event loop ends, however often
    `schedule` was called during it (or, with `after`, once `after` seconds after the first
    call); and at exit, for work whose loop closed before then (Gunicorn's asgi worker's
    may, and a test's)."""

    def __init__(self, flush: Callable[[], None], after: float = 0) -> None:
        self._flush = flush
        self._after = after
        self._scheduled_on: asyncio.AbstractEventLoop | None = None
        os.register_at_fork(after_in_child=self._forget)
        atexit.register(self.run)

    def schedule(self) -> None:
        """Call from the event loop only."""
        loop = asyncio.get_running_loop()
        if self._scheduled_on is not loop:
            if self._after:
                loop.call_later(self._after, self.run)
            else:
                loop.call_soon(self.run)
            self._scheduled_on = loop

    def run(self) -> None:
        self._scheduled_on = None
        self._flush()

    def _forget(self) -> None:
        self._scheduled_on = None  # the parent's loop does not run in a forked child
