"""What differs between SQLite and PostgreSQL for the event log, and nothing else.

The event log's SQL is written once, with `?` placeholders and, in the schema, a few `$names` for
column types; a Database fills those in, opens connections and names the errors that mean it
cannot be reached. Everything else (queries, upserts, migrations) is shared text.
"""

from __future__ import annotations

import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from string import Template
from typing import Any, ClassVar

import psycopg
from psycopg_pool import ConnectionPool

# A reader waits this long for a pooled PostgreSQL connection before the read fails as unavailable;
# connecting gives up after CONNECT_TIMEOUT_S (a database host that vanished must not hang a request).
READ_TIMEOUT_S = 2.0
CONNECT_TIMEOUT_S = 5
# The pool retries a failed connection with a backoff that doubles (1, 2, 4 ... s) for this long,
# then gives up until the next read asks again: a short spell, so that reads work again within a
# second of the database's return rather than after a backoff that grew through a long outage.
RECONNECT_SPELL_S = 2.0


class Session:
    """One transaction on one connection, speaking the event log's `?` placeholders."""

    def __init__(self, cursor: Any, placeholder: str) -> None:
        self._cursor = cursor
        self._placeholder = placeholder

    def query(self, sql: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        self._cursor.execute(self._sql(sql), args)
        return list(self._cursor.fetchall())

    def run(self, sql: str, args: Sequence[object] = ()) -> None:
        self._cursor.execute(self._sql(sql), args)

    def run_many(self, sql: str, rows: Iterable[Sequence[object]]) -> None:
        self._cursor.executemany(self._sql(sql), rows)

    def _sql(self, sql: str) -> str:
        # The event log's SQL has no `?` or `%` of its own (patterns are arguments), so a plain
        # replace is exact.
        return sql if self._placeholder == "?" else sql.replace("?", self._placeholder)


class Connection(ABC):
    """The writer thread's long-lived connection."""

    @abstractmethod
    def transaction(self) -> AbstractContextManager[Session]: ...

    @abstractmethod
    def close(self) -> None: ...


class Database(ABC):
    # The calls table's paging cursor: a number given at the first insert that an upsert keeps.
    paging_column: str
    # Errors that mean the database cannot be used right now (reads answer 503 for these).
    unreachable: tuple[type[Exception], ...]
    # Every error a write can fail with; the writer keeps its rows and retries.
    errors: tuple[type[Exception], ...]
    # Column types for the schema's $names.
    types: ClassVar[Mapping[str, str]]
    # The event-name prefix match: SQLite's LIKE ignores ASCII case, PostgreSQL's ILIKE does too.
    prefix_like: str

    def ddl(self, template: str) -> str:
        return Template(template).substitute(self.types)

    @abstractmethod
    def session(self) -> AbstractContextManager[Session]:
        """A short transaction off the writer thread: its connection goes back (or away) at once."""

    @abstractmethod
    def connect(self) -> Connection: ...

    @abstractmethod
    def lock_migrations(self, session: Session) -> None:
        """The first statement of the migration transaction: one process migrates at a time."""

    @abstractmethod
    def lock_writes(self, session: Session) -> None:
        """The first statement of a writer's transaction: rows get their ids (events.id, calls'
        paging column) and commit in the same order, so a reader paging by id never passes a row
        that commits later with a smaller id."""

    @abstractmethod
    def close(self) -> None: ...


class SQLite(Database):
    paging_column = "rowid"
    prefix_like = "LIKE"
    unreachable = (sqlite3.OperationalError,)
    errors = (sqlite3.Error,)
    types: ClassVar[Mapping[str, str]] = {
        "id": "INTEGER PRIMARY KEY AUTOINCREMENT",
        "text": "TEXT",
        "blob": "BLOB",
        "paging_column": "",  # calls pages by its rowid
    }

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with _closing(self._open(timeout=10)) as db:
            yield Session(db.cursor(), "?")

    def connect(self) -> Connection:
        return _SQLiteConnection(self._open(timeout=30))

    def lock_migrations(self, session: Session) -> None:
        session.run("BEGIN IMMEDIATE")  # takes the write lock now, not at the first write

    def lock_writes(self, session: Session) -> None:
        pass  # one writer at a time already: SQLite's write lock is held from the first insert to the commit

    def close(self) -> None:
        pass  # no connection outlives its use

    def _open(self, timeout: float) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=timeout)
        db.execute("PRAGMA journal_mode=WAL")  # readers read while the writer writes
        db.execute("PRAGMA synchronous=NORMAL")
        return db


class _SQLiteConnection(Connection):
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        with self._db:  # commits, or rolls back on an exception
            yield Session(self._db.cursor(), "?")

    def close(self) -> None:
        self._db.close()


@contextmanager
def _closing(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    try:
        with db:
            yield db
    finally:
        db.close()


class PostgreSQL(Database):
    # An identity column: its numbers are taken at the first insert, and ON CONFLICT DO UPDATE
    # leaves them alone, like SQLite's rowid.
    paging_column = "seq"
    prefix_like = "ILIKE"
    unreachable = (psycopg.OperationalError,)  # psycopg_pool.PoolTimeout is one too
    errors = (psycopg.Error,)
    # COLLATE "C": text compares byte by byte as in SQLite, whatever the database's locale (the
    # `at >= since` filter and event-name prefixes rely on it).
    types: ClassVar[Mapping[str, str]] = {
        "id": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
        "text": 'TEXT COLLATE "C"',
        "blob": "BYTEA",
        "paging_column": "seq BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,",
    }
    # pg_advisory_xact_lock's keys: "eventlog" and "evwrites" in ASCII.
    MIGRATION_LOCK = int.from_bytes(b"eventlog", "big")
    WRITE_LOCK = int.from_bytes(b"evwrites", "big")

    def __init__(self, url: str) -> None:
        self.url = url
        # check_connection: a connection broken while idle (the server restarted) is replaced before
        # a reader gets it, instead of failing that read.
        self._pool = ConnectionPool(url, min_size=1, max_size=4, timeout=READ_TIMEOUT_S, open=True,
                                    name="eventlog-readers", check=ConnectionPool.check_connection,
                                    reconnect_timeout=RECONNECT_SPELL_S,
                                    kwargs={"connect_timeout": CONNECT_TIMEOUT_S, "application_name": "eventlog"})

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._pool.connection() as db, db.cursor() as cursor:  # commits when it goes back
            yield Session(cursor, "%s")

    def connect(self) -> Connection:
        return _PostgreSQLConnection(psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S,
                                                     application_name="eventlog-writer"))

    def lock_migrations(self, session: Session) -> None:
        # Several processes start at once in scaled mode: one applies the migrations, the others
        # wait here and then find nothing left to do.
        session.run("SELECT pg_advisory_xact_lock(?)", (self.MIGRATION_LOCK,))

    def lock_writes(self, session: Session) -> None:
        # Sequences hand out numbers outside transactions: without this, node a could take id 10,
        # node b id 11 and commit first, and a reader that saw 11 would page past 10. Held from
        # before the first number to the commit (a batch is one short transaction, so the nodes'
        # writers queue for milliseconds at most).
        session.run("SELECT pg_advisory_xact_lock(?)", (self.WRITE_LOCK,))

    def close(self) -> None:
        self._pool.close()


class _PostgreSQLConnection(Connection):
    def __init__(self, db: psycopg.Connection[Any]) -> None:
        self._db = db

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        # psycopg's executemany sends its statements in pipeline mode: one round trip per batch.
        with self._db.transaction(), self._db.cursor() as cursor:
            yield Session(cursor, "%s")

    def close(self) -> None:
        self._db.close()


def database(target: Path | str) -> Database:
    """PostgreSQL for a postgresql:// URL, else SQLite at the path."""
    if isinstance(target, str) and target.startswith(("postgresql://", "postgres://")):
        return PostgreSQL(target)
    return SQLite(Path(target))
