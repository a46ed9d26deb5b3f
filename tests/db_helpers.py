"""Database checks shared by the SQLite and PostgreSQL tests, and a throw-away PostgreSQL server."""

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from synatra_bot.storage import repository as repo
from synatra_bot.storage.database import create_engine, create_sessionmaker
from synatra_bot.storage.models import Base
from synatra_bot.storage.repository import Sessions


async def schema_diff(database_url: str) -> list:
    """What autogenerate would change between the migrated database and the models."""
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(
                lambda c: compare_metadata(
                    MigrationContext.configure(c, opts={"compare_type": True}), Base.metadata
                )
            )
    finally:
        await engine.dispose()


@dataclass(frozen=True)
class OldScene:
    """The ids of the rows `fill_at_0001` wrote."""

    guild_id: int
    channel_id: int
    player_id: int
    character_id: int
    session_id: int
    greeting_id: int
    swipe_id: int
    player_turn_id: int
    reply_id: int
    orphan_session_id: int
    orphan_reply_id: int


#: When the old rows were written: a literal, so both SQLite and PostgreSQL read it as a time.
OLD_TIME = "'2026-01-01 09:00:00'"


async def fill_at_0001(database_url: str) -> OldScene:
    """Rows as synatra-bot wrote them at revision 0001, in plain SQL: a server's settings, a
    channel with an active scene, its character, a greeting with two swipes, a player turn and
    a reply, a persona, and an archived scene whose character was deleted.

    Serial ids are left to the database, so later inserts do not collide with them.
    """
    engine = create_engine(database_url)
    try:
        async with engine.begin() as conn:

            async def insert(sql: str, **params: object) -> int:
                return int((await conn.execute(text(f"{sql} RETURNING id"), params)).scalar_one())

            guild, channel, player = 1575980247692607488, 1575980247692607490, 1575980247692607499
            await conn.execute(
                text(
                    "INSERT INTO guild_settings (guild_id, approval_required, temperature,"
                    f" nsfw_policy, created_at, updated_at) VALUES (:guild, TRUE, 0.8, 'allowed',"
                    f" {OLD_TIME}, {OLD_TIME})"
                ),
                {"guild": guild},
            )
            character = await insert(
                "INSERT INTO characters (owner_id, guild_id, visibility, approval, name,"
                " description, personality, scenario, first_message, alternate_greetings,"
                " example_messages, system_prompt, post_history_instructions, creator_notes,"
                " tags, creator, character_version, extensions, nsfw, created_at, updated_at)"
                " VALUES (:owner, :guild, 'guild', 'approved', '민지', '활발한 대학생', '밝음',"
                " '캠퍼스', '안녕! 나 민지야.', '[\"왔구나!\"]', '', '', '', '', '[\"학교\"]',"
                f" '', '', '{{}}', FALSE, {OLD_TIME}, {OLD_TIME})",
                owner=player,
                guild=guild,
            )
            session = await insert(
                "INSERT INTO roleplay_sessions (guild_id, channel_id, parent_channel_id,"
                " character_id, started_by, started_at, ended_at, summary) VALUES (:guild,"
                f" :channel, NULL, :character, :player, {OLD_TIME}, NULL, '첫 만남')",
                guild=guild,
                channel=channel,
                character=character,
                player=player,
            )
            orphan = await insert(
                "INSERT INTO roleplay_sessions (guild_id, channel_id, parent_channel_id,"
                " character_id, started_by, started_at, ended_at, summary) VALUES (:guild,"
                f" :channel, NULL, NULL, :player, {OLD_TIME}, {OLD_TIME}, '')",
                guild=guild,
                channel=channel,
                player=player,
            )
            await conn.execute(
                text(
                    "INSERT INTO channel_settings (channel_id, guild_id, enabled, reply_mode,"
                    " edit_policy, active_session_id, author_note, author_note_depth,"
                    " created_at, updated_at) VALUES (:channel, :guild, TRUE, 'mention',"
                    f" 'regenerate', :session, '존댓말 금지', 2, {OLD_TIME}, {OLD_TIME})"
                ),
                {"channel": channel, "guild": guild, "session": session},
            )
            message = (
                "INSERT INTO messages (session_id, role, author_id, display_name, content,"
                " token_count, discord_message_id, discord_message_ids, swipe_group,"
                " swipe_index, chosen, deleted, created_at, edited_at) VALUES (:session,"
                " :role, :author, :name, :content, NULL, :discord, :discord_ids, :group,"
                f" :index, :chosen, FALSE, {OLD_TIME}, NULL)"
            )

            async def turn(**params: object) -> int:
                values = {"author": None, "group": None, "index": 0, "chosen": True} | params
                return await insert(message, **values)

            greeting = await turn(
                session=session,
                role="assistant",
                name="민지",
                content="안녕! 나 민지야.",
                discord=channel + 1,
                discord_ids=f"[{channel + 1}]",
                chosen=False,
            )
            await conn.execute(
                text("UPDATE messages SET swipe_group = :id WHERE id = :id"), {"id": greeting}
            )
            swipe = await turn(
                session=session,
                role="assistant",
                name="민지",
                content="왔구나!",
                discord=channel + 1,
                discord_ids=f"[{channel + 1}]",
                group=greeting,
                index=1,
            )
            player_turn = await turn(
                session=session,
                role="user",
                author=player,
                name="준",
                content="응, 오랜만이야.",
                discord=channel + 2,
                discord_ids=f"[{channel + 2}]",
            )
            reply = await turn(
                session=session,
                role="assistant",
                name="민지",
                content="보고 싶었어!",
                discord=channel + 3,
                discord_ids=f"[{channel + 3}, {channel + 4}]",
            )
            orphan_reply = await turn(
                session=orphan,
                role="assistant",
                name="지워진 캐릭터",
                content="옛날 대답",
                discord=None,
                discord_ids="[]",
            )
            await conn.execute(
                text(
                    "INSERT INTO personas (user_id, guild_id, name, description, updated_at)"
                    f" VALUES (:player, 0, '준', '민지의 소꿉친구', {OLD_TIME})"
                ),
                {"player": player},
            )
    finally:
        await engine.dispose()
    return OldScene(
        guild_id=guild,
        channel_id=channel,
        player_id=player,
        character_id=character,
        session_id=session,
        greeting_id=greeting,
        swipe_id=swipe,
        player_turn_id=player_turn,
        reply_id=reply,
        orphan_session_id=orphan,
        orphan_reply_id=orphan_reply,
    )


async def assert_old_scene_kept(sessions: Sessions, old: OldScene) -> None:
    """What `fill_at_0001` wrote, read back at head through the repository: the scene's cast is
    its character, its assistant turns are that character's, and nothing else changed."""
    active = await repo.get_active_session(sessions, channel_id=old.channel_id)
    assert active is not None
    assert (active.id, active.character_id, active.summary) == (
        old.session_id,
        old.character_id,
        "첫 만남",
    )
    cast = await repo.session_cast(sessions, session_id=old.session_id)
    assert [(m.character_id, m.position) for m in cast] == [(old.character_id, 0)]
    assert cast[0].joined_at == active.started_at

    history = await repo.recent_history(sessions, session_id=old.session_id, limit=10)
    assert [(m.id, m.role, m.content, m.author_id, m.character_id) for m in history] == [
        (old.swipe_id, "assistant", "왔구나!", None, old.character_id),
        (old.player_turn_id, "user", "응, 오랜만이야.", old.player_id, None),
        (old.reply_id, "assistant", "보고 싶었어!", None, old.character_id),
    ]
    assert history[-1].discord_message_ids == (old.channel_id + 3, old.channel_id + 4)
    swipes = await repo.alternatives(sessions, message_id=old.greeting_id)
    assert [
        (m.content, m.swipe_group, m.swipe_index, m.chosen, m.character_id) for m in swipes
    ] == [
        ("안녕! 나 민지야.", old.greeting_id, 0, False, old.character_id),
        ("왔구나!", old.greeting_id, 1, True, old.character_id),
    ]

    assert await repo.session_cast(sessions, session_id=old.orphan_session_id) == []
    orphan_reply = await repo.get_message(sessions, message_id=old.orphan_reply_id)
    assert orphan_reply is not None and orphan_reply.character_id is None

    character = await repo.get_character(sessions, character_id=old.character_id)
    assert character is not None
    assert (character.name, character.tags, character.alternate_greetings) == (
        "민지",
        ["학교"],
        ["왔구나!"],
    )
    persona = await repo.get_persona(sessions, user_id=old.player_id, guild_id=old.guild_id)
    assert persona is not None and (persona.name, persona.description) == ("준", "민지의 소꿉친구")
    guild = await repo.get_guild_settings(sessions, guild_id=old.guild_id)
    assert (guild.approval_required, guild.temperature, guild.nsfw_policy) == (
        True,
        0.8,
        "allowed",
    )
    assert (guild.character_limit, guild.cast_limit) == (None, None)
    channel = await repo.get_channel_settings(sessions, channel_id=old.channel_id)
    assert channel is not None
    assert (
        channel.enabled,
        channel.reply_mode,
        channel.edit_policy,
        channel.author_note,
        channel.author_note_depth,
        channel.answer_every_addressed,
    ) == (True, "mention", "regenerate", "존댓말 금지", 2, False)


async def upgraded_from_0001(tmp_path, revision: str) -> tuple[str, OldScene]:
    """A SQLite database with `fill_at_0001`'s rows, taken to `revision`, then to head as the
    bot does when it starts; the schema at head matches the models. Its URL and the rows."""
    import asyncio

    from alembic import command

    from synatra_bot.storage.migrate import alembic_config, upgrade_database

    url = f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
    await asyncio.to_thread(command.upgrade, alembic_config(url), "0001")
    old = await fill_at_0001(url)
    await asyncio.to_thread(command.upgrade, alembic_config(url), revision)
    await upgrade_database(url)
    assert await schema_diff(url) == []
    return url, old


@contextlib.asynccontextmanager
async def opened(database_url: str) -> AsyncIterator[Sessions]:
    """Sessions on the database, its engine disposed on exit."""
    engine = create_engine(database_url)
    try:
        yield create_sessionmaker(engine)
    finally:
        await engine.dispose()


async def assert_kept_down_and_up(database_url: str, revision: str, old: OldScene) -> None:
    """Down to `revision` and up to head again: the old rows came through both ways."""
    import asyncio

    from alembic import command

    from synatra_bot.storage.migrate import alembic_config, upgrade_database

    await asyncio.to_thread(command.downgrade, alembic_config(database_url), revision)
    await upgrade_database(database_url)
    async with opened(database_url) as sessions:
        await assert_old_scene_kept(sessions, old)


PG_BIN = Path("/usr/lib/postgresql/15/bin")


def postgres_tools() -> Path | None:
    """The folder of PostgreSQL's server programs (initdb, pg_ctl), or None without them."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    return PG_BIN if (PG_BIN / "initdb").exists() else None


def _as_postgres(*command: str) -> list[str]:
    # initdb and postgres refuse to run as root.
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else list(command)


class PostgresServer:
    """A throw-away PostgreSQL cluster on a Unix socket in a temporary folder, which a test can
    restart (as a host's maintenance does) while clients hold connections to it."""

    def __init__(self, tools: Path) -> None:
        self.tools = tools
        self.folder = Path(tempfile.mkdtemp(prefix="synatra-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres")
        self.data = self.folder / "data"
        self._run(str(tools / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres")

    def _run(self, *command: str) -> None:
        subprocess.run(_as_postgres(*command), check=True, capture_output=True, timeout=60)

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://postgres@/{database}?host={self.folder}"

    def start(self) -> None:
        options = f"-k {self.folder} -c listen_addresses='' -c fsync=off"
        log = str(self.folder / "log")
        self._run(
            str(self.tools / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            log,
            "-w",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """`fast` ends every session (their connections drop) and stops; `immediate` too,
        without a clean shutdown (the next start recovers)."""
        self._run(str(self.tools / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def create_database(self, name: str) -> str:
        self._run("createdb", "-h", str(self.folder), "-U", "postgres", name)
        return self.url(name)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer | None]:
    """A started PostgresServer (None when the server programs are not installed), stopped
    and removed afterwards."""
    tools = postgres_tools()
    if tools is None:
        yield None
        return
    server = PostgresServer(tools)
    try:
        server.start()
        yield server
        server.stop()
    finally:
        server.remove()
