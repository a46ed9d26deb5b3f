"""What players see when the engine fails, through the real bot against the fake Discord: a
failed generation step of the embedded engine (the tiny model, one forward pass raising as a
CUDA error would), a remote server streaming another shape than the API's, and a reply that
comes back empty. Each ends the reply with a localised note, stores nothing for it, and the
next line in the channel gets a reply."""

from __future__ import annotations

import json

import pytest

from synatra_bot.engine.openai_compat import OpenAICompatEngine
from synatra_bot.engine.scripted import ScriptedEngine
from synatra_bot.engine.transformers_engine import TransformersEngine
from synatra_bot.storage import repository as repo
from tests.bot_harness import BotHarness, eventually, has_buttons
from tests.engine_helpers import loopback_app, sse_lines, wait_until
from tests.model_fixtures import FailingSteps

SMALL_MODEL_ENV = {"CONTEXT_SIZE": "1024", "MAX_NEW_TOKENS": "12"}


async def history_of(harness: BotHarness, channel) -> list:
    active = await repo.get_active_session(harness.sessions, channel_id=channel.id)
    return await repo.recent_history(harness.sessions, session_id=active.id, limit=100)


async def inspector(harness: BotHarness) -> str:
    """The `/rp context` text its moderator reads (in English)."""
    s = harness.scenario
    return await harness.final_text(await harness.slash(s.moderator, "rp context", locale="en-US"))


async def stored_reply(harness: BotHarness, channel, message) -> object:
    """The stored reply that `message` shows, once its ids are attached."""

    async def check():
        history = await history_of(harness, channel)
        last = history[-1]
        return last if last.role == "assistant" and message.id in last.discord_message_ids else None

    return await eventually(check)


async def test_a_failed_generation_step_shows_the_note_and_the_channel_goes_on(
    start_bot, tiny_model_dir, tokenizer
):
    engine = TransformersEngine(
        str(tiny_model_dir),
        context_size=1024,
        seed=0,
        recovery_backoff_s=0.01,
        tokenizer=tokenizer,
    )
    async with start_bot(engine=engine, env=SMALL_MODEL_ENV) as harness:
        s = harness.scenario
        character_id = await harness.character(s.moderator)
        await harness.start_roleplay(s.moderator, s.general, character_id)

        steps = FailingSteps(engine.model, times=1)
        try:
            broken = await harness.reply_to(s.general, s.members[0], "민지야, 오늘 뭐 했어?")
        finally:
            steps.remove()
        assert steps.raised == 1
        assert "⚠️" in broken.content and "모델에 오류가 생겼어요" in broken.content
        assert "CUDA" not in broken.content and "illegal" not in broken.content
        assert "▌" not in broken.content and not has_buttons(broken)
        history = await history_of(harness, s.general)
        assert [m.role for m in history] == ["assistant", "user"]

        await wait_until(lambda: engine.health().ok and engine.health().failures == 1)
        assert "engine: degraded, 1 failed in a row" in await inspector(harness)

        fine = await harness.reply_to(s.general, s.members[1], "그럼 이제 같이 산책 갈래?")
        assert has_buttons(fine) and "⚠️" not in fine.content
        assert await stored_reply(harness, s.general, fine) is not None
        assert [m.role for m in await history_of(harness, s.general)] == [
            "assistant",
            "user",
            "user",
            "assistant",
        ]
        assert "engine: ok" in await inspector(harness)


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
