"""Small stand-ins shared by the unit tests: a clock moved by hand and a stored turn."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from synatra_bot.storage.records import MessageRecord


class FakeClock:
    """A monotonic clock the test moves itself: `clock.now += 10`."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def stored_turn(
    message_id: int,
    *,
    session_id: int,
    content: str,
    role: str = "user",
    author_id: int | None = 1,
    display_name: str = "민수",
    token_count: int | None = None,
    discord_message_ids: Sequence[int] = (),
) -> MessageRecord:
    """A turn as the database hands it back: visible, chosen, no swipe group."""
    return MessageRecord(
        id=message_id,
        session_id=session_id,
        role=role,
        author_id=author_id,
        display_name=display_name,
        content=content,
        token_count=token_count,
        discord_message_id=discord_message_ids[0] if discord_message_ids else None,
        swipe_group=None,
        swipe_index=0,
        chosen=True,
        deleted=False,
        created_at=datetime.now(UTC),
        edited_at=None,
        discord_message_ids=tuple(discord_message_ids),
    )
