"""PostgreSQL: the same migrations and repository work on a real temporary server.

The server is PostgreSQL from the machine (Debian's `postgresql` package, in the base image of
these machines and CI); the test starts its own throw-away cluster on a Unix socket.
"""

import asyncio

import pytest
from alembic import command
from sqlalchemy import text
from sqlalchemy.engine import make_url

from synatra_bot.storage import repository as repo
from synatra_bot.storage.database import create_engine, create_sessionmaker
from synatra_bot.storage.migrate import alembic_config, head_revision, upgrade_database
from tests.db_helpers import assert_old_scene_kept, fill_at_0001, postgres_server, schema_diff
from tests.test_member_quotas import check_quotas_hold
from tests.test_pins import check_pin_limit_holds
from tests.test_player_facts import check_fact_cap_holds, check_player_facts
from tests.test_scene_quotas import check_scene_quota_holds
from tests.test_scene_storage import check_scene_memory
from tests.test_storage import check_limits_hold_concurrently


@pytest.fixture(scope="module")
def postgres_url():
    with postgres_server() as server:
        if server is None:
            pytest.skip("PostgreSQL server binaries are not installed (apt-get install postgresql)")
        yield server.create_database("synatra")


async def test_migrations_create_the_schema_and_agree_with_the_models(postgres_url):
    _, after = await upgrade_database(postgres_url)
    assert after == head_revision(postgres_url)
    assert await upgrade_database(postgres_url) == (after, after)
    assert await schema_diff(postgres_url) == []


async def test_roleplay_rows_round_trip_with_discord_snowflakes(postgres_url):
    await upgrade_database(postgres_url)
    engine = create_engine(postgres_url)
    sessions = create_sessionmaker(engine)
    guild, channel, owner = 1575980247692607488, 1575980247692607490, 1575980247692607499
    try:
        character = await repo.create_character(
            sessions, owner_id=owner, guild_id=guild, name="민지", tags=["학교", "일상"]
        )
        rp = await repo.start_session(
            sessions,
            guild_id=guild,
            channel_id=channel,
            parent_channel_id=None,
            character_id=character.id,
            started_by=owner,
        )

        async def writer(player: int) -> None:
            for n in range(10):
                await repo.add_message(
                    sessions,
                    session_id=rp.id,
                    role="user",
                    author_id=owner + player,
                    content=f"{player}-{n} 안녕",
                    discord_message_ids=[channel + player * 100 + n],
                )

        await asyncio.gather(*(writer(p) for p in range(4)))
        reply = await repo.add_message(
            sessions, session_id=rp.id, role="assistant", content="반가워!"
        )
        await repo.add_alternative(sessions, message_id=reply.id, content="어서 와!")
        history = await repo.recent_history(sessions, session_id=rp.id, limit=100)
        assert len(history) == 41 and history[-1].content == "어서 와!"
        found = await repo.find_by_discord_id(sessions, discord_message_id=channel + 302)
        assert found is not None and found.content == "3-2 안녕"
        visible = await repo.visible_characters(
            sessions, guild_id=guild, user_id=owner, name_prefix="민"
        )
        assert [c.tags for c in visible] == [["학교", "일상"]]
        batch = [
            repo.NewMessage(session_id=rp.id, role="user", content=f"{n % 3}번 말", token_count=n)
            for n in range(30)
        ] + [repo.NewMessage(session_id=rp.id, role="assistant", content="대답")]
        stored = await repo.add_messages(sessions, batch)  # one round, rows matched back in order
        assert [(m.content, m.token_count) for m in stored[:-1]] == [
            (t.content, t.token_count) for t in batch[:-1]
        ]
        assert [m.id for m in stored] == sorted(m.id for m in stored)
        alternative = await repo.add_alternative(
            sessions, message_id=stored[-1].id, content="다른 대답"
        )
        assert alternative.swipe_group == stored[-1].id == alternative.turn_group
    finally:
        await engine.dispose()


async def _new_database(postgres_url: str, name: str) -> str:
    """Another, empty database on the test server (the module's own is already migrated)."""
    engine = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(f"CREATE DATABASE {name}"))
    finally:
        await engine.dispose()
    return make_url(postgres_url).set(database=name).render_as_string(hide_password=False)


async def test_upgrade_from_0001_keeps_scenes_and_gives_them_their_cast(postgres_url):
    url = await _new_database(postgres_url, "from_0001")
    await asyncio.to_thread(command.upgrade, alembic_config(url), "0001")
    old = await fill_at_0001(url)
    _, after = await upgrade_database(url)
    assert after == head_revision(url)
    assert await schema_diff(url) == []
    engine = create_engine(url)
    sessions = create_sessionmaker(engine)
    try:
        await assert_old_scene_kept(sessions, old)
        jun = await repo.create_character(
            sessions, owner_id=old.player_id, guild_id=old.guild_id, name="준"
        )
        added = await repo.add_to_cast(
            sessions, session_id=old.session_id, character_id=jun.id, max_size=2
        )
        assert added is not None and added.position == 1
        reply = await repo.add_message(
            sessions,
            session_id=old.session_id,
            role="assistant",
            content="나도 왔어.",
            character_id=jun.id,
        )
        assert reply.character_id == jun.id
        assert await repo.delete_character(sessions, character_id=jun.id)
        cast = await repo.session_cast(sessions, session_id=old.session_id)
        assert [m.character_id for m in cast] == [old.character_id]
        unnamed = await repo.get_message(sessions, message_id=reply.id)
        assert unnamed is not None and unnamed.character_id is None
    finally:
        await engine.dispose()
    await asyncio.to_thread(command.downgrade, alembic_config(url), "0002")
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            kept = (await conn.execute(text("SELECT count(*) FROM messages"))).scalar_one()
            tables = (
                await conn.execute(
                    text("SELECT count(*) FROM pg_tables WHERE tablename = 'session_cast'")
                )
            ).scalar_one()
    finally:
        await engine.dispose()
    assert (kept, tables) == (6, 0)


async def test_scene_memory_round_trips_with_discord_snowflakes(postgres_url):
    await upgrade_database(postgres_url)
    engine = create_engine(postgres_url)
    try:
        await check_scene_memory(
            create_sessionmaker(engine),
            guild_id=1575980247692607488,
            channel_id=1575980247692607777,
        )
    finally:
        await engine.dispose()


async def test_player_facts_round_trip_with_discord_snowflakes(postgres_url):
    await upgrade_database(postgres_url)
    engine = create_engine(postgres_url)
    try:
        await check_player_facts(
            create_sessionmaker(engine), guild_id=1575980247692607488, user_id=1575980247692607499
        )
    finally:
        await engine.dispose()


async def test_limits_hold_when_members_add_at_the_same_moment(postgres_url):
    await upgrade_database(postgres_url)
    engine = create_engine(postgres_url)
    try:
        await check_limits_hold_concurrently(create_sessionmaker(engine))
    finally:
        await engine.dispose()


async def test_quotas_hold_when_saved_at_the_same_moment(postgres_url):
    await upgrade_database(postgres_url)
    engine = create_engine(postgres_url)
    try:
        await check_quotas_hold(create_sessionmaker(engine))
    finally:
        await engine.dispose()


async def test_scene_quota_holds_when_imported_and_branched_at_the_same_moment(postgres_url):
    await upgrade_database(postgres_url)
    engine = create_engine(postgres_url)
    try:
        await check_scene_quota_holds(create_sessionmaker(engine))
    finally:
        await engine.dispose()


async def test_pins_stop_at_the_scene_limit_when_added_at_the_same_moment(postgres_url):
    await upgrade_database(postgres_url)
    engine = create_engine(postgres_url)
    try:
        await check_pin_limit_holds(create_sessionmaker(engine))
    finally:
        await engine.dispose()


async def test_turn_vectors_round_trip_and_count_in_the_scene_quota(postgres_url):
    from synatra_bot.roleplay.embedded_recall import TurnEmbeddings
    from synatra_bot.storage.archives import ImportedTurn, import_scene
    from synatra_bot.storage.recall_vectors import scene_vectors
    from tests.test_embedded_recall import DIMENSIONS, ConceptEmbedder
    from tests.test_scene_quotas import copied_usage

    await upgrade_database(postgres_url)
    engine = create_engine(postgres_url)
    sessions = create_sessionmaker(engine)
    member, guild = 1575980247692607600, 1575980247692607601
    texts = ["고양이 나비는 축제에서 만났어.", "버스가 늦었다."]
    try:
        character = await repo.create_character(
            sessions, owner_id=member, guild_id=guild, name="하늘"
        )
        scene = await import_scene(
            sessions,
            guild_id=guild,
            channel_id=1575980247692607602,
            parent_channel_id=None,
            character_id=character.id,
            started_by=member,
            turns=[ImportedTurn(role="user", options=(t,), author_id=member) for t in texts],
        )
        embeddings = TurnEmbeddings(sessions, ConceptEmbedder(), query_timeout_s=5)
        try:
            await embeddings.similar(session_id=scene.id, query="냥이", before_id=2**31, limit=2)
            await embeddings.settled()
            found = await embeddings.similar(
                session_id=scene.id, query="냥이", before_id=2**31, limit=2
            )
        finally:
            await embeddings.close()
        stored = await scene_vectors(sessions, session_id=scene.id, model="concepts-v1")
        assert len(stored) == 2 and {len(blob) for _, blob in stored} == {DIMENSIONS * 4}
        assert found is not None and found[0].message_id == stored[0][0]
        text_bytes = sum(len(t.encode()) for t in texts)
        assert await copied_usage(sessions, member, guild) == (2, text_bytes + 2 * DIMENSIONS * 4)
    finally:
        await engine.dispose()


async def test_facts_stop_at_the_cap_when_added_at_the_same_moment(postgres_url):
    await upgrade_database(postgres_url)
    engine = create_engine(postgres_url)
    try:
        await check_fact_cap_holds(create_sessionmaker(engine))
    finally:
        await engine.dispose()
