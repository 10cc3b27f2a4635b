"""How many requests a worker takes on at once: a limit that follows what it can answer promptly.

A worker past its capacity that takes every request on answers all of them late: each
turn of its event loop has more to do, and every request waits longer for its turn. So
the worker holds at most `limit` requests in flight (health checks and metrics aside) and
answers the others at once with a 503 and Retry-After.

The limit follows one signal: how long each request taken on waited for the event loop
before the app saw it. The worker looks at it once per `interval`. When most requests of
an interval waited longer than `target`, the loop is saturated, not merely stalled for a
moment (a collection, a CPU taken away: then the requests after the stall are prompt):
the limit falls to what the worker took on in that interval scaled to `hold` seconds: by
Little's law, the requests it can hold and still answer each within about that time.
After an interval that was not saturated, it grows by a tenth (and one), back towards
`most`. So under a steady overload a request taken on is answered in tens of
milliseconds rather than seconds, and every other one gets its 503 at once.

Deciding on requests in flight, rather than on each request's wait alone, bounds the work
already taken on, which a wait seen as a request starts cannot: requests queued inside
the app (for a database connection, for the loop between two awaits) are in flight too.
"""

from collections.abc import Callable

# The key under which the lifespan's state holds the app's admission, for the server's
# connections to find it (the middleware puts it there).
ADMISSION = "admission"
# Never shed: an instance at capacity must not look dead, and its metrics show it at capacity.
NEVER_SHED = ("/health/", "/metrics")
# Fewest requests in flight the limit ever allows: a worker always takes some on.
FLOOR = 8


class Admission:
    """The in-flight count and its limit, for one worker's event loop (not thread-safe).

    `most`: the limit's ceiling (the profile's `max_concurrent_requests`). `target`: the
    longest wait for the loop that is still prompt, in seconds (0: the limit stays at
    `most`), looked at every `interval` seconds; `hold`: the seconds a request taken on by
    a saturated worker should take. `shed`: called with the method of each
    request turned away, to count it. `answer`: the whole HTTP/1.1 answer such a request
    gets, for a server that writes it itself.
    """

    def __init__(
        self,
        most: int,
        target: float,
        interval: float,
        hold: float,
        shed: Callable[[str], None],
        answer: bytes,
    ) -> None:
        self.most = most
        self.target = target
        self.interval = interval
        self.hold = hold
        self.limit = float(most)
        self.in_flight = 0
        self.shed = shed
        self.answer = answer
        self._began = 0.0  # the interval's start
        self._taken = 0  # requests taken on in it
        self._late = 0  # of which waited longer than target

    def admit(self) -> bool:
        """Take a request on (count it in flight), unless the worker is at its limit."""
        if self.in_flight >= self.limit:
            return False
        self.in_flight += 1
        return True

    def done(self) -> None:
        """A request taken on has been answered (or its client left)."""
        self.in_flight -= 1

    def waited(self, seconds: float, now: float) -> None:
        """A request taken on waited `seconds` for the event loop; `now`: monotonic time."""
        if not self.target:
            return
        self._taken += 1
        self._late += seconds > self.target
        length = now - self._began
        if length < self.interval:
            return
        if self._late * 2 > self._taken >= FLOOR:  # saturated (a stall delays fewer)
            held_in_time = self._taken / length * self.hold
            self.limit = max(FLOOR, min(self.limit, held_in_time))
        elif self.limit < self.most:
            self.limit = min(self.most, self.limit * 1.1 + 1)
        self._began, self._taken, self._late = now, 0, 0
