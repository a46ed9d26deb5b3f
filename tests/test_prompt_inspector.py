"""`/rp context` shows the prompt the model was shown for a scene's last reply, with the whole
prompt attached, through the real client and the fake Discord."""

from __future__ import annotations

from datetime import UTC, datetime

from synatra_bot.discord.inspector import MESSAGE_LIMIT, context_view
from synatra_bot.engine.base import EngineHealth
from synatra_bot.prompt.builder import BuiltPrompt
from synatra_bot.prompt.player_facts import FactNote
from synatra_bot.prompt.report import LoreLeftOut, LoreNote, PromptReport
from synatra_bot.roleplay.sent import SentPrompts
from synatra_bot.storage import repository as repo
from tests.hostile_corpus import RecordingEngine

MODERATOR_PERSONA = "은하 순찰대의 대장. 별빛 망토를 두르고 다닌다."


async def attachment_of(harness, record):
    """The file the interaction's answer carries, or None."""
    message = await harness.fake.wait_until(
        lambda: next((m for m in [*record.followups, record.original] if m), None)
    )
    return message.attachments[0] if message.attachments else None


async def enable(harness) -> None:
    """Roleplay is on in the server's general channel for everyone."""
    s = harness.scenario
    await repo.update_channel_settings(
        harness.sessions, channel_id=s.general.id, guild_id=s.guild.id, enabled=True
    )


async def shared_scene(harness):
    """A scene a member plays with a character shared in the server."""
    s = harness.scenario
    await enable(harness)
    character = await harness.character(
        s.members[0], "민지", visibility="guild", approval="approved"
    )
    await harness.start_roleplay(s.members[0], s.general, character)
    return character


async def test_rp_context_shows_the_prompt_sent_not_one_with_the_askers_persona(
    start_bot, tokenizer
):
    engine = RecordingEngine(tokenizer=tokenizer)
    async with start_bot(engine=engine) as harness:
        s = harness.scenario
        await harness.slash(
            s.moderator, "persona set", name="은하 대장", description=MODERATOR_PERSONA
        )
        await shared_scene(harness)
        await harness.reply_to(s.general, s.members[0], "안녕, 민지야! 오늘 뭐 해?")
        sent_ids = engine.prompt_ids[-1]

        record = await harness.slash(s.moderator, "rp context")
        text = await harness.final_text(record)
        attachment = await attachment_of(harness, record)

    assert record.ephemeral and len(text) <= MESSAGE_LIMIT
    assert "모델이 본 프롬프트" in text and f"{len(sent_ids)} 토큰" in text
    assert "미리보기 (보내지 않음)" in text  # the next prompt's size, labelled as a preview
    assert "엔진: 정상" in text
    assert attachment is not None and attachment.filename == "prompt.txt"
    prompt = attachment.data.decode()
    assert tokenizer(prompt)["input_ids"] == sent_ids
    assert "안녕, 민지야! 오늘 뭐 해?" in prompt
    assert MODERATOR_PERSONA not in prompt and "은하 대장" not in prompt


async def test_rp_context_says_nothing_was_sent_and_attaches_a_labelled_preview(harness):
    s = harness.scenario
    await shared_scene(harness)

    record = await harness.slash(s.members[0], "rp context", locale="en-US")
    text = await harness.final_text(record)
    attachment = await attachment_of(harness, record)

    assert "Nothing was sent to the model in this scene since the bot started" in text
    assert "**Preview, not sent**" in text and "tokens" in text and "engine: ok" in text
    assert attachment is not None and attachment.filename == "prompt-preview.txt"
    assert "<|im_start|>assistant" in attachment.data.decode()


async def test_rp_context_attaches_no_prompt_holding_someone_elses_private_card(harness):
    s = harness.scenario
    owner = s.members[0]
    await enable(harness)
    character = await harness.character(owner, "탐정 민지", description="범인은 집사다.")
    await harness.start_roleplay(owner, s.general, character)
    await harness.reply_to(s.general, owner, "누가 범인일까?")

    record = await harness.slash(s.moderator, "rp context")
    text = await harness.final_text(record)
    assert await attachment_of(harness, record) is None
    assert "비공개 캐릭터 카드가 들어 있어서" in text and "범인은 집사" not in text

    own = await harness.slash(owner, "rp context")
    attachment = await attachment_of(harness, own)
    assert attachment is not None and "범인은 집사다." in attachment.data.decode()


def _built(text: str, report: PromptReport) -> BuiltPrompt:
    return BuiltPrompt(
        input_ids=(1, 2), text=text, token_count=2, budget=report.budget, report=report
    )


def test_the_view_fits_one_message_however_long_the_report() -> None:
    report = PromptReport(budget=4000, context_size=4096, max_new_tokens=96)
    report.lorebook = [LoreNote(f"항목 {i}", "channel", i, "fired") for i in range(10)]
    # Seventy books over the limits: a report longer than a message in either language.
    report.lorebook_left_out = [LoreLeftOut(f"책 {i}", 600, 6000) for i in range(70)]
    assert len(report.to_text(korean=True)) > MESSAGE_LIMIT
    sent = SentPrompts()
    sent.record(7, _built("전체 프롬프트", report), speaker="민지", kind="continue")
    health = EngineHealth(ok=True, detail="", queued=0, running=0, tokens_per_second=0.0)
    for locale in ("ko", "en-US"):
        view = context_view(
            locale,
            sent=sent.last(7),
            preview=_built("미리보기", report),
            preview_speaker="민지",
            engine=health,
            hide_card=False,
        )
        assert len(view.content) <= MESSAGE_LIMIT and "…" in view.content
        assert view.file is not None and view.file.filename == "prompt.txt"
    assert (
        "이어 쓰기"
        in context_view(
            "ko",
            sent=sent.last(7),
            preview=_built("", report),
            preview_speaker="민지",
            engine=health,
            hide_card=False,
        ).content
    )


def test_facts_that_cannot_be_left_out_of_the_prompt_file_keep_the_file_back() -> None:
    """Another player's facts are counted; where their block is not found in the prompt's text
    as the report has it, no file goes out rather than one holding them."""
    report = PromptReport(budget=4000, context_size=4096, max_new_tokens=96)
    report.facts_of = ("민지", "김지수")
    report.player_facts = [FactNote(1, "고양이 이름은 나비다.", "pin")]
    report.facts_about = 42
    report.facts_text = "### 민지의 기억: 김지수\n- 고양이 이름은 나비다."
    health = EngineHealth(ok=True, detail="", queued=0, running=0, tokens_per_second=0.0)

    def view(text: str, viewer: int):
        return context_view(
            "en-US",
            sent=None,
            preview=_built(text, report),
            preview_speaker="민지",
            engine=health,
            hide_card=False,
            viewer_id=viewer,
        )

    found = view(f"앞\n{report.facts_text}\n뒤", viewer=7)
    assert "나비" not in found.content and "theirs alone to read" in found.content
    assert found.file is not None
    assert "나비" not in found.file.fp.read().decode()
    assert view("### 민지의 기억: 김지수\n- 고양이 이름은 <나비>다.", viewer=7).file is None
    mine = view(f"앞\n{report.facts_text}\n뒤", viewer=42)
    assert "나비" in mine.content and mine.file is not None


def test_only_the_newest_scenes_prompts_are_kept() -> None:
    report = PromptReport(budget=10, context_size=4096, max_new_tokens=96)
    sent = SentPrompts(limit=2)
    for session_id in (1, 2, 1, 3):
        sent.record(session_id, _built(f"장면 {session_id}", report), speaker="민지", kind="reply")
    assert sent.last(2) is None
    assert [sent.last(i).text for i in (1, 3)] == ["장면 1", "장면 3"]
    assert sent.last(1).sent_at <= datetime.now(UTC)
