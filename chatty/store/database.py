"""SQLite connections and schema migrations.

Each thread gets its own connection (sqlite3 connections must not be shared across threads while in
use). Connections run in autocommit mode; writes that span several statements take the write lock
up front with BEGIN IMMEDIATE, so two processes never deadlock on a lock upgrade and a writer
waits for the busy timeout instead of failing with "database is locked".
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

from chatty.errors import ChattyError

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 10_000
_MIGRATION_NAME = re.compile(r"^(\d{4})_\w+\.sql$")


def migrations() -> list[tuple[int, str, str]]:
    """Return (version, name, sql) for every migration script, in version order."""
    found = []
    for entry in resources.files("chatty.store.migrations").iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append((int(match[1]), entry.name, entry.read_text(encoding="utf-8")))
    found.sort()
    for expected, (version, name, _) in enumerate(found, start=1):
        if version != expected:
            raise RuntimeError(f"migration {name} should have version {expected:04d}")
    return found


def latest_version() -> int:
    return len(migrations())


def split_statements(script: str) -> list[str]:
    """Split an SQL script into statements; trigger bodies with inner semicolons stay whole."""
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        if not current and line.strip().startswith("--"):
            continue
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    if current.strip():
        statements.append(current.strip())
    return statements


def _enable_wal(connection: sqlite3.Connection) -> None:
    """Switch the file to WAL journaling, waiting up to the busy timeout while others hold a lock.

    When several processes open a new file at once, SQLite (seen with 3.40.1) fails this pragma with
    "database is locked" at once instead of calling the busy handler, so the wait happens here.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            connection.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            if error.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


class Database:
    """A SQLite file with per-thread connections, WAL journaling and a busy timeout."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._local = threading.local()
        # Every open connection with the thread that opened it.
        self._connections: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self._lock = threading.Lock()

    def open(self) -> Database:
        """Create the folder and file as needed and bring the schema up to date."""
        folder = self.path.parent
        if folder.exists() and not folder.is_dir():
            raise ChattyError(f"The data folder {folder} is a file, not a folder. Set CHATTY_HOME to a folder.")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ChattyError(f"Cannot create the data folder {folder}: {error.strerror}. Set CHATTY_HOME to a writable folder.") from None
        if not os.access(folder, os.W_OK):
            raise ChattyError(
                f"The data folder {folder} is read-only, and chatty writes {self.path.name} there. "
                "Make it writable, or set CHATTY_HOME to another folder."
            )
        try:
            self.migrate()
        except sqlite3.DatabaseError as error:
            # A read-only file or a full disk needs the user to act on the folder, not on the file.
            if getattr(error, "sqlite_errorcode", 0) & 0xFF in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_FULL):
                raise ChattyError(
                    f"Cannot write the database {self.path}: {error}. Free disk space or make it and {folder} writable, "
                    "or set CHATTY_HOME to another folder."
                ) from None
            raise ChattyError(
                f"{self.path} cannot be used as chatty's database: {error}. Move the file away to start a new one."
            ) from None
        return self

    @property
    def connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._connect()
            self._local.connection = connection
            with self._lock:
                self._close_orphans()
                self._connections.append((threading.current_thread(), connection))
        return connection

    def _close_orphans(self) -> None:
        """Close the connections of threads that have ended.

        The TUI runs each background task on a new thread, so without this every reply and every
        search would leave a connection, and its two file descriptors, open until chatty exits.
        """
        alive = []
        for thread, connection in self._connections:
            if thread.is_alive():
                alive.append((thread, connection))
            else:
                connection.close()
        self._connections = alive

    @property
    def open_connections(self) -> list[sqlite3.Connection]:
        """The connections that are open now, one per thread that has used the database."""
        with self._lock:
            return [connection for _, connection in self._connections]

    def _connect(self) -> sqlite3.Connection:
        try:
            connection = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
            )
            connection.row_factory = sqlite3.Row
            connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            _enable_wal(connection)
            # NORMAL is durable against an application crash in WAL mode; only a power loss can
            # drop the last transactions.
            connection.execute("PRAGMA synchronous = NORMAL")
            connection.execute("PRAGMA foreign_keys = ON")
        except sqlite3.DatabaseError as error:
            raise ChattyError(f"Cannot open the database {self.path}: {error}. Check that it is a chatty database and writable.") from None
        return connection

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Run statements as one write transaction that holds the write lock from the start."""
        connection = self.connection
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield connection
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        try:
            connection.execute("COMMIT")
        except sqlite3.Error:
            # A COMMIT that fails (a full disk while the WAL grows) can leave the transaction open,
            # holding the write lock that every other connection waits for.
            # NOTE: no test reaches this; SQLite's page limit fails statements, not COMMIT.
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise

    def migrate(self) -> None:
        """Apply the migrations that this file lacks, all in one transaction."""
        scripts = migrations()
        with self.transaction() as connection:
            current = connection.execute("PRAGMA user_version").fetchone()[0]
            if current > len(scripts):
                raise ChattyError(
                    f"{self.path} has schema version {current}, newer than this chatty understands ({len(scripts)}). "
                    "Upgrade chatty, or set CHATTY_HOME to use another data folder."
                )
            for version, name, sql in scripts[current:]:
                for statement in split_statements(sql):
                    connection.execute(statement)
                connection.execute(f"PRAGMA user_version = {version}")
                log.info("applied migration %s to %s", name, self.path)

    def close(self) -> None:
        with self._lock:
            for _, connection in self._connections:
                connection.close()
            self._connections.clear()
        self._local = threading.local()
