"""`/rp memory` and `/config memory` through the real discord.py client and the fake Discord:
what the scene's long-term memory covers, automatic memory switched off and on, its budget."""

from __future__ import annotations

from synatra_bot.storage import repository as repo


async def test_memory_shows_what_it_covers_and_automatic_memory_can_be_turned_off(harness):
    s = harness.scenario
    character = await harness.character(s.moderator, "민지")
    await harness.start_roleplay(s.moderator, s.general, character)

    shown = await harness.slash(s.members[0], "rp memory", channel=s.general)
    text = await harness.final_text(shown)
    assert "자동 기억 켜짐" in text and "0/384 토큰" in text and "아직 요약한 메시지 없음" in text

    refused = await harness.slash(s.members[0], "rp memory", channel=s.general, auto=False)
    assert "시작한 사람이나 관리자만" in await harness.final_text(refused)
    off = await harness.slash(s.moderator, "rp memory", channel=s.general, auto=False)
    assert "자동 기억 꺼짐" in await harness.final_text(off)
    active = await repo.get_active_session(harness.sessions, channel_id=s.general.id)
    assert active.summary_auto is False

    both = await harness.slash(
        s.moderator, "rp memory", channel=s.general, auto=True, text="민지는 비밀을 숨기고 있다."
    )
    text = await harness.final_text(both)
    assert "자동 기억 켜짐" in text and "저장했어요" in text
    shown = await harness.slash(s.members[1], "rp memory", channel=s.general)
    text = await harness.final_text(shown)
    assert "민지는 비밀을 숨기고 있다." in text and "자동 기억 켜짐" in text

    budget = await harness.slash(s.moderator, "config memory", summary_tokens=128)
    await harness.final_text(budget)
    shown = await harness.slash(s.members[1], "rp memory", channel=s.general)
    assert "/128 토큰" in await harness.final_text(shown)
