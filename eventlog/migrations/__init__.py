"""Versioned schema: NNNN_name.sql files in this folder, one text for both databases.

schema_migrations lists the versions applied. At start-up the missing ones are applied in order,
all in one transaction that first takes the database's migration lock (eventlog/dialect.py), so
processes starting together neither race nor see half a schema. A migration that is out never
changes: a change is a new file with the next number.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from eventlog.dialect import Database

logger = logging.getLogger(__name__)

FOLDER = Path(__file__).parent


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str  # the template, with the dialect's $names

    def statements(self, db: Database) -> list[str]:
        text = "\n".join(line for line in self.sql.splitlines() if not line.lstrip().startswith("--"))
        return [s.strip() for s in re.split(r";\s*$", db.ddl(text), flags=re.MULTILINE) if s.strip()]


def load(folder: Path = FOLDER) -> list[Migration]:
    found = []
    for path in sorted(folder.glob("*.sql")):
        number, _, name = path.stem.partition("_")
        found.append(Migration(int(number), name, path.read_text()))
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"event log migrations must be numbered 1, 2, 3... without gaps, found {versions}")
    return found


def apply(db: Database, migrations: list[Migration] | None = None) -> list[int]:
    """Apply the missing migrations; returns the versions applied now."""
    migrations = load() if migrations is None else migrations
    connection = db.connect()
    try:
        with connection.transaction() as session:
            db.lock_migrations(session)
            session.run("CREATE TABLE IF NOT EXISTS schema_migrations "
                        "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
            applied = {row[0] for row in session.query("SELECT version FROM schema_migrations")}
            newer = sorted(applied - {m.version for m in migrations})
            if newer:
                # A rolling upgrade: a newer node migrated first. Migrations add, so carry on.
                logger.warning("the event log database has schema versions %s that this code does not know", newer)
            missing = [m for m in migrations if m.version not in applied]
            for migration in missing:
                for statement in migration.statements(db):
                    session.run(statement)
                session.run("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                            (migration.version, datetime.now(UTC).isoformat()))
    finally:
        connection.close()
    if missing:
        logger.info("event log schema migrated to version %d (applied %s)", missing[-1].version,
                    ", ".join(f"{m.version} {m.name}" for m in missing))
    return [m.version for m in missing]
