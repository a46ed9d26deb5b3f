"""Who may act on a scene: the rules every front end and every path share."""

from __future__ import annotations

from synatra_bot.errors import PermissionDenied
from synatra_bot.roleplay.types import Actor
from synatra_bot.storage.records import SessionRecord


def require_voice(actor: Actor) -> None:
    """Acting on a scene (starting, replying, regenerating, undoing...) is speaking in the
    channel: a member who may not send messages there may not make the character speak."""
    if not actor.can_speak:
        raise PermissionDenied("no Send Messages in this channel", key="error.cannot_speak")


def is_starter_or_moderator(actor: Actor, session: SessionRecord) -> bool:
    return actor.user_id == session.started_by or actor.is_moderator


def require_may_inspect(actor: Actor, session: SessionRecord) -> None:
    """Inspecting a scene's prompt (`/rp context`) belongs to whoever started it, or a
    moderator; it says nothing in the channel, so it needs no voice there."""
    if not is_starter_or_moderator(actor, session):
        raise PermissionDenied("only who started it or a moderator", key="error.starter_only")


def require_starter_or_moderator(actor: Actor, session: SessionRecord) -> None:
    """Changing the course of a scene (stop, reset, undo, continue, memory) belongs to whoever
    started it, or a moderator, speaking in the channel."""
    require_voice(actor)
    require_may_inspect(actor, session)


def require_may_stop(actor: Actor, session: SessionRecord, turn_user_id: object) -> None:
    """A streaming reply is stopped by the player whose turn it answers, the scene's starter or
    a moderator; nobody else."""
    require_voice(actor)
    if actor.user_id != turn_user_id and not is_starter_or_moderator(actor, session):
        raise PermissionDenied("not your turn to stop", key="error.stop_not_yours")


def require_history(actor: Actor) -> None:
    """Reading a scene back (`/rp export`, `/rp memory`) is reading the channel's history: a
    member who may not read its history may not read the scene."""
    if not actor.can_read_history:
        raise PermissionDenied("no Read Message History in this channel", key="error.cannot_read")
