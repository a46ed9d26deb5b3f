"""Scene storage: casts of several characters, the speaker of each turn, DM scenes, user settings,
and the migration that brings older databases there."""

import asyncio
import dataclasses
import sqlite3

import pytest
from alembic import command

from synatra_bot.errors import LimitReached
from synatra_bot.storage import repository as repo
from synatra_bot.storage.database import create_engine, create_sessionmaker
from synatra_bot.storage.migrate import alembic_config, upgrade_database
from synatra_bot.storage.records import UserSettingsRecord
from tests.db_helpers import assert_old_scene_kept, fill_at_0001, schema_diff
from tests.fakes import stored_turn

GUILD, CHANNEL, PLAYER = 100, 10, 1


@pytest.fixture
def db_url(tmp_path):
    return f"sqlite+aiosqlite:///{tmp_path / 'data' / 'synatra.db'}"


@pytest.fixture
async def sessions(db_url):
    await upgrade_database(db_url)
    engine = create_engine(db_url)
    yield create_sessionmaker(engine)
    await engine.dispose()


async def _character(sessions, name, guild_id=GUILD):
    return await repo.create_character(sessions, owner_id=PLAYER, guild_id=guild_id, name=name)


async def _scene(sessions, *names, channel_id=CHANNEL):
    """A scene started with the first of `names`; returns it and the characters by name."""
    characters = {name: await _character(sessions, name) for name in names}
    scene = await repo.start_session(
        sessions,
        guild_id=GUILD,
        channel_id=channel_id,
        parent_channel_id=None,
        character_id=characters[names[0]].id,
        started_by=PLAYER,
    )
    return scene, characters


async def _cast(sessions, scene):
    return [
        (m.character_id, m.position) for m in await repo.session_cast(sessions, session_id=scene.id)
    ]


# --- migration ------------------------------------------------------------------------------


async def _database_at_0001(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
    await asyncio.to_thread(command.upgrade, alembic_config(url), "0001")
    return url, await fill_at_0001(url)


async def test_upgrade_from_0001_makes_each_scene_a_cast_of_its_character(tmp_path):
    url, old = await _database_at_0001(tmp_path)
    await upgrade_database(url)
    assert await schema_diff(url) == []
    engine = create_engine(url)
    try:
        await assert_old_scene_kept(create_sessionmaker(engine), old)
    finally:
        await engine.dispose()


async def test_an_upgraded_scene_takes_new_cast_members_and_their_turns(tmp_path):
    url, old = await _database_at_0001(tmp_path)
    await upgrade_database(url)
    engine = create_engine(url)
    sessions = create_sessionmaker(engine)
    try:
        jun = await _character(sessions, "준", guild_id=old.guild_id)
        added = await repo.add_to_cast(
            sessions, session_id=old.session_id, character_id=jun.id, max_size=4
        )
        assert added is not None and added.position == 1
        reply = await repo.add_message(
            sessions,
            session_id=old.session_id,
            role="assistant",
            content="나도 왔어.",
            character_id=jun.id,
        )
        history = await repo.recent_history(sessions, session_id=old.session_id, limit=10)
        assert history[-1].id == reply.id and history[-1].character_id == jun.id
    finally:
        await engine.dispose()


async def test_downgrade_to_0002_keeps_sessions_and_messages(tmp_path):
    url, old = await _database_at_0001(tmp_path)
    await upgrade_database(url)
    path = tmp_path / "old.db"
    query = "SELECT id, session_id, role, content, swipe_group, chosen FROM messages ORDER BY id"
    with sqlite3.connect(path) as conn:
        messages = conn.execute(query).fetchall()
        scenes = conn.execute(
            "SELECT id, character_id FROM roleplay_sessions ORDER BY id"
        ).fetchall()
    await asyncio.to_thread(command.downgrade, alembic_config(url), "0002")
    with sqlite3.connect(path) as conn:
        assert conn.execute(query).fetchall() == messages
        assert (
            conn.execute("SELECT id, character_id FROM roleplay_sessions ORDER BY id").fetchall()
            == scenes
        )
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        message_columns = {c[1] for c in conn.execute("PRAGMA table_info(messages)")}
        channel_columns = {c[1] for c in conn.execute("PRAGMA table_info(channel_settings)")}
        guild_columns = {c[1] for c in conn.execute("PRAGMA table_info(guild_settings)")}
    assert len(messages) == 5 and scenes == [
        (old.session_id, old.character_id),
        (old.orphan_session_id, None),
    ]
    assert not tables & {"session_cast", "user_settings"}
    assert "character_id" not in message_columns
    assert "answer_every_addressed" not in channel_columns
    assert "cast_limit" not in guild_columns and "character_limit" in guild_columns
    await upgrade_database(url)  # and up again: the cast is rebuilt from the sessions
    engine = create_engine(url)
    try:
        await assert_old_scene_kept(create_sessionmaker(engine), old)
    finally:
        await engine.dispose()


# --- the cast -------------------------------------------------------------------------------


async def test_a_started_scene_has_its_character_as_the_whole_cast(sessions):
    scene, characters = await _scene(sessions, "민지")
    cast = await repo.session_cast(sessions, session_id=scene.id)
    assert [(m.session_id, m.character_id, m.position) for m in cast] == [
        (scene.id, characters["민지"].id, 0)
    ]
    assert cast[0].joined_at is not None


async def test_characters_added_to_a_cast_follow_in_order(sessions):
    scene, characters = await _scene(sessions, "민지", "준", "서연")
    for name in ("서연", "준"):
        added = await repo.add_to_cast(
            sessions, session_id=scene.id, character_id=characters[name].id, max_size=5
        )
        assert added is not None and added.character_id == characters[name].id
    assert await _cast(sessions, scene) == [
        (characters["민지"].id, 0),
        (characters["서연"].id, 1),
        (characters["준"].id, 2),
    ]


async def test_adding_a_character_already_in_the_cast_returns_none(sessions):
    scene, characters = await _scene(sessions, "민지", "준")
    jun = characters["준"].id
    assert await repo.add_to_cast(sessions, session_id=scene.id, character_id=jun, max_size=2)
    assert (
        await repo.add_to_cast(sessions, session_id=scene.id, character_id=jun, max_size=2) is None
    )
    first = characters["민지"].id
    assert (
        await repo.add_to_cast(sessions, session_id=scene.id, character_id=first, max_size=2)
        is None
    )
    assert await _cast(sessions, scene) == [(first, 0), (jun, 1)]


async def test_a_full_cast_refuses_another_character(sessions):
    scene, characters = await _scene(sessions, "민지", "준", "서연")
    await repo.add_to_cast(
        sessions, session_id=scene.id, character_id=characters["준"].id, max_size=2
    )
    with pytest.raises(LimitReached) as raised:
        await repo.add_to_cast(
            sessions, session_id=scene.id, character_id=characters["서연"].id, max_size=2
        )
    assert raised.value.params == {"limit": 2}
    assert [c for c, _ in await _cast(sessions, scene)] == [
        characters["민지"].id,
        characters["준"].id,
    ]


async def test_concurrent_additions_do_not_pass_the_cast_limit(sessions):
    scene, characters = await _scene(sessions, "민지", "준", "서연", "하늘", "도윤")
    results = await asyncio.gather(
        *(
            repo.add_to_cast(sessions, session_id=scene.id, character_id=c.id, max_size=3)
            for name, c in characters.items()
            if name != "민지"
        ),
        return_exceptions=True,
    )
    assert sum(isinstance(r, LimitReached) for r in results) == 2
    assert [p for _, p in await _cast(sessions, scene)] == [0, 1, 2]


async def test_a_removed_character_leaves_the_cast_and_can_join_again_at_the_end(sessions):
    scene, characters = await _scene(sessions, "민지", "준", "서연")
    minji, jun, seoyeon = (characters[n].id for n in ("민지", "준", "서연"))
    for character_id in (jun, seoyeon):
        await repo.add_to_cast(sessions, session_id=scene.id, character_id=character_id, max_size=3)
    assert await repo.remove_from_cast(sessions, session_id=scene.id, character_id=jun)
    assert not await repo.remove_from_cast(sessions, session_id=scene.id, character_id=jun)
    assert await _cast(sessions, scene) == [(minji, 0), (seoyeon, 2)]
    await repo.add_to_cast(sessions, session_id=scene.id, character_id=jun, max_size=3)
    assert await _cast(sessions, scene) == [(minji, 0), (seoyeon, 2), (jun, 3)]


async def test_adding_to_a_scene_that_does_not_exist_is_a_lookup_error(sessions):
    jun = await _character(sessions, "준")
    with pytest.raises(LookupError):
        await repo.add_to_cast(sessions, session_id=999, character_id=jun.id, max_size=3)


async def test_deleting_a_character_removes_it_from_casts_and_unnames_its_turns(sessions):
    scene, characters = await _scene(sessions, "민지", "준")
    minji, jun = characters["민지"].id, characters["준"].id
    await repo.add_to_cast(sessions, session_id=scene.id, character_id=jun, max_size=3)
    turn = await repo.add_message(
        sessions, session_id=scene.id, role="assistant", content="안녕, 준이야.", character_id=jun
    )
    assert await repo.delete_character(sessions, character_id=jun)
    assert await _cast(sessions, scene) == [(minji, 0)]
    kept = await repo.get_message(sessions, message_id=turn.id)
    assert kept is not None and (kept.content, kept.character_id) == ("안녕, 준이야.", None)


async def test_a_new_scene_in_the_channel_starts_its_own_cast(sessions):
    first, characters = await _scene(sessions, "민지", "준")
    await repo.add_to_cast(
        sessions, session_id=first.id, character_id=characters["준"].id, max_size=3
    )
    second = await repo.start_session(
        sessions,
        guild_id=GUILD,
        channel_id=CHANNEL,
        parent_channel_id=None,
        character_id=characters["준"].id,
        started_by=PLAYER,
    )
    assert await _cast(sessions, second) == [(characters["준"].id, 0)]
    assert len(await _cast(sessions, first)) == 2  # the archived scene keeps its cast


async def test_a_dm_scene_starts_without_a_server(sessions):
    minji = await _character(sessions, "민지", guild_id=None)
    scene = await repo.start_session(
        sessions,
        guild_id=None,
        channel_id=900,
        parent_channel_id=None,
        character_id=minji.id,
        started_by=PLAYER,
    )
    assert scene.guild_id is None
    active = await repo.get_active_session(sessions, channel_id=900)
    assert active is not None and active.id == scene.id
    channel = await repo.get_channel_settings(sessions, channel_id=900)
    assert channel is not None and channel.guild_id == 0
    assert await _cast(sessions, scene) == [(minji.id, 0)]


# --- settings -------------------------------------------------------------------------------


async def test_user_settings_default_round_trip_and_reject_unknown_fields(sessions):
    assert await repo.get_user_settings(sessions, user_id=PLAYER) == UserSettingsRecord(
        user_id=PLAYER, nsfw_in_dms=False
    )
    updated = await repo.update_user_settings(sessions, user_id=PLAYER, nsfw_in_dms=True)
    assert updated.nsfw_in_dms
    assert (await repo.get_user_settings(sessions, user_id=PLAYER)).nsfw_in_dms
    assert not (await repo.get_user_settings(sessions, user_id=PLAYER + 1)).nsfw_in_dms
    with pytest.raises(ValueError, match="unknown fields"):
        await repo.update_user_settings(sessions, user_id=PLAYER, nsfw=True)
    assert (await repo.get_user_settings(sessions, user_id=PLAYER)).nsfw_in_dms


async def test_cast_limit_and_answer_every_addressed_round_trip(sessions):
    guild = await repo.update_guild_settings(sessions, guild_id=GUILD, cast_limit=6)
    assert guild.cast_limit == 6
    assert (await repo.get_guild_settings(sessions, guild_id=GUILD)).cast_limit == 6
    fresh = await repo.update_channel_settings(
        sessions, channel_id=CHANNEL, guild_id=GUILD, enabled=True
    )
    assert fresh.answer_every_addressed is False
    await repo.update_channel_settings(
        sessions, channel_id=CHANNEL, guild_id=GUILD, answer_every_addressed=True
    )
    channel = await repo.get_channel_settings(sessions, channel_id=CHANNEL)
    assert channel is not None and channel.answer_every_addressed and channel.enabled


# --- turns and their speakers ---------------------------------------------------------------


async def test_speaker_survives_add_messages_and_add_alternative(sessions):
    scene, characters = await _scene(sessions, "민지", "준")
    minji, jun = characters["민지"].id, characters["준"].id
    stored = await repo.add_messages(
        sessions,
        [
            repo.NewMessage(session_id=scene.id, role="user", content="둘 다 안녕!", author_id=7),
            repo.NewMessage(
                session_id=scene.id, role="assistant", content="안녕!", character_id=minji
            ),
            repo.NewMessage(
                session_id=scene.id, role="assistant", content="왔어?", character_id=jun
            ),
        ],
    )
    assert [(m.content, m.author_id, m.character_id) for m in stored] == [
        ("둘 다 안녕!", 7, None),
        ("안녕!", None, minji),
        ("왔어?", None, jun),
    ]
    swipe = await repo.add_alternative(sessions, message_id=stored[2].id, content="어, 왔구나.")
    assert swipe.character_id == jun
    history = await repo.recent_history(sessions, session_id=scene.id, limit=10)
    assert [(m.content, m.character_id) for m in history] == [
        ("둘 다 안녕!", None),
        ("안녕!", minji),
        ("어, 왔구나.", jun),
    ]
    assert [m.character_id for m in await repo.alternatives(sessions, message_id=swipe.id)] == [
        jun,
        jun,
    ]


async def test_add_message_stores_the_speaker(sessions):
    scene, characters = await _scene(sessions, "민지")
    turn = await repo.add_message(
        sessions,
        session_id=scene.id,
        role="assistant",
        content="무슨 일이야?",
        character_id=characters["민지"].id,
    )
    found = await repo.get_message(sessions, message_id=turn.id)
    assert found is not None and found.character_id == characters["민지"].id


def test_turns_that_differ_only_in_speaker_are_matched_back_to_their_rows():
    turns = [
        repo.NewMessage(session_id=1, role="assistant", content="응!", character_id=speaker)
        for speaker in (5, 6, 5)
    ]
    records = [
        dataclasses.replace(
            stored_turn(100 + n, session_id=1, content="응!", role="assistant", author_id=None),
            display_name="",
            character_id=turn.character_id,
        )
        for n, turn in enumerate(turns)
    ]
    reordered = [records[1], records[2], records[0]]
    matched = repo._in_turn_order(reordered, turns)
    assert [(r.id, r.character_id) for r in matched] == [(100, 5), (101, 6), (102, 5)]


# --- scene memory ---------------------------------------------------------------------------


async def check_scene_memory(sessions, *, guild_id: int, channel_id: int) -> None:
    """The memory's bookkeeping round trips through the repository (SQLite and PostgreSQL):
    a summary is stored only over the one it was folded from, a change inside its range makes
    it stale, a summary by hand stays, automatic memory can be turned off; and the settings."""
    character = await repo.create_character(
        sessions, owner_id=PLAYER, guild_id=guild_id, name="하늘"
    )
    scene = await repo.start_session(
        sessions,
        guild_id=guild_id,
        channel_id=channel_id,
        parent_channel_id=None,
        character_id=character.id,
        started_by=PLAYER,
    )
    assert (scene.summary, scene.summary_until_id, scene.summary_auto, scene.summary_stale) == (
        "",
        None,
        True,
        False,
    )
    turns = [
        await repo.add_message(sessions, session_id=scene.id, role="user", content=f"{n}번째 말")
        for n in range(6)
    ]
    await repo.delete_messages(sessions, message_ids=[turns[1].id])
    between = await repo.history_between(
        sessions, session_id=scene.id, after_id=turns[0].id, before_id=turns[5].id, limit=3
    )
    assert [m.content for m in between] == ["2번째 말", "3번째 말", "4번째 말"]
    everything = await repo.history_between(
        sessions, session_id=scene.id, after_id=None, before_id=turns[5].id, limit=99
    )
    assert [m.id for m in everything] == [turns[0].id, *(t.id for t in turns[2:5])]

    async def store(summary: str, until: int | None, expect: tuple) -> bool:
        return await repo.store_summary(
            sessions,
            session_id=scene.id,
            summary=summary,
            until_id=until,
            expect_summary=expect[0],
            expect_until_id=expect[1],
            expect_stale=expect[2],
        )

    assert await store("숲에서 만났다.", turns[2].id, ("", None, False))
    assert not await store("덮어쓰기", turns[3].id, ("", None, False))  # folded from an old one
    stored = await repo.get_session(sessions, session_id=scene.id)
    assert stored is not None
    assert (stored.summary, stored.summary_until_id, stored.summary_stale) == (
        "숲에서 만났다.",
        turns[2].id,
        False,
    )
    assert not await repo.mark_summary_stale(sessions, session_id=scene.id, changed_id=turns[3].id)
    assert await repo.mark_summary_stale(sessions, session_id=scene.id, changed_id=turns[2].id)
    assert not await repo.mark_summary_stale(sessions, session_id=scene.id, changed_id=turns[0].id)
    assert await store("다시 썼다.", turns[4].id, ("숲에서 만났다.", turns[2].id, True))
    rewritten = await repo.get_session(sessions, session_id=scene.id)
    assert rewritten is not None and not rewritten.summary_stale
    assert await repo.mark_summary_stale(sessions, session_id=scene.id, changed_id=turns[4].id)
    await repo.set_summary(sessions, session_id=scene.id, summary="손으로 쓴 기억")
    by_hand = await repo.get_session(sessions, session_id=scene.id)
    assert by_hand is not None
    assert (by_hand.summary, by_hand.summary_until_id, by_hand.summary_stale) == (
        "손으로 쓴 기억",
        turns[4].id,
        False,
    )
    assert (by_hand.summary_written, by_hand.summary_written_until_id) == (
        "손으로 쓴 기억",
        turns[4].id,
    )
    # A change to a turn the hand-written summary covers leaves it; one past it, once
    # automatic memory folded on from it, makes it stale, and the written base stays.
    assert not await repo.mark_summary_stale(sessions, session_id=scene.id, changed_id=turns[4].id)
    assert await store(
        "손으로 쓴 기억. 그 뒤로", turns[5].id, ("손으로 쓴 기억", turns[4].id, False)
    )
    assert await repo.mark_summary_stale(sessions, session_id=scene.id, changed_id=turns[5].id)
    folded = await repo.get_session(sessions, session_id=scene.id)
    assert folded is not None and folded.summary_stale
    assert (folded.summary_written, folded.summary_written_until_id) == (
        "손으로 쓴 기억",
        turns[4].id,
    )
    await repo.set_summary(sessions, session_id=scene.id, summary="손으로 쓴 기억")
    assert await repo.set_summary_auto(sessions, session_id=scene.id, enabled=False)
    assert not await store("자동", turns[5].id, ("손으로 쓴 기억", turns[5].id, False))
    off = await repo.get_session(sessions, session_id=scene.id)
    assert off is not None and not off.summary_auto and off.summary == "손으로 쓴 기억"
    assert not await repo.set_summary_auto(sessions, session_id=scene.id + 999, enabled=True)

    guild = await repo.get_guild_settings(sessions, guild_id=guild_id)
    assert (guild.summary_tokens, guild.archive_keep_days) == (None, None)
    await repo.update_guild_settings(
        sessions, guild_id=guild_id, summary_tokens=256, archive_keep_days=30
    )
    guild = await repo.get_guild_settings(sessions, guild_id=guild_id)
    assert (guild.summary_tokens, guild.archive_keep_days) == (256, 30)


async def test_scene_memory_round_trips(sessions):
    await check_scene_memory(sessions, guild_id=GUILD, channel_id=CHANNEL)


async def test_upgrade_to_0004_keeps_summaries_with_automatic_memory_on(tmp_path):
    url, old = await _database_at_0001(tmp_path)
    await asyncio.to_thread(command.upgrade, alembic_config(url), "0003")
    await upgrade_database(url)
    assert await schema_diff(url) == []
    engine = create_engine(url)
    sessions = create_sessionmaker(engine)
    try:
        await assert_old_scene_kept(sessions, old)
        for session_id in (old.session_id, old.orphan_session_id):
            scene = await repo.get_session(sessions, session_id=session_id)
            assert scene is not None
            assert (scene.summary_until_id, scene.summary_auto, scene.summary_stale) == (
                None,
                True,
                False,
            )
        guild = await repo.get_guild_settings(sessions, guild_id=old.guild_id)
        assert (guild.summary_tokens, guild.archive_keep_days) == (None, None)
        assert guild.approval_required and guild.nsfw_policy == "allowed"
    finally:
        await engine.dispose()


async def test_downgrade_to_0003_keeps_summaries_and_settings(tmp_path):
    url, old = await _database_at_0001(tmp_path)
    await upgrade_database(url)
    engine = create_engine(url)
    sessions = create_sessionmaker(engine)
    try:
        assert await repo.store_summary(
            sessions,
            session_id=old.session_id,
            summary="첫 만남 뒤, 둘은 화해했다.",
            until_id=old.player_turn_id,
            expect_summary="첫 만남",
            expect_until_id=None,
            expect_stale=False,
        )
        await repo.update_guild_settings(sessions, guild_id=old.guild_id, summary_tokens=200)
    finally:
        await engine.dispose()
    path = tmp_path / "old.db"
    query = "SELECT id, session_id, role, content, swipe_group, chosen FROM messages ORDER BY id"
    with sqlite3.connect(path) as conn:
        messages = conn.execute(query).fetchall()
    await asyncio.to_thread(command.downgrade, alembic_config(url), "0003")
    with sqlite3.connect(path) as conn:
        assert conn.execute(query).fetchall() == messages
        summaries = conn.execute("SELECT id, summary FROM roleplay_sessions ORDER BY id").fetchall()
        session_columns = {c[1] for c in conn.execute("PRAGMA table_info(roleplay_sessions)")}
        guild_columns = {c[1] for c in conn.execute("PRAGMA table_info(guild_settings)")}
        guilds = conn.execute("SELECT guild_id, approval_required FROM guild_settings").fetchall()
    assert summaries == [
        (old.session_id, "첫 만남 뒤, 둘은 화해했다."),
        (old.orphan_session_id, ""),
    ]
    assert not session_columns & {"summary_until_id", "summary_auto", "summary_stale"}
    assert not guild_columns & {"summary_tokens", "archive_keep_days"}
    assert "cast_limit" in guild_columns and guilds == [(old.guild_id, 1)]
    await upgrade_database(url)  # and up again: every scene's memory starts afresh
    assert await schema_diff(url) == []
