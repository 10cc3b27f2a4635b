"""Whether the database's schema is the one this code was written for: the migrations' head.

A database behind the code (a migration not applied yet) would answer the code's queries
with missing tables or columns: readiness says so, naming the revisions, until the
migrations are applied. A database ahead of it, at a revision these migrations do not know,
is the next release's, applied while this one still serves (a rolling deploy): a migration
keeps the release before it working, so it stays ready and the log says so.
"""

import asyncio
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

from .db import pool_is_busy
from .errors import Throttled, described
from .features import ReadinessChecks
from .health import NotReady

# Seconds a database found at the head is taken to stay there: it is asked again at most
# this often. One found behind is asked at every readiness check, so that the service is
# ready as soon as the migrations are applied.
RECHECK_AFTER = 60.0

logger = logging.getLogger(__name__)
# A database that cannot be read fails at every readiness check: a line now and then.
unreadable = Throttled(logger)


def migrations() -> ScriptDirectory | None:
    """The migrations, found as `alembic` finds them: through alembic.ini in the working
    directory (the project's root, where every start command runs), else in the source tree
    this package was installed from."""
    for root in (Path.cwd(), Path(__file__).parents[2]):
        if (root / "alembic.ini").is_file():
            return ScriptDirectory.from_config(Config(root / "alembic.ini"))
    return None


def _named(revisions: Iterable[str]) -> str:
    return ", ".join(sorted(revisions)) or "none"


@dataclass
class SchemaState:
    engine: AsyncEngine
    heads: frozenset[str]  # what the code expects
    known: frozenset[str]  # every revision of these migrations
    problem: str | None = None  # why the service is not ready, as the last read found
    news: str = ""  # what the last read logged, so that a finding is logged once
    checked_at: float = -math.inf

    async def check(self) -> None:
        """The readiness check: fails, saying why, while the database is behind."""
        due = time.monotonic() - self.checked_at >= RECHECK_AFTER
        # A pool whose every connection is in use is busy, not down (db.ping): keep the
        # last finding rather than wait for a connection.
        if due and not pool_is_busy(self.engine):
            await self.read()
        if self.problem:
            raise NotReady(self.problem)

    async def read(self) -> None:
        """Ask the database for its revisions and judge them; a database that cannot be
        asked leaves the finding as it was (the database's own check says it is down)."""
        try:
            async with self.engine.connect() as connection:
                current = frozenset(await connection.run_sync(_current_revisions))
        except Exception as error:  # any failure to read: the next check asks again
            unreadable.warning("could not read the database's revision: %s", described(error))
            return
        level, self.problem = logging.WARNING, None
        if current - self.known:
            news = (
                f"the database is at revision {_named(current)}, which these migrations do "
                f"not know (they end at {_named(self.heads)}): a newer release's; serving"
            )
        elif current != self.heads:
            self.problem = (
                f"the database is at revision {_named(current)}, the code expects "
                f"{_named(self.heads)}: apply the migrations (alembic upgrade head)"
            )
            news = f"not ready: {self.problem}"
        else:
            level = logging.INFO
            news = f"the database is at revision {_named(current)}, as the code expects"
        # Each finding is logged once; the first at the head goes without saying.
        if news != self.news and (self.news or level == logging.WARNING):
            logger.log(level, news)
        self.news = news
        self.checked_at = -math.inf if self.problem else time.monotonic()


def _current_revisions(connection: Connection) -> list[str]:
    # Alembic's version table, in the schema the connection works in (DATABASE_SCHEMA),
    # as `alembic upgrade` wrote it; none before the first migration.
    if not inspect(connection).has_table("alembic_version"):
        return []
    return list(connection.execute(text("SELECT version_num FROM alembic_version")).scalars())


async def migrations_check(engine: AsyncEngine, within: float) -> ReadinessChecks:
    """The `migrations` readiness check, its first reading done now (the log says at once
    if the database is behind or ahead); none if the migrations are not found."""
    scripts = migrations()
    if scripts is None:
        logger.warning("no alembic.ini in %s: readiness does not check the migrations", Path.cwd())
        return {}
    known = frozenset(script.revision for script in scripts.walk_revisions())
    state = SchemaState(engine, frozenset(scripts.get_heads()), known)
    try:
        async with asyncio.timeout(within):
            await state.read()
    except TimeoutError:
        pass  # a slow database at start: the first readiness check reads it
    return {"migrations": state.check}
