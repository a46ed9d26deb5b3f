"""Database engine and session factory, with SQLite tuned for a busy bot."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.ext.asyncio import AsyncSession as AsyncSession

from synatra_bot.errors import StorageError, StorageUnavailable
from synatra_bot.observe import Observer
from synatra_bot.settings import sqlite_path
from synatra_bot.storage.sqlite_driver import connection_factory

log = logging.getLogger(__name__)

#: How long one SQLite transaction waits for another process's write lock (`storage.retry`
#: tries a player's line again after that).
SQLITE_BUSY_TIMEOUT_S = 10.0
#: How long to wait for a database server to accept a connection.
CONNECT_TIMEOUT_S = 5


def prepare_sqlite_file(database_url: str) -> None:
    """Create the database folder and check the file is usable, without writing to it.

    An unwritable folder or file, or a file that is not a SQLite database, raises
    StorageError with one clear line; nothing is overwritten.
    """
    path = sqlite_path(database_url)
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot create database folder {path.parent}: {exc.strerror}") from None
    if path.exists():
        if not path.is_file():
            raise StorageError(f"database path {path} is not a file")
        _check_sqlite_header(path)
        if not _writable(path):
            raise StorageError(f"database file {path} is not writable")
    elif not _writable(path.parent):
        raise StorageError(f"database folder {path.parent} is not writable")
    else:
        _check_creatable(path, database_url)


def _check_creatable(path: Path, database_url: str) -> None:
    """Open a new database file here once, synchronously: a folder the permissions allow but
    SQLite cannot use (a kernel file system, a read-only mount) fails here with one line, not
    inside the async driver's thread. The empty file this leaves is what SQLite would make."""
    try:
        sqlite3.connect(path).close()
    except sqlite3.Error as exc:
        raise StorageError(
            f"DATABASE_URL {database_url}: cannot open the database: {exc}"
        ) from None


def _writable(path: Path) -> bool:
    import os

    return os.access(path, os.W_OK)


def _check_sqlite_header(path: Path) -> None:
    try:
        with path.open("rb") as f:
            header = f.read(16)
    except OSError as exc:
        raise StorageError(f"cannot read database file {path}: {exc.strerror}") from None
    if header and header != b"SQLite format 3\x00":
        raise StorageError(f"database file {path} is not a SQLite database (refusing to touch it)")
    if header:
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
                result = conn.execute("PRAGMA quick_check").fetchone()
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"database file {path} is corrupt: {exc}") from None
        if not result or result[0] != "ok":
            raise StorageError(f"database file {path} is corrupt: {result and result[0]}")


class DatabaseFile:
    """The SQLite file an engine opened first, checked before every transaction, its commit,
    and every new connection.

    A file removed under the running bot stays open and writable, unlinked, until the process
    ends, and a new connection would make an empty one in its place; a file replaced (a
    backup moved over it) is not the one the bot reads. Either way what is stored from then on
    would be lost, so the first check that finds another file (or none) logs it once and every
    unit of work from then on fails with StorageUnavailable, storing nothing. The check is one
    `stat` on the database's own thread, next to the statement it guards.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._identity: tuple[int, int] | None = None
        self._lost: str | None = None
        self._lock = threading.Lock()  # connections may open on threads of their own

    def check(self) -> None:
        """Remember the file at `path` the first time one is there; afterwards raise
        StorageUnavailable when another file (or none) is there."""
        with self._lock:
            if self._lost is None:
                self._lost = self._compare()
                if self._lost is not None:
                    log.error(
                        "database file %s was %s under the running bot: nothing more is stored "
                        "until the bot is restarted with the right file",
                        self.path,
                        self._lost,
                    )
            if self._lost is not None:
                raise StorageUnavailable(
                    f"database file {self.path} was {self._lost}", key="storage.gone"
                )

    def _compare(self) -> str | None:
        try:
            found = os.stat(self.path)
        except FileNotFoundError:
            return None if self._identity is None else "removed"
        identity = (found.st_dev, found.st_ino)
        if self._identity is None:
            self._identity = identity
        return None if identity == self._identity else "replaced"


def create_engine(
    database_url: str, *, busy_timeout_s: float = SQLITE_BUSY_TIMEOUT_S, **kwargs: Any
) -> AsyncEngine:
    """An AsyncEngine, tuned for SQLite when the URL is SQLite.

    SQLite allows one writer at a time, so the process uses one connection: callers queue in
    asyncio, in order, instead of contending for the file lock (which under load ends in
    "database is locked"). Every connection gets WAL, a busy timeout (`busy_timeout_s`) and
    foreign keys, and every transaction starts with BEGIN IMMEDIATE, so another process
    writing at the same time makes this one wait on the busy timeout rather than fail on a
    read-to-write upgrade. The connection is aiosqlite's, with the trips to its thread cut
    (`sqlite_driver`), and the file is watched (`DatabaseFile`).

    A database server's pooled connections are checked before each use (`pool_pre_ping`): a
    server restart leaves them dead, and the first unit of work after it would fail.
    """
    if database_url.startswith("sqlite"):
        path = sqlite_path(database_url)
        watch = DatabaseFile(path) if path is not None else None
        kwargs = {
            "pool_size": 1,
            "max_overflow": 0,
            "pool_timeout": 300,
            # One trip per statement, with the file checked before each transaction.
            "async_creator": connection_factory(
                database_url, guard=watch.check if watch is not None else None
            ),
            **kwargs,
        }
    else:
        kwargs = {"pool_pre_ping": True, **kwargs}
    if database_url.startswith("postgresql+asyncpg"):
        # asyncpg waits 60 s for an unreachable server by default: fail within seconds.
        connect_args = {"timeout": CONNECT_TIMEOUT_S, **kwargs.pop("connect_args", {})}
        kwargs = {"connect_args": connect_args, **kwargs}
    engine = create_async_engine(database_url, **kwargs)
    if engine.dialect.name == "sqlite":
        sync_engine = engine.sync_engine
        busy_timeout_ms = round(busy_timeout_s * 1000)

        @event.listens_for(sync_engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            for pragma in (
                "journal_mode=WAL",
                f"busy_timeout={busy_timeout_ms}",
                "foreign_keys=ON",
                "synchronous=NORMAL",
            ):
                cursor.execute(f"PRAGMA {pragma}")
            cursor.close()

        @event.listens_for(sync_engine, "begin")
        def _on_begin(connection: Any) -> None:
            # Sent with the transaction's first statement, not in a trip of its own.
            connection.connection.driver_connection.begin_with_next_statement("BEGIN IMMEDIATE")

    return engine


def observe_statements(engine: AsyncEngine, observer: Observer) -> None:
    """Tell `observer` how long each SQL statement takes and which ones fail."""
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "before_cursor_execute")
    def _started(
        _conn: Any, _cursor: Any, _sql: Any, _params: Any, context: Any, _many: Any
    ) -> None:
        if context is not None:
            context.synatra_started = time.perf_counter()

    @event.listens_for(sync_engine, "after_cursor_execute")
    def _ended(_conn: Any, _cursor: Any, _sql: Any, _params: Any, context: Any, _many: Any) -> None:
        started = getattr(context, "synatra_started", None)
        if started is not None:
            observer.database_statement(time.perf_counter() - started)

    @event.listens_for(sync_engine, "handle_error")
    def _failed(context: Any) -> None:
        error = context.original_exception
        observer.database_error(type(error).__name__)


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)
