"""The job itself: grouped statistics of a CSV file, computed in pure Python.

The input has a header row naming at least the columns `group` and `value` (others are
ignored); each row adds its value to its group. The answer, per group: count, sum, mean,
min, max, population standard deviation, median and 95th percentile. Sorting and the
exact standard deviation are what make it CPU-heavy on a large file.
"""

import csv
import io
import math
import statistics
from collections import defaultdict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _csv import Reader

REQUIRED_COLUMNS = ("group", "value")
# Bounds on the answer's size: it is stored in the job's row and sent to every poll.
MAX_GROUPS = 10_000
MAX_GROUP_LENGTH = 100


class CsvProblem(ValueError):
    """The input cannot be aggregated; the message says why, for the client to read."""


def check(data: bytes) -> None:
    """What can be known cheaply, before the job is queued: the file's shape, not its rows."""
    rows = _reader(data)
    _columns(rows)
    try:
        first = next(rows, None)
    except csv.Error as error:  # an unterminated quote, a field over the csv module's limit
        raise CsvProblem(f"line {rows.line_num}: {error}") from None
    if first is None:
        raise CsvProblem("the file has a header but no rows")


def aggregate(data: bytes) -> dict[str, Any]:
    rows = _reader(data)
    group_at, value_at = _columns(rows)
    values: defaultdict[str, list[float]] = defaultdict(list)
    try:
        for row in rows:
            if not row:
                continue  # a blank line
            line = rows.line_num
            if len(row) <= max(group_at, value_at):
                raise CsvProblem(
                    f"line {line}: expected a group and a value, found {len(row)} fields"
                )
            group = row[group_at].strip()
            if not group:
                raise CsvProblem(f"line {line}: the group is empty")
            if len(group) > MAX_GROUP_LENGTH:
                raise CsvProblem(f"line {line}: a group name is over {MAX_GROUP_LENGTH} characters")
            if group not in values and len(values) == MAX_GROUPS:
                raise CsvProblem(f"line {line}: more than {MAX_GROUPS} groups")
            values[group].append(_number(row[value_at], line))
    except csv.Error as error:
        raise CsvProblem(f"line {rows.line_num}: {error}") from None
    if not values:
        raise CsvProblem("the file has a header but no rows")
    try:
        groups = {group: _statistics(numbers) for group, numbers in sorted(values.items())}
    except OverflowError:
        raise CsvProblem("the values are too large to sum") from None
    return {"rows": sum(len(numbers) for numbers in values.values()), "groups": groups}


def _reader(data: bytes) -> "Reader":
    if not data:
        raise CsvProblem("the file is empty")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise CsvProblem(
            f"the file is not UTF-8 text (byte {error.start}); send a CSV file"
        ) from None
    if "\x00" in text:
        raise CsvProblem("the file contains NUL characters; send a CSV file")
    return csv.reader(io.StringIO(text, newline=""), strict=True)


def _columns(rows: "Reader") -> tuple[int, int]:
    """The positions of the required columns in the header row."""
    try:
        header = [name.strip().lower() for name in next(rows, [])]
    except csv.Error as error:
        raise CsvProblem(f"line 1: {error}") from None
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    if missing:
        found = ", ".join(repr(name) for name in header[:10]) or "nothing"
        raise CsvProblem(
            f"the header row must name the columns {', '.join(REQUIRED_COLUMNS)}; "
            f"missing {', '.join(missing)} (found {found})"
        )
    return header.index("group"), header.index("value")


def _number(text: str, line: int) -> float:
    try:
        number = float(text)
    except ValueError:
        raise CsvProblem(f"line {line}: value {text[:40]!r} is not a number") from None
    if not math.isfinite(number):
        raise CsvProblem(f"line {line}: value {text[:40]!r} is not a finite number")
    return number


def _statistics(numbers: list[float]) -> dict[str, float | int]:
    numbers.sort()
    count = len(numbers)
    total = math.fsum(numbers)
    return {
        "count": count,
        "sum": total,
        "mean": total / count,
        "min": numbers[0],
        "max": numbers[-1],
        "stdev": statistics.pstdev(numbers),
        "median": statistics.median(numbers),
        "p95": numbers[min(count - 1, math.ceil(0.95 * count) - 1)],
    }
