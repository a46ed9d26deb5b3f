"""Fault injection: the real bot against the fake Discord while the engine, the remote engine
server, the gateway, Discord's rate limits, the process and SQLite misbehave."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence

from synatra_bot.engine.base import SamplingParams
from synatra_bot.engine.scripted import ScriptedEngine
from synatra_bot.errors import EngineUnavailable, GenerationInterrupted
from synatra_bot.storage import repository as repo
from tests.bot_harness import BotHarness, eventually, has_buttons
from tests.fault_helpers import LONG_REPLY, SHORT_REPLY, long_when_asked

WEBHOOK_SEND = "/webhooks/{webhook_id}/{token}"
WEBHOOK_EDIT = "/webhooks/{webhook_id}/{token}/messages/{message_id}"


class FailingEngine(ScriptedEngine):
    """A scripted engine whose next requests break after a few deltas with the given errors."""

    def __init__(self, failures: Sequence[Exception], **options: object) -> None:
        super().__init__(**options)  # type: ignore[arg-type]
        self.failures = list(failures)

    async def stream(  # type: ignore[override]
        self, prompt: Sequence[int] | str, params: SamplingParams, *, request_id: str
    ) -> AsyncIterator[str]:
        failure = self.failures.pop(0) if self.failures else None
        sent = 0
        async for delta in super().stream(prompt, params, request_id=request_id):
            if failure is not None and sent >= 4:
                raise failure
            sent += 1
            yield delta


async def history_of(harness: BotHarness, channel) -> list:
    active = await repo.get_active_session(harness.sessions, channel_id=channel.id)
    return await repo.recent_history(harness.sessions, session_id=active.id, limit=100)


def character_posts(calls) -> list:
    """Webhook sends as the character (interaction followups share the route, not the name)."""
    return [
        c
        for c in calls
        if c.method == "POST"
        and c.route == WEBHOOK_SEND
        and c.status == 200
        and (c.json or {}).get("username") == "민지"
    ]


def webhook_messages_after(channel, message) -> list:
    return [m for m in channel.messages if m.id > message.id and m.webhook_id is not None]


# --- 1. the engine raises mid-stream ---------------------------------------------------------


async def test_engine_breaking_mid_stream_shows_an_error_stores_nothing_and_the_channel_goes_on(
    start_bot,
):
    engine = FailingEngine(
        [
            GenerationInterrupted("모델 연결이 끊김", partial_text=""),
            EngineUnavailable("엔진 프로세스가 죽었음"),
        ],
        replies="이 답장은 꽤 길어서 중간에 끊어질 수도 있어요.",
    )
    async with start_bot(engine=engine) as harness:
        s = harness.scenario
        character_id = await harness.character(s.moderator)
        await harness.start_roleplay(s.moderator, s.general, character_id)

        broken = await harness.reply_to(s.general, s.members[0], "첫 번째 말")
        assert "⚠️" in broken.content and "끊겼어요" in broken.content
        assert not has_buttons(broken)
        died = await harness.reply_to(s.general, s.members[1], "두 번째 말")
        assert "⚠️" in died.content
        assert not has_buttons(died)
        history = await history_of(harness, s.general)
        assert [m.role for m in history] == ["assistant", "user", "user"]

        fine = await harness.reply_to(s.general, s.members[0], "세 번째 말")
        assert fine.content == "이 답장은 꽤 길어서 중간에 끊어질 수도 있어요."
        assert has_buttons(fine)
        history = await history_of(harness, s.general)
        assert [m.role for m in history] == ["assistant", "user", "user", "user", "assistant"]
        assert history[-1].content == fine.content
        assert history[-1].discord_message_ids == [fine.id]


# --- 3. the gateway drops during a reply -----------------------------------------------------


async def test_gateway_drop_during_a_reply_resumes_without_double_posts_or_lost_messages(
    start_bot, tokenizer
):
    engine = ScriptedEngine(long_when_asked, delay_s=0.02, tokenizer=tokenizer)
    async with start_bot(engine=engine) as harness:
        fake, s = harness.fake, harness.scenario
        character_id = await harness.character(s.moderator)
        await harness.start_roleplay(s.moderator, s.general, character_id)
        identified = fake.identify_count

        said = await fake.say(s.general, s.members[0], "길게 옛날 이야기 해 줘")
        reply = await fake.wait_for_message(
            s.general, lambda m: m.webhook_id is not None, after=said
        )
        await fake.wait_until(lambda: "옛날" in reply.content)
        await fake.drop_connection()
        assert not fake.connected
        during = await fake.say(s.general, s.members[1], "연결 끊긴 동안 보낸 말")
        await fake.wait_until(lambda: fake.connected)

        await fake.wait_until(
            lambda: (
                len(webhook_messages_after(s.general, said)) == 2
                and all(has_buttons(m) for m in webhook_messages_after(s.general, said))
            ),
            timeout=20,
        )
        first, second = webhook_messages_after(s.general, said)
        assert first.content == LONG_REPLY.strip()
        assert second.content == SHORT_REPLY
        assert fake.identify_count == identified  # resumed, not a new session

        async def settled():
            history = await history_of(harness, s.general)
            return history if len(history) == 5 and history[-1].discord_message_ids else None

        history = await eventually(settled)
        assert history is not None
        users = [m for m in history if m.role == "user"]
        assert sorted(m.content for m in users) == sorted(
            ["길게 옛날 이야기 해 줘", "연결 끊긴 동안 보낸 말"]
        )
        assert sorted(m.discord_message_id for m in users) == sorted([said.id, during.id])
        replies = [m for m in history if m.role == "assistant"][1:]
        assert [m.discord_message_ids for m in replies] == [[first.id], [second.id]]
        # Greeting, the first reply, the second one (posted as its queue place, then edited).
        assert len(character_posts(fake.calls)) == 3


# --- 4. 429 storms on webhook sends and edits ------------------------------------------------


async def test_429_storms_on_sends_and_edits_still_finish_replies_with_bounded_requests(
    start_bot, tokenizer
):
    engine = ScriptedEngine(long_when_asked, delay_s=0.01, tokenizer=tokenizer)
    async with start_bot(engine=engine) as harness:
        fake, s = harness.fake, harness.scenario
        character_id = await harness.character(s.moderator)
        await harness.start_roleplay(s.moderator, s.general, character_id)
        fake.rate_limits.edit_limit = 2
        fake.rate_limits.edit_window = 0.3
        before = len(fake.calls)
        # More 429s in a row than discord.py retries (five) on its own.
        fake.force_rate_limit("POST", WEBHOOK_SEND, times=8, retry_after=0.02)
        fake.force_rate_limit("PATCH", WEBHOOK_EDIT, times=12, retry_after=0.02)

        texts = ["길게 말해 줘", "또 길게 말해 줘", "짧게"]
        shown = []
        for member, text in zip(s.members, texts, strict=True):
            shown.append(await harness.reply_to(s.general, member, text))
        assert [m.content for m in shown] == [LONG_REPLY.strip(), LONG_REPLY.strip(), SHORT_REPLY]
        assert all(has_buttons(m) for m in shown)

        async def stored():
            history = await history_of(harness, s.general)
            done = [m for m in history if m.role == "assistant" and m.discord_message_ids]
            return history if len(done) == 4 else None

        history = await eventually(stored)
        assert history is not None
        assert [m.content.strip() for m in history if m.role == "assistant"][1:] == [
            LONG_REPLY.strip(),
            LONG_REPLY.strip(),
            SHORT_REPLY,
        ]
        webhook_calls = [c for c in fake.calls[before:] if c.route in (WEBHOOK_SEND, WEBHOOK_EDIT)]
        limited = [c for c in webhook_calls if c.status == 429]
        assert limited  # the storm happened
        # Every 429 costs one retry; beyond that each reply needs a send, a few edits, a finish.
        assert len(webhook_calls) - len(limited) <= 3 * 8
        assert len(webhook_calls) <= 3 * 8 + (8 + 12) + 10
        assert len(character_posts(webhook_calls)) == 3


def _quiet(caplog) -> None:
    caplog.set_level(logging.WARNING)
