"""The roleplay samplers (min-p, DRY, XTC) and stop strings as moderator settings that reach
the engine, `/config reset` back to what a setting inherits, sampling presets (shipped and a
server's own), and the 0007, 0008 and 0010 migrations that add them."""

from __future__ import annotations

import pytest

from synatra_bot.errors import UserFacingError
from synatra_bot.roleplay.config import (
    MAX_SERVER_PRESETS,
    SHIPPED_PRESETS,
    Defaults,
    effective_config,
    parse_stop_strings,
    preset_batchable,
    preset_values,
    shown_stop_strings,
)
from synatra_bot.storage import repository as repo
from synatra_bot.storage.records import ChannelSettingsRecord, GuildSettingsRecord
from tests.db_helpers import (
    assert_kept_down_and_up,
    assert_old_scene_kept,
    opened,
    upgraded_from_0001,
)
from tests.hostile_corpus import RecordingEngine


def test_samplers_are_off_by_default_and_a_channel_overrides_its_server():
    guild = GuildSettingsRecord(guild_id=1, min_p=0.05, dry_multiplier=0.8)
    channel = ChannelSettingsRecord(channel_id=2, guild_id=1, enabled=True, dry_multiplier=0.0)
    config = effective_config(defaults=Defaults(), guild=guild, channel=channel)
    s = config.sampling
    assert (s.min_p, s.dry_multiplier, s.xtc_probability) == (0.05, 0.0, 0.0)
    assert (s.dry_base, s.dry_allowed_length, s.xtc_threshold) == (1.75, 2, 0.1)
    plain = effective_config(
        defaults=Defaults(), guild=GuildSettingsRecord(guild_id=1), channel=None
    )
    assert not plain.sampling.dry_on and not plain.sampling.xtc_on and plain.sampling.min_p == 0


async def test_samplers_set_by_a_moderator_reach_the_engine_and_reset_inherits(
    start_bot, tokenizer
):
    async with start_bot(engine=RecordingEngine(tokenizer=tokenizer)) as harness:
        s = harness.scenario
        character = await harness.character(s.moderator)
        await harness.start_roleplay(s.moderator, s.general, character)
        server = await harness.slash(
            s.moderator, "config sampling", scope="server", min_p=0.1, xtc_probability=0.5
        )
        assert "저장했어요" in await harness.final_text(server)
        channel = await harness.slash(
            s.moderator,
            "config sampling",
            dry_multiplier=0.8,
            dry_base=2.0,
            dry_allowed_length=3,
            xtc_threshold=0.2,
        )
        assert "저장했어요" in await harness.final_text(channel)
        shown = await harness.final_text(await harness.slash(s.moderator, "config show"))
        assert "`min_p` 0.1" in shown and "`dry_multiplier` 0.8" in shown
        assert "`xtc_probability` 0.5" in shown and "`dry_allowed_length` 3" in shown

        await harness.reply_to(s.general, s.members[0], "오늘은 어디 갈까?")
        p = harness.engine.params[-1]
        assert (p.min_p, p.dry_multiplier, p.dry_base, p.dry_allowed_length) == (0.1, 0.8, 2.0, 3)
        assert (p.xtc_threshold, p.xtc_probability) == (0.2, 0.5)

        # Back to the server's, then the server's back to the default (off).
        reset = await harness.slash(s.moderator, "config reset", setting="dry_multiplier")
        assert "이 채널의 dry_multiplier는 다시 서버 설정을 따라요" in (
            await harness.final_text(reset)
        )
        await harness.slash(s.moderator, "config reset", setting="min_p", scope="server")
        english = await harness.fake.slash(
            s.moderator, "config reset", setting="xtc_probability", scope="server", locale="en-US"
        )
        await harness.fake.wait_for_response(english)
        assert "`xtc_probability` on this server is back to the default" in (
            await harness.final_text(english)
        )
        await harness.reply_to(s.general, s.members[0], "바다 보러 가자.")
        p = harness.engine.params[-1]
        assert (p.min_p, p.dry_multiplier, p.xtc_probability) == (0.0, 0.0, 0.0)
        assert p.xtc_threshold == 0.2  # still the channel's own

        # A server-only setting resets on the server whatever the scope says.
        await harness.slash(s.moderator, "config scene", cast_limit=2)
        await harness.slash(s.moderator, "config reset", setting="cast_limit")
        guild = await repo.get_guild_settings(harness.sessions, guild_id=s.guild.id)
        assert guild.cast_limit is None

        refused = await harness.slash(s.members[0], "config reset", setting="top_k")
        assert "관리자만" in await harness.final_text(refused)

        # More settings than a choice list holds: picked by autocomplete, in either language.
        from synatra_bot.discord.cogs.moderation import RESETTABLE_SETTINGS

        assert len(RESETTABLE_SETTINGS) > 25
        offered = await harness.fake.autocomplete(
            s.moderator, "config reset", focused="setting", value="토큰"
        )
        await harness.fake.wait_for_response(offered)
        labels = {c["name"]: c["value"] for c in offered.choices}
        assert labels["요약 토큰 (summary_tokens)"] == "summary_tokens"
        assert labels["최대 답장 토큰 (max_new_tokens)"] == "max_new_tokens"
        english = await harness.fake.autocomplete(
            s.moderator, "config reset", focused="setting", value="recall", locale="en-US"
        )
        await harness.fake.wait_for_response(english)
        assert [c["name"] for c in english.choices] == ["recall_tokens"]
        unknown = await harness.slash(s.moderator, "config reset", setting="온도")
        assert "그런 이름의 설정은 없어요" in await harness.final_text(unknown)


def test_shipped_presets_are_valid_and_say_which_leave_the_batch():
    batched = {name: preset_batchable(preset_values(p)) for name, p in SHIPPED_PRESETS.items()}
    assert batched == {"기본": True, "안정": True, "창작": False, "반복 억제": False}


async def test_presets_are_listed_applied_saved_and_deleted(start_bot, tokenizer):
    async with start_bot(engine=RecordingEngine(tokenizer=tokenizer)) as harness:
        s = harness.scenario
        character = await harness.character(s.moderator)
        await harness.start_roleplay(s.moderator, s.general, character)
        listed = await harness.final_text(await harness.slash(s.moderator, "config preset list"))
        assert "**반복 억제** ⏱: temperature 0.85" in listed and "dry_multiplier 0.8" in listed
        assert "**안정**: temperature 0.7, top_p 0.9, top_k 30" in listed
        assert "한 번에 하나씩" in listed

        applied = await harness.slash(s.moderator, "config preset apply", name="반복 억제")
        assert "프리셋 반복 억제로 샘플링해요" in await harness.final_text(applied)
        await harness.reply_to(s.general, s.members[0], "같은 말 그만 반복해.")
        p = harness.engine.params[-1]
        assert (p.temperature, p.min_p, p.dry_multiplier, p.xtc_probability) == (
            0.85,
            0.05,
            0.8,
            0.0,
        )

        await harness.slash(s.moderator, "config sampling", temperature=1.2, xtc_probability=0.3)
        saved = await harness.slash(s.moderator, "config preset save", name="밤 장면")
        assert "프리셋 밤 장면으로 저장했어요" in await harness.final_text(saved)
        listed = await harness.final_text(await harness.slash(s.moderator, "config preset list"))
        assert "**밤 장면** ⏱: temperature 1.2" in listed and "xtc_probability 0.3" in listed

        shipped = await harness.slash(s.moderator, "config preset save", name="기본")
        assert "기본 프리셋이에요" in await harness.final_text(shipped)
        await harness.slash(s.moderator, "config preset apply", name="기본", scope="server")
        guild = await repo.get_guild_settings(harness.sessions, guild_id=s.guild.id)
        assert (guild.temperature, guild.dry_multiplier) == (0.8, 0.0)

        deleted = await harness.slash(s.moderator, "config preset delete", name="밤 장면")
        assert "프리셋 밤 장면을 지웠어요" in await harness.final_text(deleted)
        again = await harness.slash(s.moderator, "config preset apply", name="밤 장면")
        assert "밤 장면이라는 프리셋이 없어요" in await harness.final_text(again)
        refused = await harness.slash(s.members[0], "config preset apply", name="안정")
        assert "관리자만" in await harness.final_text(refused)


async def test_a_server_keeps_a_bounded_number_of_presets(harness):
    core = harness.bot.core
    values = preset_values({"temperature": 0.9})
    for number in range(MAX_SERVER_PRESETS):
        await core.save_preset(7, f"프리셋 {number}", values)
    await core.save_preset(7, "프리셋 0", values)  # replacing is not a new one
    with pytest.raises(UserFacingError) as refused:
        await core.save_preset(7, "하나 더", values)
    assert refused.value.key == "error.preset_limit"
    assert len(await core.presets(7)) == len(SHIPPED_PRESETS) + MAX_SERVER_PRESETS


async def test_upgrade_to_0008_keeps_data_with_samplers_unset_and_no_presets(tmp_path):
    url, old = await upgraded_from_0001(tmp_path, "0006")
    async with opened(url) as sessions:
        await assert_old_scene_kept(sessions, old)
        guild = await repo.get_guild_settings(sessions, guild_id=old.guild_id)
        channel = await repo.get_channel_settings(sessions, channel_id=old.channel_id)
        assert (guild.min_p, guild.dry_multiplier, channel.xtc_probability) == (None, None, None)
        await repo.update_channel_settings(
            sessions, channel_id=old.channel_id, guild_id=old.guild_id, dry_multiplier=0.8
        )
        assert await repo.presets_of(sessions, guild_id=old.guild_id) == []
        await repo.save_preset(
            sessions, guild_id=old.guild_id, name="밤", values={"temperature": 1.1}, max_saved=5
        )
    await assert_kept_down_and_up(url, "0006", old)


async def test_a_server_refusing_a_sampler_is_told_once_and_replies_go_on(start_bot, tokenizer):
    from aiohttp import web

    from synatra_bot.engine.openai_compat import OpenAICompatEngine
    from tests.engine_helpers import loopback_app, sse_reply

    bodies: list[dict] = []

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        bodies.append(body)
        unknown = sorted(name for name in body if name.startswith("dry_"))
        if unknown:  # a 400 naming the first unknown argument, as OpenAI's own API does
            message = f"Unrecognized request argument supplied: {unknown[0]}"
            return web.json_response({"error": {"message": message}}, status=400)
        choices = (
            {"text": "좋은 밤이에요", "finish_reason": None},
            {"text": "", "finish_reason": "stop"},
        )
        return await sse_reply(request, choices)

    async with loopback_app("/v1/completions", completions) as url:
        engine = OpenAICompatEngine(url, model="tiny", tokenizer=tokenizer, max_retries=0)
        async with start_bot(engine=engine) as harness:
            s = harness.scenario
            character = await harness.character(s.moderator)
            await harness.start_roleplay(s.moderator, s.general, character)
            await harness.slash(s.moderator, "config preset apply", name="반복 억제")
            first = await harness.reply_to(s.general, s.members[0], "오늘 밤 어때?")
            assert "좋은 밤이에요" in first.content
            notice = await harness.fake.wait_for_message(
                s.general, lambda m: "dry_multiplier" in m.content, after=first
            )
            assert "생성 서버가 `dry_multiplier` 설정을 받지 않아서" in notice.content
            second = await harness.reply_to(s.general, s.members[0], "별이 많네.")
            assert "좋은 밤이에요" in second.content
            await harness.reply_to(s.general, s.members[0], "내일 또 보자.")
            told = [m for m in harness.fake.messages_in(s.general) if "생성 서버가" in m.content]
            assert len(told) == 1
    # Refused once, sent again without DRY, and never again; min-p still goes.
    assert sum(1 for b in bodies if "dry_multiplier" in b) == 1
    assert all(b.get("min_p") == 0.05 for b in bodies)


# --- stop strings ---------------------------------------------------------------------------


def test_stop_strings_are_typed_with_bars_and_backslash_n():
    typed = r"\n### | (끝) |준: | (끝)"
    assert parse_stop_strings(typed) == ["\n###", "(끝)", "준:"]
    assert shown_stop_strings(parse_stop_strings(typed)) == r"\n### | (끝) | 준:"
    assert parse_stop_strings(" - ") == parse_stop_strings("") == []
    assert shown_stop_strings([]) == "-"


@pytest.mark.parametrize(
    ("typed", "key"),
    [
        ("(끝) | | 준:", "error.stop_string_empty"),
        (" | ".join(f"{n}번" for n in range(9)), "error.stop_strings_many"),
        ("가" * 41, "error.stop_string_long"),
    ],
)
def test_bad_stop_strings_are_refused_naming_the_problem(typed, key):
    with pytest.raises(UserFacingError) as refused:
        parse_stop_strings(typed)
    assert refused.value.key == key


def test_a_channel_can_turn_its_servers_stop_strings_off():
    guild = GuildSettingsRecord(guild_id=1, stop_strings=["\n###"])
    inherits = ChannelSettingsRecord(channel_id=2, guild_id=1)
    none_here = ChannelSettingsRecord(channel_id=3, guild_id=1, stop_strings=[])
    defaults = Defaults()
    assert effective_config(
        defaults=defaults, guild=guild, channel=inherits
    ).sampling.stop_strings == ("\n###",)
    assert (
        effective_config(defaults=defaults, guild=guild, channel=none_here).sampling.stop_strings
        == ()
    )
    plain = effective_config(defaults=defaults, guild=GuildSettingsRecord(guild_id=1), channel=None)
    assert plain.sampling.stop_strings == ()


async def test_stop_strings_set_by_a_moderator_end_replies_and_reset_inherits(start_bot, tokenizer):
    engine = RecordingEngine(
        "좋아, 숲으로 가자!\n### 다음 장면\n(끝) 뒷이야기", tokenizer=tokenizer
    )
    async with start_bot(engine=engine) as harness:
        s = harness.scenario
        character = await harness.character(s.moderator)
        await harness.start_roleplay(s.moderator, s.general, character)
        saved = await harness.slash(s.moderator, "config stop", strings=r"\n### | (끝)")
        assert "저장했어요" in await harness.final_text(saved)
        shown = await harness.final_text(await harness.slash(s.moderator, "config show"))
        assert r"`stop_strings` \n### | (끝)" in shown

        reply = await harness.reply_to(s.general, s.members[0], "어디로 갈까?")
        assert reply.content == "좋아, 숲으로 가자!"
        assert harness.engine.params[-1].stop_strings == ("\n###", "(끝)")

        bad = await harness.slash(s.moderator, "config stop", strings="(끝) | ")
        assert "비어 있는 정지 문자열" in await harness.final_text(bad)

        await harness.slash(s.moderator, "config reset", setting="stop_strings")
        reply = await harness.reply_to(s.general, s.members[0], "그다음은?")
        assert reply.content.endswith("(끝) 뒷이야기")
        assert harness.engine.params[-1].stop_strings == ()


async def test_upgrade_to_0010_keeps_settings_with_no_stop_strings(tmp_path):
    url, old = await upgraded_from_0001(tmp_path, "0009")
    async with opened(url) as sessions:
        await assert_old_scene_kept(sessions, old)
        channel = await repo.get_channel_settings(sessions, channel_id=old.channel_id)
        guild = await repo.get_guild_settings(sessions, guild_id=old.guild_id)
        assert (channel.stop_strings, guild.stop_strings) == (None, None)
        await repo.update_channel_settings(
            sessions, channel_id=old.channel_id, guild_id=old.guild_id, stop_strings=["(끝)"]
        )
        channel = await repo.get_channel_settings(sessions, channel_id=old.channel_id)
        assert channel.stop_strings == ["(끝)"]
    await assert_kept_down_and_up(url, "0009", old)
