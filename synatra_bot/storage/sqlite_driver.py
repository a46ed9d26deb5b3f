"""aiosqlite with one trip to its database thread per statement.

Every call into aiosqlite is a hand-off to its thread and back. Through SQLAlchemy a statement
takes four (open a cursor, execute, fetch, close it), a transaction's BEGIN one more, and the
pool's reset on return one more again, even after a COMMIT. Here a statement's cursor is opened,
executed, fetched and closed in one trip; BEGIN IMMEDIATE rides with the transaction's first
statement; and the reset is skipped when no transaction is open. A batch of turns is written
in two trips (BEGIN with the INSERT, then COMMIT) instead of seven.

SQLAlchemy gets this connection through `create_async_engine(async_creator=...)`, its documented
way to supply the driver connection; its aiosqlite dialect is used as it is.

A `guard` (`database.DatabaseFile.check`) runs on the database thread before a connection
opens the file, before each BEGIN and before each COMMIT, in the same trip: when it raises,
nothing is opened, begun or committed.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import aiosqlite
from sqlalchemy.engine import make_url

T = TypeVar("T")
_Result = tuple[Any, int, int | None, list[Any]]


Guard = Callable[[], None]


class OneTripConnection(aiosqlite.Connection):
    """An aiosqlite connection whose cursors take one trip per statement."""

    def __init__(
        self, connector: Callable[[], sqlite3.Connection], *, guard: Guard | None = None
    ) -> None:
        super().__init__(connector, iter_chunk_size=64)
        self._thread.daemon = True  # as SQLAlchemy sets it for aiosqlite's own connections
        self._pending_begin: str | None = None
        self._guard = guard

    def begin_with_next_statement(self, sql: str) -> None:
        """Send `sql` (BEGIN IMMEDIATE) in the same trip as the next statement."""
        self._pending_begin = sql

    async def trip(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work(sqlite3_connection)` on the database thread, with a pending BEGIN first."""
        begin, self._pending_begin = self._pending_begin, None

        def run() -> T:
            connection = self._conn
            if begin is not None:
                if self._guard is not None:
                    self._guard()
                connection.execute(begin)
            return work(connection)

        on_thread: Callable[[Callable[[], T]], Awaitable[T]] = self._execute  # aiosqlite's queue
        return await on_thread(run)

    def cursor(self) -> OneTripCursor:  # type: ignore[override]
        # No trip: the sqlite3 cursor lives only inside each statement's trip.
        return OneTripCursor(self)

    async def commit(self) -> None:
        if self._pending_begin is not None:
            self._pending_begin = None  # nothing ran since BEGIN: nothing to commit
            return
        await self.trip(self._commit)

    def _commit(self, connection: sqlite3.Connection) -> None:
        if self._guard is not None:
            self._guard()
        connection.commit()

    async def rollback(self) -> None:
        if self._pending_begin is not None:
            self._pending_begin = None
            return
        if not self._conn.in_transaction:
            # The pool's reset after a COMMIT: no trip for nothing. (A caller cancelled during
            # a trip never gets here: SQLAlchemy discards that connection instead.)
            return
        await self.trip(lambda connection: connection.rollback())


class OneTripCursor:
    """The DB-API cursor SQLAlchemy's aiosqlite adapter drives: `execute` runs the statement,
    fetches its rows and closes the sqlite3 cursor in one trip; fetching reads what came back."""

    arraysize = 1

    def __init__(self, connection: OneTripConnection) -> None:
        self._connection = connection
        self.description: Any = None
        self.rowcount = -1
        self.lastrowid: int | None = None
        self._rows: list[Any] = []

    async def __aenter__(self) -> OneTripCursor:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def execute(self, sql: str, parameters: Any = ()) -> OneTripCursor:
        self._take(await self._connection.trip(lambda c: _run(c.execute, sql, parameters)))
        return self

    async def executemany(self, sql: str, parameters: Sequence[Any]) -> OneTripCursor:
        self._take(await self._connection.trip(lambda c: _run(c.executemany, sql, parameters)))
        return self

    def _take(self, result: _Result) -> None:
        self.description, self.rowcount, self.lastrowid, self._rows = result

    async def fetchone(self) -> Any:
        return self._rows.pop(0) if self._rows else None

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        count = self.arraysize if size is None else size
        rows, self._rows = self._rows[:count], self._rows[count:]
        return rows

    async def fetchall(self) -> list[Any]:
        rows, self._rows = self._rows, []
        return rows

    async def close(self) -> None:
        self._rows = []


def _run(execute: Callable[[str, Any], sqlite3.Cursor], sql: str, parameters: Any) -> _Result:
    cursor = execute(sql, parameters if parameters is not None else ())
    try:
        rows = cursor.fetchall() if cursor.description else []
        return cursor.description, cursor.rowcount, cursor.lastrowid, rows
    finally:
        cursor.close()


def connection_factory(database_url: str, *, guard: Guard | None = None) -> Callable[[], Any]:
    """`async_creator` for an `sqlite+aiosqlite` URL: opens the file SQLAlchemy would open."""
    url = make_url(database_url)
    args, options = url.get_dialect()().create_connect_args(url)

    def open_file() -> sqlite3.Connection:
        if guard is not None:
            guard()  # no new, empty file where the bot's was
        connect: Callable[..., sqlite3.Connection] = sqlite3.connect
        connection = connect(*args, **options)
        if guard is not None:
            try:
                guard()  # the first connection's file is the one every later check expects
            except BaseException:
                connection.close()
                raise
        return connection

    async def connect() -> OneTripConnection:
        connection = OneTripConnection(open_file, guard=guard)
        await connection  # starts aiosqlite's thread and opens the file there
        return connection

    return connect
