"""`/rp context`'s view: the prompt the model was shown for a scene's last reply, as one message
with the whole prompt attached as a text file."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING

import discord

from synatra_bot.discord.i18n import is_korean, t
from synatra_bot.prompt.report import is_card_book

if TYPE_CHECKING:
    from synatra_bot.engine.base import EngineHealth
    from synatra_bot.prompt.builder import BuiltPrompt
    from synatra_bot.roleplay.sent import SentPrompt

#: Discord's limit on a message's content.
MESSAGE_LIMIT = 2000
#: File names of the attached prompt: what was sent, or the preview when nothing was.
SENT_FILE = "prompt.txt"
PREVIEW_FILE = "prompt-preview.txt"


@dataclass(frozen=True)
class ContextView:
    content: str
    #: The whole prompt as text; None where a private card of someone else's is in it.
    file: discord.File | None


def context_view(
    locale: discord.Locale | str | None,
    *,
    sent: SentPrompt | None,
    preview: BuiltPrompt,
    preview_speaker: str,
    engine: EngineHealth,
    hide_card: bool,
    picks: str = "",
) -> ContextView:
    """What `/rp context` shows: the prompt sent for the scene's last reply (or, when none was
    sent since the bot started, a preview labelled as one) with the next reply's preview size
    beside it. With `hide_card` a private card's lorebook entries are counted, not named, and
    the prompt is not attached (its text holds the card). `picks` (who answered the newest
    line and why) closes it."""
    korean = is_korean(locale)
    if sent is not None:
        heading = t(
            locale,
            "rp.context_sent",
            speaker=sent.speaker,
            kind=t(locale, f"rp.context_kind_{sent.kind}"),
            when=f"<t:{int(sent.sent_at.timestamp())}:R>",
            tokens=sent.token_count,
        )
        report, text, filename = sent.report, sent.text, SENT_FILE
        after = t(
            locale, "rp.context_preview_size", speaker=preview_speaker, tokens=preview.token_count
        )
    else:
        heading = t(
            locale,
            "rp.context_nothing_sent",
            speaker=preview_speaker,
            tokens=preview.token_count,
        )
        report, text, filename = preview.report, preview.text, PREVIEW_FILE
        after = ""
    notes = [after] if after else []
    if hide_card:
        if any(is_card_book(note.book) for note in report.lorebook):
            notes.append(t(locale, "rp.context_names_hidden"))
        notes.append(t(locale, "rp.context_no_file"))
    summary = report.to_text(hide_card_entry_names=hide_card, korean=korean)
    engine_line = engine.to_text(korean=korean)[:250]
    tail = ("\n".join(["", *notes]) if notes else "") + picks
    room = MESSAGE_LIMIT - len(heading) - len(engine_line) - len(tail) - len("\n```\n\n\n```")
    if len(summary) > room:
        summary = summary[: max(0, room - 1)] + "…"
    content = f"{heading}\n```\n{summary}\n{engine_line}\n```{tail}"
    # A prompt is at most the context size in tokens (32k: well under a megabyte of text), far
    # below the 10 MiB Discord takes in one upload.
    file = None if hide_card else discord.File(io.BytesIO(text.encode()), filename=filename)
    return ContextView(content, file)
