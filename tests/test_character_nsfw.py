"""A character's NSFW flag set with the form and `/character edit`: by its owner, or by a
moderator for a character shared in their server; `/character show` shows it and the server's
NSFW rule (age-restricted channels by default) then applies to it. Through the real discord.py
client and the fake Discord."""

from __future__ import annotations

from synatra_bot.storage import repository as repo
from tests.test_bot_commands import fill


async def _sheet_footer(harness, member, character: int, **options) -> str:
    shown = await harness.slash(member, "character show", character=str(character), **options)
    await harness.fake.wait_until(lambda: shown.callback_data or shown.followups)
    embeds = (shown.callback_data or {}).get("embeds") or shown.followups[-1].embeds
    return embeds[0]["footer"]["text"]


async def _create_with_form(harness, member, **options) -> int:
    fake = harness.fake
    opened = await harness.slash(member, "character create", **options)
    assert opened.modal is not None
    values = fill(
        opened.modal,
        Name="밤의 여왕",
        Description="{{char}}는 밤의 도시를 다스린다.",
        Greeting="어서 와, {{user}}.",
    )
    submitted = await fake.submit_modal(member, opened, values)
    assert "밤의 여왕" in await harness.final_text(submitted)
    [record] = await repo.visible_characters(
        harness.sessions, guild_id=harness.scenario.guild.id, user_id=member.user.id
    )
    return record.id


async def test_an_owner_makes_an_nsfw_character_with_the_form_and_the_channel_rule_applies(harness):
    s = harness.scenario
    character = await _create_with_form(harness, s.moderator, nsfw=True)
    stored = await repo.get_character(harness.sessions, character_id=character)
    assert stored.nsfw is True
    assert "🔞 성인(NSFW)" in await _sheet_footer(harness, s.moderator, character)
    assert "🔞 NSFW" in await _sheet_footer(harness, s.moderator, character, locale="en-US")
    # The server's default rule: NSFW characters only in age-restricted channels.
    refused = await harness.slash(
        s.moderator, "rp start", channel=s.general, character=str(character)
    )
    assert "연령 제한 채널" in await harness.final_text(refused)
    assert await repo.get_active_session(harness.sessions, channel_id=s.general.id) is None
    greeting = await harness.start_roleplay(s.moderator, s.nsfw_channel, character)
    assert greeting.username == "밤의 여왕"


async def test_a_form_character_is_not_nsfw_unless_its_owner_says_so(harness):
    s = harness.scenario
    character = await _create_with_form(harness, s.members[0])
    stored = await repo.get_character(harness.sessions, character_id=character)
    assert stored.nsfw is False
    assert "전체 이용가" in await _sheet_footer(harness, s.members[0], character)
    assert "not NSFW" in await _sheet_footer(harness, s.members[0], character, locale="en-US")


async def test_an_owner_turns_the_flag_on_and_the_running_channel_rule_refuses_it(harness):
    s = harness.scenario
    owner = s.moderator
    character = await harness.character(owner, "민지")
    marked = await harness.slash(owner, "character edit", character=str(character), nsfw=True)
    assert "이제 성인(NSFW) 캐릭터예요" in await harness.final_text(marked)
    assert "🔞 성인(NSFW)" in await _sheet_footer(harness, owner, character)
    refused = await harness.slash(owner, "rp start", channel=s.general, character=str(character))
    assert "연령 제한 채널" in await harness.final_text(refused)
    unmarked = await harness.slash(
        owner, "character edit", character=str(character), nsfw=False, locale="en-US"
    )
    assert "no longer marked adults only" in await harness.final_text(unmarked)
    greeting = await harness.start_roleplay(owner, s.general, character)
    assert greeting.username == "민지"


async def test_only_the_owner_or_a_moderator_for_a_shared_character_sets_the_flag(harness):
    s = harness.scenario
    owner, other = s.members[0], s.members[1]
    shared = await harness.character(owner, "공유 민지", visibility="guild", approval="approved")
    private = await harness.character(owner, "비밀 민지")

    refused = await harness.slash(other, "character edit", character=str(shared), nsfw=True)
    assert "주인이나 관리자만" in await harness.final_text(refused)
    assert (await repo.get_character(harness.sessions, character_id=shared)).nsfw is False

    marked = await harness.slash(s.moderator, "character edit", character=str(shared), nsfw=True)
    assert "이제 성인(NSFW) 캐릭터예요" in await harness.final_text(marked)
    after = await repo.get_character(harness.sessions, character_id=shared)
    assert after.nsfw is True and after.approval == "approved"

    # A private character stays its owner's alone, moderators included.
    hidden = await harness.slash(s.moderator, "character edit", character=str(private), nsfw=True)
    assert "쓸 수 없어요" in await harness.final_text(hidden)
    assert (await repo.get_character(harness.sessions, character_id=private)).nsfw is False
