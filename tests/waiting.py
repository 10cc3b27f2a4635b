"""Waiting for something to happen, not for time to pass.

A test that sleeps for "long enough" fails on a machine busy enough to need longer, and
wastes the time on one that needed less. These wait for a condition instead, bounded only
by what a real failure would exceed; the failure says what was awaited.
"""

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# Seconds any one wait may take before its test fails: minutes, since only a failure comes
# near it (a busy machine stretches a second's work to a few, not to a minute).
PATIENCE = 120


class TimedOut(AssertionError):
    """What a test waited for did not happen within its bound."""


def wait_for(
    read: Callable[[], T],
    ready: Callable[[T], object],
    what: str,
    within: float = PATIENCE,
    every: float = 0.05,
) -> T:
    """Read until `ready(value)` and return that value; fail, saying `what` was awaited and
    what was last read, if `within` seconds pass first. Reads every `every` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = read()
        if ready(value):
            return value
        if time.monotonic() > deadline:
            message = f"waited {within:g} s for {what}"
            if not isinstance(value, bool):
                message += f"; last read: {repr(value)[:2000]}"
            raise TimedOut(message)
        time.sleep(every)


def wait_until(
    condition: Callable[[], object], what: str, within: float = PATIENCE, every: float = 0.05
) -> None:
    """Check `condition` until it holds; fail, saying `what` was awaited, if `within`
    seconds pass first."""
    wait_for(condition, bool, what, within, every)
