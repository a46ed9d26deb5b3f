"""The roleplay core: sessions, turns, swipes and history sync, for any front end.

Discord and the terminal both drive this class; it knows nothing of either. A reply is made in
three steps so a front end can show it while it streams: `open_reply` admits the turn through the
scheduler, the front end iterates `ReplyStream.deltas()`, then `store_reply` saves the finished
text as a turn (or as a new alternative of one). Nothing half-written is ever stored.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from synatra_bot.errors import NoSession, NotFound, PermissionDenied, UserFacingError
from synatra_bot.prompt.builder import BuiltPrompt, HistoryMessage, PromptBuilder, PromptOptions
from synatra_bot.prompt.cards import CharacterCard
from synatra_bot.prompt.lorebook import Lorebook, lorebook_from_character_book
from synatra_bot.prompt.macros import substitute_macros
from synatra_bot.roleplay.characters import (
    CharacterService,
    can_use,
    card_from_record,
    require_nsfw_allowed,
)
from synatra_bot.roleplay.config import ChannelConfig, Defaults, effective_config
from synatra_bot.roleplay.history import HistoryCache
from synatra_bot.roleplay.rules import require_voice
from synatra_bot.roleplay.ttl_cache import TtlCache
from synatra_bot.roleplay.types import Actor, Place
from synatra_bot.storage import repository as repo
from synatra_bot.storage.batching import Batcher
from synatra_bot.storage.records import (
    CharacterRecord,
    MessageRecord,
    PersonaRecord,
    SessionRecord,
)

#: A ChatML turn takes at least this many tokens, so a context of N tokens holds at most
#: N // MIN_TURN_TOKENS turns: loading more history than that is wasted work.
MIN_TURN_TOKENS = 4
#: How long a channel's roleplay and a player's persona may be served from memory. Changes made
#: through this process clear them at once; this bounds changes made by another process.
CACHE_TTL_S = 60.0
#: After this long without activity (a turn, an alternative, an edit: undone turns count too),
#: anyone may start a new roleplay over an abandoned one.
IDLE_TAKEOVER_S = 30 * 60
CACHE_LIMIT = 10_000
#: Turns of recent history kept in memory over all sessions (the prompts' windows of the
#: channels used most recently; about 1 KB each).
HISTORY_TURNS = 20_000
#: Group commit: a busy bot stores turns (and reads personas) at most this often, so the rounds
#: fill up; an idle bot stores at once. A player's turn waits at most this long for it.
COMMIT_EVERY_S = 0.01


#: What a reply does: a new turn, a new alternative of the newest reply, or more of its text.
ReplyKind = Literal["reply", "regenerate", "continue"]
#: The cancel reason of a reply its player stopped (kept, unlike one superseded or shut down).
STOPPED_BY_USER = "stopped"


@dataclass(frozen=True, slots=True)
class Started:
    session: SessionRecord
    character: CharacterRecord
    greeting: MessageRecord | None
    greeting_count: int


@dataclass(frozen=True, slots=True)
class ActiveRoleplay:
    session: SessionRecord
    character: CharacterRecord
    config: ChannelConfig
    #: Whether the scene's starter may still use its character here (it may have been made
    #: private, deleted, rejected or sent back for approval since the scene started).
    available: bool = True
    #: The character as the prompt builder takes it and the channel's lorebook, parsed once
    #: when the roleplay is loaded (it is cached) rather than for every reply.
    card: CharacterCard = field(init=False)
    channel_lorebook: Lorebook | None = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "card", card_from_record(self.character))
        lorebook = self.config.lorebook
        book = lorebook_from_character_book(lorebook) if lorebook else None
        object.__setattr__(self, "channel_lorebook", book)


@dataclass(frozen=True, slots=True)
class EditResult:
    message: MessageRecord
    #: The edited turn is the newest player turn and a reply follows it: regeneration makes sense.
    is_last_user_turn: bool


class RoleplayCore:
    def __init__(
        self,
        *,
        sessions: repo.Sessions,
        characters: CharacterService,
        builder: PromptBuilder,
        defaults: Defaults,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sessions = sessions
        self.characters = characters
        self.builder = builder
        self.defaults = defaults
        self.clock = clock
        # Every message needs its channel's roleplay and its author's persona: keep them in
        # memory instead of reading five rows per message.
        self._active: TtlCache[int, ActiveRoleplay | None] = TtlCache(
            ttl_s=CACHE_TTL_S, limit=CACHE_LIMIT, clock=clock
        )
        self._personas: TtlCache[tuple[int, int], PersonaRecord | None] = TtlCache(
            ttl_s=CACHE_TTL_S, limit=CACHE_LIMIT, clock=clock
        )
        #: (session, context size, max new tokens) -> oldest message its last prompt kept.
        self._history_start: dict[tuple[int, int, int], int | None] = {}
        #: Each session's newest turns, so a reply's prompt needs no read.
        self._history = HistoryCache(
            ttl_s=CACHE_TTL_S, max_turns=HISTORY_TURNS, max_sessions=CACHE_LIMIT, clock=clock
        )
        #: New turns from every channel are written together when they arrive together, and
        #: so are the persona reads of members speaking for the first time in a while.
        self._turns = Batcher(functools.partial(repo.add_messages, sessions), every=COMMIT_EVERY_S)
        self._persona_reads = Batcher(
            functools.partial(repo.get_personas, sessions), every=COMMIT_EVERY_S
        )
        characters.on_change(self.forget)

    def forget(self, channel_id: int | None = None) -> None:
        """Drop what is cached: one channel's roleplay (its session changed), or everything
        (settings, characters or personas changed)."""
        if channel_id is not None:
            self._active.drop(channel_id)
            return
        self._active.clear()
        self._personas.clear()

    # --- configuration ------------------------------------------------------------------------

    async def update_channel_settings(self, place: Place, **changes: Any) -> None:
        await repo.update_channel_settings(
            self.sessions, channel_id=place.settings_channel_id, guild_id=place.guild_id, **changes
        )
        self.forget()

    async def update_guild_settings(self, guild_id: int, **changes: Any) -> None:
        await repo.update_guild_settings(self.sessions, guild_id=guild_id, **changes)
        self.forget()

    async def config_for(self, place: Place) -> ChannelConfig:
        guild = await repo.get_guild_settings(self.sessions, guild_id=place.guild_id)
        channel = await repo.get_channel_settings(
            self.sessions, channel_id=place.settings_channel_id
        )
        return effective_config(defaults=self.defaults, guild=guild, channel=channel)

    async def active(self, place: Place) -> ActiveRoleplay | None:
        return await self._active.get(place.channel_id, lambda: self._load_active(place))

    async def _load_active(self, place: Place) -> ActiveRoleplay | None:
        session = await repo.get_active_session(self.sessions, channel_id=place.channel_id)
        if session is None or session.character_id is None:
            return None
        character = await repo.get_character(self.sessions, character_id=session.character_id)
        if character is None:
            return None
        starter = Actor(user_id=session.started_by, display_name="", guild_id=place.guild_id)
        available = can_use(starter, character)
        return ActiveRoleplay(session, character, await self.config_for(place), available)

    async def require_active(self, place: Place) -> ActiveRoleplay:
        active = await self.active(place)
        if active is None:
            raise NoSession("no roleplay is running in this channel")
        return active

    @staticmethod
    def check_may_generate(active: ActiveRoleplay, place: Place) -> None:
        """The channel rules every path that makes the character speak obeys (a new message,
        regenerate, continue, an edit): the channel is enabled, the character is still
        available to the scene, and an NSFW character only where the policy allows it."""
        if not active.config.enabled:
            raise UserFacingError("channel disabled", key="error.channel_disabled")
        if not active.available:
            raise PermissionDenied(
                "the character is no longer available",
                key="error.character_unavailable",
                name=active.character.name,
            )
        require_nsfw_allowed(active.character, active.config.nsfw_policy, place)

    # --- sessions -----------------------------------------------------------------------------

    async def start(
        self, actor: Actor, place: Place, *, character_id: int, greeting_index: int = 0
    ) -> Started:
        """Start a roleplay: the old session is archived, the greeting(s) become the first turn.

        A scene someone else started and that is still going (activity in the last
        `IDLE_TAKEOVER_S`) is theirs: only they or a moderator may replace it.
        """
        require_voice(actor)
        await self.ensure_can_start(actor, place)
        config = await self.config_for(place)
        character = await self.characters.for_use(
            actor, character_id, place=place, nsfw_policy=config.nsfw_policy
        )
        session = await repo.start_session(
            self.sessions,
            guild_id=place.guild_id,
            channel_id=place.channel_id,
            parent_channel_id=place.parent_channel_id,
            character_id=character.id,
            started_by=actor.user_id,
        )
        self.forget(place.channel_id)
        greeting = await self._store_greetings(session, character, actor, greeting_index)
        # The channel's first message needs exactly this: keep it rather than read it back.
        self._active.put(place.channel_id, ActiveRoleplay(session, character, config))
        count = len(greetings_of(character))
        return Started(session, character, greeting, count)

    async def _store_greetings(
        self, session: SessionRecord, character: CharacterRecord, actor: Actor, index: int
    ) -> MessageRecord | None:
        user_name = await self.user_name(actor, place_guild=session.guild_id)
        texts = [
            substitute_macros(text, char=character.name, user=user_name)
            for text in greetings_of(character)
        ]
        if not texts:
            return None
        index = index if 0 <= index < len(texts) else 0
        first = await repo.add_message(
            self.sessions,
            session_id=session.id,
            role="assistant",
            content=texts[0],
            display_name=character.name,
            token_count=self._count("assistant", character.name, texts[0]),
        )
        chosen = first
        for n, text in enumerate(texts[1:], start=1):
            alt = await repo.add_alternative(
                self.sessions,
                message_id=first.id,
                content=text,
                token_count=self._count("assistant", character.name, text),
            )
            if n == index:
                chosen = alt
        self._history.changed(session.id)
        return await repo.choose_alternative(self.sessions, message_id=chosen.id)

    async def ensure_can_start(self, actor: Actor, place: Place) -> None:
        """Refuse to replace a scene someone else started and is still playing."""
        current = await self.active(place)
        if (
            current is not None
            and current.session.started_by != actor.user_id
            and not actor.is_moderator
            and not await self._idle(current.session)
        ):
            raise PermissionDenied(
                "a roleplay someone else started is running here",
                key="error.session_running",
                name=current.character.name,
            )

    async def _idle(self, session: SessionRecord) -> bool:
        """Whether nothing happened in the scene for `IDLE_TAKEOVER_S`. Undone and unchosen
        turns count: undoing the newest turns does not make a scene look abandoned."""
        latest = await repo.last_activity(self.sessions, session_id=session.id)
        last = latest or session.started_at
        if last.tzinfo is None:  # SQLite hands back naive UTC
            last = last.replace(tzinfo=UTC)
        return (datetime.now(UTC) - last).total_seconds() > IDLE_TAKEOVER_S

    async def stop(self, place: Place) -> int | None:
        ended = await repo.end_session(self.sessions, channel_id=place.channel_id)
        self.forget(place.channel_id)
        return ended

    async def reset(self, actor: Actor, place: Place) -> Started:
        """Archive the history and start again with the same character."""
        active = await self.require_active(place)
        return await self.start(actor, place, character_id=active.character.id)

    async def set_memory(self, place: Place, text: str) -> ActiveRoleplay:
        """Set the session's long-term memory: a summary the model sees in the system block."""
        active = await self.require_active(place)
        await repo.set_summary(self.sessions, session_id=active.session.id, summary=text)
        self.forget(place.channel_id)
        return await self.require_active(place)

    async def undo(self, place: Place) -> list[MessageRecord]:
        active = await self.require_active(place)
        removed = await repo.undo_last_exchange(self.sessions, session_id=active.session.id)
        self._history.changed(active.session.id)
        return removed

    # --- players' messages --------------------------------------------------------------------

    async def persona(self, user_id: int, guild_id: int | None) -> PersonaRecord | None:
        key = (user_id, guild_id or 0)
        return await self._personas.get(key, lambda: self._persona_reads.submit(key))

    async def set_persona(
        self, user_id: int, guild_id: int, *, name: str, description: str
    ) -> PersonaRecord:
        persona = await repo.set_persona(
            self.sessions, user_id=user_id, guild_id=guild_id, name=name, description=description
        )
        self._personas.clear()
        return persona

    async def clear_persona(self, user_id: int, guild_id: int) -> bool:
        cleared = await repo.clear_persona(self.sessions, user_id=user_id, guild_id=guild_id)
        self._personas.clear()
        return cleared

    async def user_name(self, actor: Actor, *, place_guild: int | None) -> str:
        persona = await self.persona(actor.user_id, place_guild)
        return persona.name if persona else actor.display_name

    async def add_user_message(
        self, active: ActiveRoleplay, actor: Actor, content: str, *, discord_message_id: int | None
    ) -> MessageRecord:
        name = await self.user_name(actor, place_guild=active.session.guild_id)
        turn = repo.NewMessage(
            session_id=active.session.id,
            role="user",
            author_id=actor.user_id,
            display_name=name,
            content=content,
            token_count=self._count("user", name, content),
            discord_message_ids=(discord_message_id,) if discord_message_id else (),
        )
        stored = await self._turns.submit(turn)
        self._history.appended(stored)
        return stored

    async def message_edited(self, discord_message_id: int, content: str) -> EditResult | None:
        """A stored Discord message changed: update history. None when it is not stored."""
        found = await repo.find_by_discord_id(self.sessions, discord_message_id=discord_message_id)
        if found is None or found.content == content:
            return None
        updated = await repo.update_message(
            self.sessions, message_id=found.id, content=content, edited=True
        )
        assert updated is not None
        self._history.changed(found.session_id)
        if found.role != "user":
            return EditResult(updated, is_last_user_turn=False)
        history = await repo.recent_history(self.sessions, session_id=found.session_id, limit=3)
        users = [m for m in history if m.role == "user"]
        is_last = bool(users) and users[-1].id == found.id
        return EditResult(updated, is_last)

    async def message_deleted(self, discord_message_id: int) -> MessageRecord | None:
        found = await repo.find_by_discord_id(self.sessions, discord_message_id=discord_message_id)
        if found is None:
            return None
        await repo.delete_turn_group(self.sessions, message_id=found.id)
        self._history.changed(found.session_id)
        return found

    # --- swipes -------------------------------------------------------------------------------

    async def latest_reply(self, place: Place) -> MessageRecord | None:
        active = await self.require_active(place)
        history = await repo.recent_history(self.sessions, session_id=active.session.id, limit=1)
        return history[-1] if history and history[-1].role == "assistant" else None

    async def browse(self, message_id: int, step: int) -> tuple[MessageRecord, int, int]:
        """Show the previous (-1) or next (+1) alternative; returns it, its position and count."""
        options = await repo.alternatives(self.sessions, message_id=message_id)
        if not options:
            raise NotFound("that reply is gone", key="error.not_found")
        current = next((i for i, m in enumerate(options) if m.chosen), 0)
        target = max(0, min(len(options) - 1, current + step))
        chosen = await repo.choose_alternative(self.sessions, message_id=options[target].id)
        self._history.changed(chosen.session_id)
        return chosen, target, len(options)

    async def alternatives(self, message_id: int) -> list[MessageRecord]:
        return await repo.alternatives(self.sessions, message_id=message_id)

    async def get_message(self, message_id: int) -> MessageRecord | None:
        return await repo.get_message(self.sessions, message_id=message_id)

    async def is_greeting(self, message: MessageRecord) -> bool:
        """Whether `message` is (an alternative of) the session's opening greeting."""
        first = await repo.first_message_id(self.sessions, session_id=message.session_id)
        return message.role == "assistant" and first in (message.id, message.swipe_group)

    # --- prompts ------------------------------------------------------------------------------

    async def build_prompt(
        self,
        active: ActiveRoleplay,
        *,
        speaker: Actor | None,
        exclude_message_id: int | None = None,
        continue_message: MessageRecord | None = None,
    ) -> BuiltPrompt:
        """The prompt for the next reply from stored history; caches new token counts.

        `exclude_message_id` leaves a turn out (the reply being regenerated).
        """
        # Chunked trimming: start where this roleplay's last prompt started, so its beginning
        # (and an engine's cached prefix) stays the same; a new context size starts afresh.
        session_id = active.session.id
        anchor_key = (session_id, active.config.context_size, active.config.sampling.max_new_tokens)
        history_start_id = self._history_start.get(anchor_key)
        limit = active.config.context_size // MIN_TURN_TOKENS + 2
        records = self._history.get(session_id, limit=limit, since_id=history_start_id)
        if records is None:
            version = self._history.version()
            records = await repo.recent_history(
                self.sessions, session_id=session_id, limit=limit, since_id=history_start_id
            )
            self._history.put(
                session_id,
                limit=limit,
                since_id=history_start_id,
                records=records,
                version=version,
            )
        history = [
            _history_message(m.role, m.display_name, m.content, m.token_count, m.id)
            for m in records
            if m.id != exclude_message_id and m.role in ("user", "assistant")
        ]
        guild = active.session.guild_id
        if speaker is None:
            speaker_name = next((m.name for m in reversed(history) if m.role == "user"), "user")
            persona_text = ""
        else:
            persona = await self.persona(speaker.user_id, guild)
            speaker_name = persona.name if persona else speaker.display_name
            persona_text = persona.description if persona else ""
        config = active.config
        options = PromptOptions(
            context_size=config.context_size,
            max_new_tokens=config.sampling.max_new_tokens,
            author_note=config.author_note,
            author_note_depth=config.author_note_depth,
            summary=active.session.summary,
            history_start_id=history_start_id,
        )
        built = await self.builder.build_async(
            card=active.card,
            history=history,
            user_name=speaker_name,
            persona=persona_text,
            channel_lorebook=active.channel_lorebook,
            options=options,
            continue_last=continue_message is not None,
        )
        if len(self._history_start) >= CACHE_LIMIT:
            self._history_start.clear()
        self._history_start[anchor_key] = built.history_start_id
        if built.new_token_counts:
            await repo.save_token_counts(self.sessions, counts=built.new_token_counts)
            self._history.counted(session_id, built.new_token_counts)
        return built

    def _count(self, role: str, display_name: str, content: str) -> int:
        """The tokens a turn takes in the prompt: stored with it, so no prompt counts it again."""
        return self.builder.count_message(_history_message(role, display_name, content))

    # --- storing replies ----------------------------------------------------------------------

    async def store_reply(
        self,
        active: ActiveRoleplay,
        text: str,
        *,
        regenerate_of: int | None = None,
        continue_of: MessageRecord | None = None,
        discord_message_ids: list[int] | None = None,
    ) -> MessageRecord:
        """Store a finished reply: a new turn, a new alternative, or the continued text."""
        ids = discord_message_ids or []
        name = active.character.name
        session_id = active.session.id
        if continue_of is not None:
            content = continue_of.content + text
            updated = await repo.update_message(
                self.sessions,
                message_id=continue_of.id,
                content=content,
                token_count=self._count("assistant", continue_of.display_name, content),
                discord_message_ids=ids or None,
            )
            self._history.changed(session_id)
            if updated is None:
                raise NotFound("that reply is gone", key="error.not_found")
            return updated
        if regenerate_of is not None:
            alternative = await repo.add_alternative(
                self.sessions,
                message_id=regenerate_of,
                content=text,
                token_count=self._count("assistant", name, text),
                discord_message_ids=ids,
            )
            self._history.changed(session_id)
            return alternative
        turn = repo.NewMessage(
            session_id=session_id,
            role="assistant",
            content=text,
            display_name=name,
            token_count=self._count("assistant", name, text),
            discord_message_ids=tuple(ids),
        )
        stored = await self._turns.submit(turn)
        self._history.appended(stored)
        return stored

    async def attach_discord_ids(self, message_id: int, ids: list[int]) -> None:
        updated = await repo.update_message(
            self.sessions, message_id=message_id, discord_message_ids=ids
        )
        if updated is not None:
            self._history.changed(updated.session_id)


def _history_message(
    role: str,
    display_name: str,
    content: str,
    token_count: int | None = None,
    message_id: int | None = None,
) -> HistoryMessage:
    """A stored turn as the prompt builder sees it."""
    return HistoryMessage(
        role="assistant" if role == "assistant" else "user",
        name=display_name or ("" if role == "assistant" else "user"),
        content=content,
        token_count=token_count,
        message_id=message_id,
    )


def greetings_of(character: CharacterRecord) -> list[str]:
    return [g for g in [character.first_message, *character.alternate_greetings] if g.strip()]
