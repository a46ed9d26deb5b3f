"""What players see when the engine fails, through the real bot against the fake Discord: a
remote server streaming another shape than the API's, and a reply that comes back empty. Each
ends the reply with a localised note, stores nothing for it, and the next line in the channel
gets a reply."""

from __future__ import annotations

import json

import pytest

from synatra_bot.engine.openai_compat import OpenAICompatEngine
from synatra_bot.engine.scripted import ScriptedEngine
from synatra_bot.storage import repository as repo
from tests.bot_harness import BotHarness, eventually, has_buttons
from tests.engine_helpers import loopback_app, sse_lines


async def history_of(harness: BotHarness, channel) -> list:
    active = await repo.get_active_session(harness.sessions, channel_id=channel.id)
    return await repo.recent_history(harness.sessions, session_id=active.id, limit=100)


async def inspector(harness: BotHarness) -> str:
    """The `/rp context` text its moderator reads."""
    s = harness.scenario
    return await harness.final_text(await harness.slash(s.moderator, "rp context"))


async def stored_reply(harness: BotHarness, channel, message) -> object:
    """The stored reply that `message` shows, once its ids are attached."""

    async def check():
        history = await history_of(harness, channel)
        last = history[-1]
        return last if last.role == "assistant" and message.id in last.discord_message_ids else None

    return await eventually(check)


def _event(payload: object) -> bytes:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()


async def test_a_remote_engine_streaming_another_shape_shows_the_note_and_stores_nothing(
    start_bot, tokenizer
):
    streams = [
        [_event({"choices": [{"index": 0, "text": "안녕"}]}), _event({"choices": "하세요"})],
        [
            _event({"choices": [{"index": 0, "text": "좋은 밤이에요"}]}),
            _event({"choices": [{"index": 0, "text": "", "finish_reason": "stop"}]}),
            b"data: [DONE]\n\n",
        ],
    ]

    async def completions(request):
        await request.json()
        return await sse_lines(request, streams.pop(0))

    async with loopback_app("/v1/completions", completions) as url:
        engine = OpenAICompatEngine(url, model="tiny", tokenizer=tokenizer, max_retries=0)
        async with start_bot(engine=engine) as harness:
            s = harness.scenario
            character_id = await harness.character(s.moderator)
            await harness.start_roleplay(s.moderator, s.general, character_id)

            broken = await harness.reply_to(s.general, s.members[0], "서버가 이상하지 않아?")
            assert "⚠️" in broken.content
            assert "생성 서버가 알아볼 수 없는 답을 보냈어요" in broken.content
            assert "Traceback" not in broken.content and "죄송해요" not in broken.content
            assert not has_buttons(broken)
            history = await history_of(harness, s.general)
            assert [m.role for m in history] == ["assistant", "user"]
            seen = await inspector(harness)
            assert "engine: degraded, 1 failed in a row" in seen and "malformed stream" in seen
            assert url not in seen

            fine = await harness.reply_to(s.general, s.members[1], "이제 괜찮아?")
            assert fine.content == "좋은 밤이에요" and has_buttons(fine)
            stored = await stored_reply(harness, s.general, fine)
            assert stored is not None and stored.content == "좋은 밤이에요"
            assert "engine: ok" in await inspector(harness)


@pytest.mark.parametrize("empty", ["", "  \n  "])
async def test_an_empty_reply_is_never_stored_as_the_characters_line(start_bot, tokenizer, empty):
    replies = iter([empty, "응, 이번엔 제대로 말할게."])
    engine = ScriptedEngine(lambda prompt: next(replies), tokenizer=tokenizer)
    async with start_bot(engine=engine) as harness:
        s = harness.scenario
        character_id = await harness.character(s.moderator)
        await harness.start_roleplay(s.moderator, s.general, character_id)

        silent = await harness.reply_to(s.general, s.members[0], "왜 말이 없어?")
        assert "⚠️" in silent.content and "모델이 아무 말도 쓰지 않았어요" in silent.content
        assert "▌" not in silent.content and not has_buttons(silent)
        history = await history_of(harness, s.general)
        assert [m.role for m in history] == ["assistant", "user"]

        fine = await harness.reply_to(s.general, s.members[0], "다시 말해 줘")
        assert fine.content == "응, 이번엔 제대로 말할게." and has_buttons(fine)
        stored = await stored_reply(harness, s.general, fine)
        assert stored is not None and stored.content == "응, 이번엔 제대로 말할게."
