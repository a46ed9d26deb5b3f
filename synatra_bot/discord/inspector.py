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
    viewer_id: int | None = None,
    picks: str = "",
) -> ContextView:
    """What `/rp context` shows: the prompt sent for the scene's last reply (or, when none was
    sent since the bot started, a preview labelled as one) with the next reply's preview size
    beside it. With `hide_card` a private card's lorebook entries are counted, not named, and
    the prompt is not attached (its text holds the card). What a character knows about a
    player is theirs alone: anyone else (`viewer_id`) is told how many facts went in, and the
    attached prompt leaves their text out. `picks` (who answered the newest line and why)
    closes it."""
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
    withheld = hide_card
    hide_facts = report.facts_about is not None and report.facts_about != viewer_id
    if hide_facts and report.player_facts:
        hidden = t(locale, "rp.context_facts_hidden", n=len(report.player_facts))
        notes.append(hidden)
        if report.facts_text and report.facts_text in text:  # the heading stays, facts go
            heading_line = report.facts_text.split("\n", 1)[0]
            text = text.replace(report.facts_text, f"{heading_line}\n({hidden})")
        else:
            withheld = True  # the block could not be found to leave out: no file
    if hide_card:
        if any(is_card_book(note.book) for note in report.lorebook):
            notes.append(t(locale, "rp.context_names_hidden"))
        notes.append(t(locale, "rp.context_no_file"))
    summary = report.to_text(hide_card_entry_names=hide_card, hide_facts=hide_facts, korean=korean)
    engine_line = engine.to_text(korean=korean)[:250]
    tail = ("\n".join(["", *notes]) if notes else "") + picks
    room = MESSAGE_LIMIT - len(heading) - len(engine_line) - len(tail) - len("\n```\n\n\n```")
    if len(summary) > room:
        summary = summary[: max(0, room - 1)] + "…"
    content = f"{heading}\n```\n{summary}\n{engine_line}\n```{tail}"
    # A prompt is at most the context size in tokens (32k: well under a megabyte of text), far
    # below the 10 MiB Discord takes in one upload.
    file = None if withheld else discord.File(io.BytesIO(text.encode()), filename=filename)
    return ContextView(content, file)
