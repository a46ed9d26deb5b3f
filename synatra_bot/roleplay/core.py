"""The roleplay core's state: scenes (session, cast, players), stored turns, swipes, prompts.

It knows nothing of Discord or terminals. Front ends do not call it to play a turn: they go
through `synatra_bot.roleplay.turns.Turns`, which holds the rules of a turn and calls this for
storage and prompts. Nothing half-written is ever stored.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from synatra_bot.errors import (
    LimitReached,
    NoSession,
    NotFound,
    PermissionDenied,
    PromptTooLarge,
    UserFacingError,
)
from synatra_bot.prompt.builder import (
    BuiltPrompt,
    PromptBuilder,
    PromptOptions,
    ScenePlayer,
)
from synatra_bot.prompt.cards import CharacterCard, macro_name
from synatra_bot.prompt.history import HistoryMessage
from synatra_bot.prompt.lorebook import Lorebook, lorebook_from_character_book
from synatra_bot.prompt.macros import MacroContext, substitute_macros
from synatra_bot.prompt.recall import RECALL_PIECE_TOKENS, RecallBlock
from synatra_bot.prompt.scripts import (
    CardScript,
    ScriptRun,
    Stage,
    apply_scripts_async,
    apply_to_history_async,
    card_scripts,
)
from synatra_bot.prompt.st_chat import DEFAULT_NOTE_DEPTH, DEFAULT_NOTE_INTERVAL, note_due
from synatra_bot.roleplay.characters import (
    CharacterService,
    can_use,
    card_from_record,
    greetings_of,
    group_greetings_of,
    require_nsfw_allowed,
)
from synatra_bot.roleplay.config import (
    MAX_SERVER_PRESETS,
    SHIPPED_PRESETS,
    ChannelConfig,
    Defaults,
    effective_config,
    preset_values,
)
from synatra_bot.roleplay.history import HistoryCache
from synatra_bot.roleplay.names import taken_by
from synatra_bot.roleplay.pins import ScenePins
from synatra_bot.roleplay.player_facts import PlayerFacts
from synatra_bot.roleplay.rules import require_starter_or_moderator, require_voice
from synatra_bot.roleplay.ttl_cache import TtlCache
from synatra_bot.roleplay.types import Actor, Place
from synatra_bot.storage import archives
from synatra_bot.storage import repository as repo
from synatra_bot.storage.batching import Batcher
from synatra_bot.storage.records import (
    CharacterRecord,
    MessageRecord,
    PersonaRecord,
    PinRecord,
    SessionRecord,
)
from synatra_bot.storage.retry import Patience, retrying


class SceneMemory(Protocol):
    """What keeps the scenes' summaries up to date (`roleplay.memory.MemoryKeeper`), as the
    core tells it of changes: declared here so the core needs no import of it."""

    def updating(self, session_id: int) -> bool: ...

    def reply_stored(self, active: ActiveRoleplay, built: BuiltPrompt) -> None: ...

    async def history_changed(self, session_id: int, oldest_id: int) -> None: ...

    def auto_changed(self, session_id: int) -> None: ...


class SceneRecall(Protocol):
    """What indexes the scenes' turns and recalls old ones (`roleplay.recall.TurnRecall`)."""

    def turn_stored(self, session_id: int) -> None: ...

    async def turns_changed(self, session_id: int, oldest_id: int) -> None: ...

    async def recall(
        self,
        *,
        session_id: int,
        query: str,
        before_id: int,
        budget: int,
        count: Callable[[str], int],
    ) -> RecallBlock | None: ...

    def start_catch_up(self) -> None: ...

    async def close(self) -> None: ...


#: The newest messages whose words make the recall's query (the one answered now: an older
#: one would recall what the window already holds).
RECALL_QUERY_MESSAGES = 1

#: The note before a reply nobody asked for: the character goes on with the scene by itself.
UNPROMPTED_NOTE = (
    "한동안 아무도 말이 없습니다. {{char}}가 먼저 입을 열어 장면을 자연스럽게 이어 가세요. "
    "{{char}}의 대사와 행동만 쓰고, 다른 인물의 말이나 행동은 대신 정하지 마세요."
)
#: The language of dates and weekdays that cards' macros write (`{{date}}`, `{{weekday}}`).
MACRO_LOCALE = "ko"
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


@dataclass(frozen=True, slots=True)
class Started:
    """A character's entrance: a new scene (`start`) or joining one (`add_to_cast`), with the
    greeting it opened with (alternatives behind it) when it has one."""

    session: SessionRecord
    character: CharacterRecord
    greeting: MessageRecord | None
    greeting_count: int
    #: What the channel shows for the greeting where the card's display scripts change it.
    greeting_display: str | None = None


def _refuse_shipped_preset(name: str) -> None:
    """A server's own presets never take a shipped preset's name (it stays the shipped one)."""
    if name in SHIPPED_PRESETS:
        raise UserFacingError(f"{name} is a shipped preset", key="error.preset_shipped", name=name)


@dataclass(frozen=True, slots=True)
class ActiveRoleplay:
    """A running scene: its session, its cast (the character it started with first) and the
    channel's configuration."""

    session: SessionRecord
    cast: tuple[CharacterRecord, ...]
    config: ChannelConfig
    #: Cast members the scene's starter may no longer use here (made private, deleted,
    #: rejected or sent back for approval since they joined).
    unavailable: frozenset[int] = frozenset()
    #: Character id -> the personal lorebook its card links to (`extensions.world`), used
    #: in place of the lorebook inside the card, as SillyTavern uses the linked book.
    linked_books: Mapping[int, dict[str, Any]] = field(default_factory=dict)
    #: Cast members muted in this scene: they never answer on their own (`/rp next` calls them).
    muted: frozenset[int] = frozenset()
    #: The characters as the prompt builder takes them and the channel's lorebook, parsed once
    #: when the roleplay is loaded (it is cached) rather than for every reply.
    cards: dict[int, CharacterCard] = field(init=False)
    channel_lorebook: Lorebook | None = field(init=False)

    def __post_init__(self) -> None:
        if not self.cast:
            raise ValueError("a scene has at least one character")
        cards = {}
        for character in self.cast:
            card = card_from_record(character)
            linked = self.linked_books.get(character.id)
            cards[character.id] = (
                card if linked is None else dataclasses.replace(card, character_book=linked)
            )
        object.__setattr__(self, "cards", cards)
        lorebook = self.config.lorebook
        book = lorebook_from_character_book(lorebook) if lorebook else None
        object.__setattr__(self, "channel_lorebook", book)

    @property
    def lead(self) -> CharacterRecord:
        """The character the scene started with (first in the cast)."""
        return self.cast[0]

    @property
    def is_group(self) -> bool:
        return len(self.cast) > 1

    @property
    def names(self) -> str:
        """The cast's names, for notices ("민지, 준")."""
        return ", ".join(c.name for c in self.cast)

    def member(self, character_id: int | None) -> CharacterRecord | None:
        return next((c for c in self.cast if c.id == character_id), None)

    def scripts_of(self, character_id: int) -> list[CardScript]:
        """The character's card scripts; none where moderators turned card scripts off."""
        if not self.config.card_scripts:
            return []
        return card_scripts(self.cards[character_id].extensions)

    @property
    def speakers(self) -> tuple[CharacterRecord, ...]:
        """The cast members that may answer on their own (not muted), in cast order."""
        return tuple(c for c in self.cast if c.id not in self.muted)


@dataclass(frozen=True, slots=True)
class MemoryStatus:
    """A scene's long-term memory as `/rp memory` shows it."""

    #: The summary the model sees in the system block ("" when there is none).
    text: str
    #: Its tokens, and how many an automatic summary of the scene may take.
    tokens: int
    limit: int
    #: Dropped history is folded in automatically (the scene's setting).
    auto: bool
    #: A message it covers changed since: it is being rewritten (with automatic memory on).
    stale: bool
    #: The messages it covers: from the scene's first to `until_id` (None: none yet).
    first_id: int | None
    until_id: int | None
    #: A summary job runs for the scene right now.
    updating: bool = False

    @property
    def covers(self) -> tuple[int, int] | None:
        """The ids of the oldest and newest messages it covers."""
        if self.first_id is None or self.until_id is None:
            return None
        return self.first_id, self.until_id


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
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        patience: Patience | None = None,
    ) -> None:
        self.sessions = sessions
        #: The wall clock scenes' activity is measured on (moved forward in tests).
        self.now = now
        #: How long a player's line and a reply keep trying a locked database.
        self.patience = patience or Patience()
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
        #: (session, first turn a prompt holds) -> the turns before it, for a lorebook's
        #: `delay` (counted from the scene's start); it changes only when the window moves.
        self._earlier_turns: dict[tuple[int, int], int] = {}
        #: Each session's newest turns, so a reply's prompt needs no read.
        self._history = HistoryCache(
            ttl_s=CACHE_TTL_S, max_turns=HISTORY_TURNS, max_sessions=CACHE_LIMIT, clock=clock
        )
        #: New turns from every channel are written together when they arrive together, and
        #: so are the persona reads of members speaking for the first time in a while.
        self._turns = Batcher(functools.partial(repo.add_messages, sessions), every=COMMIT_EVERY_S)
        #: Lines that may have been stored by an earlier process, looked up together.
        self._line_lookups = Batcher(
            functools.partial(repo.has_discord_messages, sessions), every=COMMIT_EVERY_S
        )
        self._persona_reads = Batcher(
            functools.partial(repo.get_personas, sessions), every=COMMIT_EVERY_S
        )
        #: Keeps the scenes' summaries up to date, when the app runs one (`MemoryKeeper`
        #: attaches itself): it hears of every change to the history a summary may cover.
        self.memory: SceneMemory | None = None
        #: Recalls old turns into prompts, when the app runs it (`TurnRecall`).
        self.recall: SceneRecall | None = None
        #: What characters know about players (`PlayerFacts.remember_fact` adds to it).
        self.facts = PlayerFacts(sessions, ttl_s=CACHE_TTL_S, limit=CACHE_LIMIT, clock=clock)
        #: The lines players pinned into the scenes' memory, in every prompt.
        self.pins = ScenePins(self.sessions)
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

    async def drop_scene_note(self, place: Place) -> bool:
        """The scene running in `place` follows its channel's author's note again, in place of
        its own (an imported chat's); whether it had one."""
        active = await self.active(place)
        if active is None or active.session.author_note is None:
            return False
        await archives.drop_scene_note(self.sessions, session_id=active.session.id)
        self.forget(place.channel_id)
        return True

    async def update_guild_settings(self, guild_id: int, **changes: Any) -> None:
        await repo.update_guild_settings(self.sessions, guild_id=guild_id, **changes)
        self.forget()

    async def presets(self, guild_id: int) -> dict[str, dict[str, float | int]]:
        """Every sampling preset the server can apply, with all the values each sets: the
        shipped ones, then the server's own."""
        found = {name: preset_values(values) for name, values in SHIPPED_PRESETS.items()}
        for own in await repo.presets_of(self.sessions, guild_id=guild_id):
            found[own.name] = preset_values(own.preset_values)
        return found

    async def save_preset(self, guild_id: int, name: str, values: dict[str, float | int]) -> None:
        """Keep `values` as the server's preset `name`."""
        _refuse_shipped_preset(name)
        saved = await repo.save_preset(
            self.sessions, guild_id=guild_id, name=name, values=values, max_saved=MAX_SERVER_PRESETS
        )
        if saved is None:
            raise UserFacingError(
                "the server has the most presets allowed",
                key="error.preset_limit",
                limit=MAX_SERVER_PRESETS,
            )

    async def delete_preset(self, guild_id: int, name: str) -> None:
        _refuse_shipped_preset(name)
        if not await repo.delete_preset(self.sessions, guild_id=guild_id, name=name):
            raise NotFound(f"no preset called {name}", key="error.no_preset", name=name)

    async def config_for(self, place: Place, *, user_id: int | None = None) -> ChannelConfig:
        """The configuration a turn in `place` follows. A DM is always open to its user, with
        NSFW characters only when that user turned them on for themselves (`user_id`)."""
        guild = await repo.get_guild_settings(self.sessions, guild_id=place.guild_id)
        channel = await repo.get_channel_settings(
            self.sessions, channel_id=place.settings_channel_id
        )
        config = effective_config(defaults=self.defaults, guild=guild, channel=channel)
        if not place.dm:
            return config
        nsfw = False
        if user_id is not None:
            nsfw = (await repo.get_user_settings(self.sessions, user_id=user_id)).nsfw_in_dms
        return dataclasses.replace(
            config, enabled=True, nsfw_policy="allowed" if nsfw else "off", reply_mode="all"
        )

    async def server_config(self, guild_id: int) -> ChannelConfig:
        """The configuration a channel of `guild_id` with no settings of its own follows."""
        guild = await repo.get_guild_settings(self.sessions, guild_id=guild_id)
        return effective_config(defaults=self.defaults, guild=guild, channel=None)

    async def set_nsfw_in_dms(self, user_id: int, enabled: bool) -> None:
        """A user's own choice to play NSFW characters in DMs with the bot."""
        await repo.update_user_settings(self.sessions, user_id=user_id, nsfw_in_dms=enabled)
        self.forget()

    async def nsfw_in_dms(self, user_id: int) -> bool:
        return (await repo.get_user_settings(self.sessions, user_id=user_id)).nsfw_in_dms

    async def active(
        self, place: Place, *, on_wait: Callable[[], None] | None = None
    ) -> ActiveRoleplay | None:
        """The scene playing in `place`; a read that finds the database locked is tried again
        (`storage.retry`), and `on_wait` hears of it."""
        return await retrying(
            lambda: self._active.get(place.channel_id, lambda: self._load_active(place)),
            self.patience,
            on_wait=on_wait,
        )

    async def _load_active(self, place: Place) -> ActiveRoleplay | None:
        session = await repo.get_active_session(self.sessions, channel_id=place.channel_id)
        if session is None:
            return None
        members = await repo.session_cast(self.sessions, session_id=session.id)
        cast = []
        for member in members:
            character = await repo.get_character(self.sessions, character_id=member.character_id)
            if character is not None:
                cast.append(character)
        if not cast:
            return None
        starter = self._starter(session, place, cast)
        unavailable = frozenset(c.id for c in cast if not can_use(starter, c))
        config = await self.config_for(place, user_id=session.started_by)
        linked = await self.characters.linked_lorebooks(cast)
        muted = frozenset(m.character_id for m in members if m.muted)
        return ActiveRoleplay(session, tuple(cast), config, unavailable, linked, muted)

    @staticmethod
    def _starter(
        session: SessionRecord, place: Place, cast: Sequence[CharacterRecord] = ()
    ) -> Actor:
        """The scene's starter as the character rules see them: every character of a scene
        must stay one its starter may use there. In a DM, a server's shared character stays
        usable while it is shared there (membership was checked when it joined)."""
        if not place.dm:
            return Actor(user_id=session.started_by, display_name="", guild_id=place.guild_id)
        servers = frozenset(c.guild_id for c in cast if c.guild_id is not None)
        return Actor(user_id=session.started_by, display_name="", member_of=servers)

    async def pin(
        self, actor: Actor, active: ActiveRoleplay, text: str, *, message_id: int | None = None
    ) -> PinRecord:
        """Pin `text` into the scene's memory (`ScenePins.pin`). A player pinning their own line
        tells the scene's characters something about themselves (`PlayerFacts`), where the
        channel keeps facts; a line pinned by anyone else (a moderator, the starter, another
        player, who may have rewritten it) is no fact about its author."""
        pinned = await self.pins.pin(actor, active.session, text, message_id=message_id)
        if message_id is None or not (active.config.player_facts and active.config.fact_tokens):
            return pinned
        turn = await repo.get_message(self.sessions, message_id=message_id)
        if turn is None or turn.role != "user" or turn.author_id != actor.user_id:
            return pinned
        for character in active.cast:
            await self.facts.remember_fact(
                active.session.guild_id, actor.user_id, character.id, pinned.text, "pin", turn.id
            )
        return pinned

    async def edit_pin(
        self, actor: Actor, active: ActiveRoleplay, pin_id: int, text: str
    ) -> PinRecord:
        """Change a pin's text (`ScenePins.edit`); the facts it made follow when its author
        rewrites it, and are forgotten when someone else does."""
        before = await self.pins.find(active.session, pin_id)
        changed = await self.pins.edit(actor, active.session, pin_id, text)
        own = actor.user_id == before.author_id
        await self.facts.pin_changed(active.session.guild_id, before, changed.text if own else None)
        return changed

    async def unpin(self, actor: Actor, active: ActiveRoleplay, pin_id: int) -> PinRecord:
        """Unpin (`ScenePins.remove`); the facts the pin made are forgotten with it."""
        gone = await self.pins.remove(actor, active.session, pin_id)
        await self.facts.pin_changed(active.session.guild_id, gone, None)
        return gone

    async def require_active(self, place: Place) -> ActiveRoleplay:
        active = await self.active(place)
        if active is None:
            raise NoSession("no roleplay is running in this channel")
        return active

    @staticmethod
    def check_may_generate(
        active: ActiveRoleplay, place: Place, character: CharacterRecord
    ) -> None:
        """The channel rules every path that makes a character speak obeys (a new message,
        regenerate, continue, an edit, `/rp next`): the channel is enabled, the character is
        still available to the scene, and an NSFW character only where the policy allows it."""
        if not active.config.enabled:
            raise UserFacingError("channel disabled", key="error.channel_disabled")
        if character.id in active.unavailable:
            raise PermissionDenied(
                "the character is no longer available",
                key="error.character_unavailable",
                name=character.name,
            )
        require_nsfw_allowed(character, active.config.nsfw_policy, place)

    # --- sessions -----------------------------------------------------------------------------

    async def start(
        self, actor: Actor, place: Place, *, character_id: int, greeting_index: int = 0
    ) -> Started:
        """Start a roleplay: the old session is archived, the greeting(s) become the first turn.

        A scene someone else started and that is still going (activity in the last
        `IDLE_TAKEOVER_S`) is theirs: only they or a moderator may replace it.
        """
        character = await self.check_start(actor, place, character_id=character_id)
        config = await self.config_for(place, user_id=actor.user_id)
        session = await repo.start_session(
            self.sessions,
            guild_id=None if place.dm else place.guild_id,
            channel_id=place.channel_id,
            parent_channel_id=place.parent_channel_id,
            character_id=character.id,
            started_by=actor.user_id,
        )
        self.forget(place.channel_id)
        texts = greetings_of(character)
        greeting = await self._store_greetings(session, character, actor, texts, greeting_index)
        # The channel's first message needs exactly this: keep it rather than read it back.
        linked = await self.characters.linked_lorebooks([character])
        active = ActiveRoleplay(session, (character,), config, linked_books=linked)
        self._active.put(place.channel_id, active)
        display = None
        if greeting is not None:
            user = await self.user_name(actor, place_guild=session.guild_id)
            display = await self.displayed(active, greeting, user=user)
        return Started(session, character, greeting, len(texts), display)

    async def _store_greetings(
        self,
        session: SessionRecord,
        character: CharacterRecord,
        actor: Actor,
        greetings: Sequence[str],
        index: int,
        *,
        group: bool = False,
    ) -> MessageRecord | None:
        """Store `greetings` as one turn of `character` with alternatives; `index` is shown."""
        user_name = await self.user_name(actor, place_guild=session.guild_id)
        char = macro_name(card_from_record(character))
        texts = [substitute_macros(g, char=char, user=user_name) for g in greetings]
        if not texts:
            return None
        index = index if 0 <= index < len(texts) else 0
        first = await repo.add_message(
            self.sessions,
            session_id=session.id,
            role="assistant",
            content=texts[0],
            display_name=character.name,
            character_id=character.id,
            token_count=self._count("assistant", character.name, texts[0], group=group),
        )
        chosen = first
        for n, text in enumerate(texts[1:], start=1):
            alt = await repo.add_alternative(
                self.sessions,
                message_id=first.id,
                content=text,
                token_count=self._count("assistant", character.name, text, group=group),
            )
            if n == index:
                chosen = alt
        self._history.changed(session.id)
        return await repo.choose_alternative(self.sessions, message_id=chosen.id)

    # --- the cast -----------------------------------------------------------------------------

    async def check_start(
        self, actor: Actor, place: Place, *, character_id: int
    ) -> CharacterRecord:
        """Refuse a new scene before anything changes: a voice here, nobody else's running
        scene, a character `actor` may start here (the NSFW rule included)."""
        require_voice(actor)
        await self.ensure_can_start(actor, place)
        config = await self.config_for(place, user_id=actor.user_id)
        return await self.characters.for_use(
            actor, character_id, place=place, nsfw_policy=config.nsfw_policy
        )

    async def check_join(self, actor: Actor, place: Place, *, character_id: int) -> CharacterRecord:
        """Refuse a character joining before anything changes: the starter or a moderator asks,
        both the scene's starter and whoever asks may use it here, it is not in the scene, the
        scene is not full."""
        active = await self.require_active(place)
        require_starter_or_moderator(actor, active.session)
        starter = self._starter(active.session, place)
        if place.dm:
            starter = actor  # the DM's own user, with the servers they are in
        character = await self.characters.for_use(
            starter, character_id, place=place, nsfw_policy=active.config.nsfw_policy
        )
        if not can_use(actor, character):
            # A private character is its owner's alone: not even a moderator casts it.
            raise NotFound(f"character {character_id} is not available", key="error.no_character")
        if active.member(character.id) is not None:
            raise UserFacingError(
                "already in the scene", key="error.already_in_cast", name=character.name
            )
        if len(active.cast) >= active.config.cast_limit:
            raise UserFacingError(
                "the scene is full", key="error.cast_full", limit=active.config.cast_limit
            )
        return character

    async def add_to_cast(self, actor: Actor, place: Place, *, character_id: int) -> Started:
        """Bring a character into the running scene (see `check_join`); it greets with its
        group-only greeting."""
        character = await self.check_join(actor, place, character_id=character_id)
        active = await self.require_active(place)
        await self._check_no_persona_named(active, place, character)
        limit = active.config.cast_limit
        try:
            added = await repo.add_to_cast(
                self.sessions,
                session_id=active.session.id,
                character_id=character.id,
                max_size=limit,
            )
        except LimitReached:
            raise UserFacingError("the scene is full", key="error.cast_full", limit=limit) from None
        if added is None:
            raise UserFacingError(
                "already in the scene", key="error.already_in_cast", name=character.name
            )
        self.forget(place.channel_id)
        texts = group_greetings_of(character)
        greeting = await self._store_greetings(
            active.session, character, actor, texts, 0, group=True
        )
        display = None
        if greeting is not None:
            user = await self.user_name(actor, place_guild=active.session.guild_id)
            display = await self.displayed(await self.require_active(place), greeting, user=user)
        return Started(active.session, character, greeting, len(texts), display)

    async def _check_no_persona_named(
        self, active: ActiveRoleplay, place: Place, character: CharacterRecord
    ) -> None:
        """A character may not join a scene where a player plays a persona of its name: the
        player's lines would read as the character's, to the model and to everyone."""
        speakers = {m.author_id for m in await self.recent(active) if m.role == "user"}
        guild_id = None if place.dm else place.guild_id
        for user_id in sorted(uid for uid in speakers if uid is not None):
            persona = await self.persona(user_id, guild_id)
            if persona is not None and taken_by(persona.name, [character.name]) is not None:
                raise UserFacingError(
                    "a player's persona has that name",
                    key="error.cast_name_is_persona",
                    name=character.name,
                )

    async def remove_from_cast(
        self, actor: Actor, place: Place, *, character_id: int
    ) -> CharacterRecord:
        """Take a character out of the scene (its lines stay in the story); the last one stays."""
        active = await self.require_active(place)
        require_starter_or_moderator(actor, active.session)
        character = active.member(character_id)
        if character is None:
            raise NotFound("not in the scene", key="error.not_in_cast")
        if len(active.cast) == 1:
            raise UserFacingError("a scene keeps one character", key="error.last_in_cast")
        await repo.remove_from_cast(
            self.sessions, session_id=active.session.id, character_id=character_id
        )
        self.forget(place.channel_id)
        self._history.changed(active.session.id)
        return character

    async def set_muted(
        self, actor: Actor, place: Place, *, character_id: int, muted: bool
    ) -> CharacterRecord:
        """Mute a character of the scene (it answers only when called) or unmute it: the
        scene's starter or a moderator."""
        active = await self.require_active(place)
        require_starter_or_moderator(actor, active.session)
        character = active.member(character_id)
        if character is None:
            raise NotFound("not in the scene", key="error.not_in_cast")
        if not active.is_group:
            raise UserFacingError("a scene's only character always answers", key="error.mute_alone")
        await repo.set_cast_muted(
            self.sessions, session_id=active.session.id, character_id=character_id, muted=muted
        )
        self.forget(place.channel_id)
        return character

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
                name=current.names,
            )

    async def _idle(self, session: SessionRecord) -> bool:
        """Whether nothing happened in the scene for `IDLE_TAKEOVER_S` since it was made here.
        Undone and unchosen turns count: undoing the newest turns does not make a scene look
        abandoned."""
        latest = await repo.last_activity(self.sessions, session_id=session.id)
        started = session.started_at
        if started.tzinfo is None:  # SQLite hands back naive UTC
            started = started.replace(tzinfo=UTC)
        # A scene made here of older turns (imported, branched) is new from when it was made.
        last = max(latest, started) if latest is not None else started
        return (self.now() - last).total_seconds() > IDLE_TAKEOVER_S

    async def stop(self, place: Place) -> int | None:
        ended = await repo.end_session(self.sessions, channel_id=place.channel_id)
        self.forget(place.channel_id)
        return ended

    async def reset(self, actor: Actor, place: Place) -> Started:
        """Archive the history and start again with the same character."""
        active = await self.require_active(place)
        return await self.start(actor, place, character_id=active.lead.id)

    async def set_memory(self, place: Place, text: str) -> ActiveRoleplay:
        """Set the session's long-term memory: a summary the model sees in the system block.

        Written by hand, it stays as written: it covers what the summary covered before, and
        automatic memory folds what is dropped next into it."""
        active = await self.require_active(place)
        await repo.set_summary(self.sessions, session_id=active.session.id, summary=text)
        self.forget(place.channel_id)
        return await self.require_active(place)

    async def set_auto_memory(self, place: Place, enabled: bool) -> ActiveRoleplay:
        """Turn the scene's automatic memory on or off (its summary stays as it is)."""
        active = await self.require_active(place)
        await repo.set_summary_auto(self.sessions, session_id=active.session.id, enabled=enabled)
        if self.memory is not None:
            self.memory.auto_changed(active.session.id)
        self.forget(place.channel_id)
        return await self.require_active(place)

    async def memory_status(self, place: Place) -> MemoryStatus:
        """The scene's summary: its text and tokens, whether it is kept automatically or is
        stale, and the messages it covers (read afresh, not from the cache)."""
        active = await self.require_active(place)
        session = await repo.get_session(self.sessions, session_id=active.session.id)
        if session is None:
            raise NoSession("no roleplay is running in this channel")
        first = None
        if session.summary_until_id is not None:
            first = await repo.first_message_id(self.sessions, session_id=session.id)
        text = session.summary
        return MemoryStatus(
            text=text,
            tokens=self.builder.count_text(text.strip()) if text.strip() else 0,
            limit=active.config.summary_tokens,
            auto=session.summary_auto,
            stale=session.summary_stale,
            first_id=first,
            until_id=session.summary_until_id,
            updating=self.memory is not None and self.memory.updating(session.id),
        )

    async def _turn_changed(self, message: MessageRecord) -> None:
        """`message`'s turn changed: the cached history is read again, and a summary that
        covers it is stale."""
        self._history.changed(message.session_id)
        await self._history_changed(message.session_id, message.turn_group)

    async def _history_changed(self, session_id: int, oldest_id: int) -> None:
        """Turns from `oldest_id` on changed: a summary that covers them is stale, and their
        search terms are found again."""
        if self.recall is not None:
            await self.recall.turns_changed(session_id, oldest_id)
        if self.memory is not None:
            await self.memory.history_changed(session_id, oldest_id)
        else:
            await repo.mark_summary_stale(
                self.sessions, session_id=session_id, changed_id=oldest_id
            )

    async def undo(self, place: Place) -> list[MessageRecord]:
        active = await self.require_active(place)
        removed = await repo.undo_last_exchange(self.sessions, session_id=active.session.id)
        self._history.changed(active.session.id)
        if removed:
            await self._history_changed(active.session.id, min(m.turn_group for m in removed))
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

    async def scripted_line(
        self, active: ActiveRoleplay, actor: Actor, text: str, *, edit: bool = False
    ) -> str:
        """A player's line after the input scripts of each card of the cast, in cast order
        (as typed where they would leave nothing); `edit`: a stored line edited, only the
        scripts that run on edit."""
        typed = text
        user: str | None = None
        for character in active.cast:
            scripts = active.scripts_of(character.id)
            if not scripts:
                continue
            if user is None:
                user = await self.user_name(actor, place_guild=active.session.guild_id)
            name = macro_name(active.cards[character.id])
            text = await apply_scripts_async(
                scripts, text, Stage.INPUT, role="user", char=name, user=user, edit=edit
            )
        return text if text.strip() else typed

    async def _edited_text(
        self, active: ActiveRoleplay, message: MessageRecord, content: str, editor: Actor
    ) -> tuple[str, str]:
        """An edit of `message` of the running scene: its text as a new message would be stored
        (every input or output script) and as the edit is stored (only those that run on edit).
        As typed where the scripts would leave nothing."""
        if message.role == "user":
            whole = await self.scripted_line(active, editor, content)
            return whole, await self.scripted_line(active, editor, content, edit=True)
        character = active.member(message.character_id)
        scripts = active.scripts_of(character.id) if character is not None else []
        if character is None or not scripts:
            return content, content
        name, user = macro_name(active.cards[character.id]), await self.last_player_name(active)
        texts = []
        for edit in (False, True):
            text = await apply_scripts_async(
                scripts, content, Stage.OUTPUT, role="assistant", char=name, user=user, edit=edit
            )
            texts.append(text if text.strip() else content)
        return texts[0], texts[1]

    async def scripted_reply(
        self, active: ActiveRoleplay, character: CharacterRecord, text: str, *, user: str
    ) -> tuple[str, str]:
        """A reply of `character` as stored (after its card's output scripts) and as shown
        (after its display scripts too; the newest message, depth 0). Scripts that would leave
        nothing to store or show are passed over (Discord posts no empty message)."""
        scripts = active.scripts_of(character.id)
        if not scripts:
            return text, text
        name = macro_name(active.cards[character.id])
        stored = await apply_scripts_async(
            scripts, text, Stage.OUTPUT, role="assistant", char=name, user=user
        )
        stored = stored if stored.strip() else text
        shown = await apply_scripts_async(
            scripts, stored, Stage.DISPLAY, role="assistant", char=name, user=user, depth=0
        )
        return stored, shown if shown.strip() else stored

    async def displayed(
        self, active: ActiveRoleplay, message: MessageRecord, *, user: str
    ) -> str | None:
        """What the channel shows for a stored reply of a cast member, where its card's display
        scripts change it (as the newest message); None where they do not."""
        character = active.member(message.character_id)
        if character is None or message.role != "assistant":
            return None
        scripts = active.scripts_of(character.id)
        if not scripts:
            return None
        shown = await apply_scripts_async(
            scripts,
            message.content,
            Stage.DISPLAY,
            role="assistant",
            char=macro_name(active.cards[character.id]),
            user=user,
            depth=0,
        )
        return None if shown == message.content or not shown.strip() else shown

    async def last_player_name(self, active: ActiveRoleplay) -> str:
        """The name the scene's newest player line went by ("user" before any), as the
        prompt's preview names the player it answers."""
        history = await self.recent(active)
        return next((m.display_name for m in reversed(history) if m.role == "user"), None) or "user"

    async def add_user_message(
        self,
        active: ActiveRoleplay,
        actor: Actor,
        content: str,
        *,
        discord_message_id: int | None,
        on_wait: Callable[[], None] | None = None,
    ) -> MessageRecord:
        """Store a player's line (after the cast's input scripts), tried again while the
        database is locked (`on_wait` hears of it) or once after its connection dropped
        (`storage.retry`)."""
        content = await self.scripted_line(active, actor, content)
        store = functools.partial(
            self._add_user_message, active, actor, content, discord_message_id
        )
        return await retrying(store, self.patience, on_wait=on_wait)

    async def _add_user_message(
        self, active: ActiveRoleplay, actor: Actor, content: str, discord_message_id: int | None
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
        if self.recall is not None:
            self.recall.turn_stored(stored.session_id)
        return stored

    async def add_removed_line(
        self,
        active: ActiveRoleplay,
        actor: Actor,
        content: str,
        *,
        discord_message_id: int | None,
        on_wait: Callable[[], None] | None = None,
    ) -> MessageRecord:
        """Keep a player's line out of the story from the start (as if deleted): the model never
        sees it, and the scene knows it has taken it (`line_stored`). Tried again as a stored
        line is."""
        name = await self.user_name(actor, place_guild=active.session.guild_id)
        store = functools.partial(
            repo.add_removed_message,
            self.sessions,
            session_id=active.session.id,
            role="user",
            author_id=actor.user_id,
            display_name=name,
            content=content,
            discord_message_ids=(discord_message_id,) if discord_message_id else (),
        )
        return await retrying(store, self.patience, on_wait=on_wait)

    async def line_stored(
        self,
        active: ActiveRoleplay,
        discord_message_id: int,
        *,
        on_wait: Callable[[], None] | None = None,
    ) -> bool:
        """Whether the scene has stored the line of that Discord message (removed or not)."""
        key = (active.session.id, discord_message_id)
        return await retrying(
            lambda: self._line_lookups.submit(key), self.patience, on_wait=on_wait
        )

    async def active_scenes(
        self, *, guild_ids: Collection[int], dms: bool, limit: int
    ) -> list[tuple[SessionRecord, int | None]]:
        """The running scenes in `guild_ids` (and in DMs with `dms`), each with the newest
        Discord message it stores (None: none), the most recently active first."""
        return await repo.active_scenes(self.sessions, guild_ids=guild_ids, dms=dms, limit=limit)

    async def message_edited(
        self,
        discord_message_id: int,
        content: str,
        *,
        active: ActiveRoleplay | None = None,
        editor: Actor | None = None,
    ) -> EditResult | None:
        """A stored Discord message changed: update history. None when it is not stored or
        nothing changed. A message of the running scene `active` is stored after the card
        scripts that run on edit (`editor`: who edited it); an update whose text, scripted as
        a new message, is what is stored changes nothing (Discord resends a message's text
        when it only adds a link preview)."""
        found = await repo.find_by_discord_id(self.sessions, discord_message_id=discord_message_id)
        if found is None or found.content == content:
            return None
        if active is not None and editor is not None and found.session_id == active.session.id:
            as_new, content = await self._edited_text(active, found, content, editor)
            if found.content in (as_new, content):
                return None
        updated = await repo.update_message(
            self.sessions, message_id=found.id, content=content, edited=True
        )
        assert updated is not None
        await self._turn_changed(found)
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
        await self._turn_changed(found)
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
        if target != current:
            await self._history_changed(chosen.session_id, chosen.turn_group)
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

    async def _earlier_turn_count(
        self, active: ActiveRoleplay, records: Sequence[MessageRecord]
    ) -> int:
        """The scene's turns older than `records` (0 when they start at its beginning), for
        lore that waits for the scene to reach a length (`delay`); 0 when none does."""
        if not records or not self._lore_waits(active):
            return 0
        trimmed = self._history_start.get(self._anchor_key(active)) is not None
        if not trimmed and len(records) < self._recent_limit(active):
            return 0
        key = (active.session.id, records[0].id)
        if key not in self._earlier_turns:
            if len(self._earlier_turns) >= CACHE_LIMIT:
                self._earlier_turns.clear()
            self._earlier_turns[key] = await repo.count_history_before(
                self.sessions, session_id=active.session.id, before_id=records[0].id
            )
        return self._earlier_turns[key]

    def _lore_waits(self, active: ActiveRoleplay) -> bool:
        """Some lore of the scene has a `delay` (the card books as the builder parsed them)."""
        books = [self.builder.card_lorebook(c) for c in active.cards.values() if c.character_book]
        if active.channel_lorebook is not None:
            books.append(active.channel_lorebook)
        return any(entry.delay > 0 for book in books for entry in book.entries)

    @staticmethod
    def _recent_limit(active: ActiveRoleplay) -> int:
        """The most turns a prompt of this scene can hold (each takes some tokens)."""
        return active.config.context_size // MIN_TURN_TOKENS + 2

    async def recent(self, active: ActiveRoleplay) -> list[MessageRecord]:
        """The turns the next prompt starts from, oldest first (from memory when it can)."""
        session_id = active.session.id
        history_start_id = self._history_start.get(self._anchor_key(active))
        limit = self._recent_limit(active)
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
        return records

    @staticmethod
    def _anchor_key(active: ActiveRoleplay) -> tuple[int, int, int]:
        config = active.config
        return (active.session.id, config.context_size, config.sampling.max_new_tokens)

    async def build_prompt(
        self,
        active: ActiveRoleplay,
        *,
        speaker: Actor | None,
        character: CharacterRecord | None = None,
        exclude_message_id: int | None = None,
        continue_message: MessageRecord | None = None,
        impersonate: bool = False,
        unprompted: bool = False,
    ) -> BuiltPrompt:
        """The prompt for `character`'s next reply (the lead's by default) to `speaker`, from
        stored history; caches new token counts. With `impersonate` it asks for `speaker`'s
        own next line instead (`/rp suggest`); `unprompted`: the character speaks up on its
        own, nobody spoke to it (no player line is made up: a note asks it to go on).

        `exclude_message_id` leaves a turn out (the reply being regenerated). Every player in
        the history window is known to the prompt with their persona; `{{user}}` in the cast's
        cards stands for the scene's starter, so the prompt's start does not change with who
        speaks (an engine's cached prefix stays valid).
        """
        # Chunked trimming: start where this roleplay's last prompt started, so its beginning
        # (and an engine's cached prefix) stays the same; a new context size starts afresh.
        anchor_key = self._anchor_key(active)
        history_start_id = self._history_start.get(anchor_key)
        records = await self.recent(active)
        history = [
            _history_message(
                m.role,
                m.display_name,
                m.content,
                m.token_count,
                m.id,
                author_id=m.author_id,
                guest=m.role == "assistant" and m.character_id is None,
            )
            for m in records
            if m.id != exclude_message_id and m.role in ("user", "assistant")
        ]
        guild = active.session.guild_id
        players = await self._players(records, guild)
        if speaker is None:
            speaker_name = next((m.name for m in reversed(history) if m.role == "user"), "user")
            persona_text = ""
        else:
            persona = await self.persona(speaker.user_id, guild)
            speaker_name = persona.name if persona else speaker.display_name
            persona_text = persona.description if persona else ""
            if all(p.author_id != speaker.user_id for p in players):
                players.append(ScenePlayer(speaker.user_id, speaker_name, persona_text))
        starter_name = await self._starter_name(active, players, guild)
        config = active.config
        earlier = await self._earlier_turn_count(active, records)
        author_note, author_note_depth = await self._author_note(active)
        options = PromptOptions(
            context_size=config.context_size,
            max_new_tokens=config.sampling.max_new_tokens,
            author_note=author_note,
            author_note_depth=author_note_depth,
            summary=active.session.summary,
            history_start_id=history_start_id,
            lorebook_budget=config.lorebook_budget,
            lorebook_recursion=config.lorebook_recursion,
            earlier_messages=earlier,
            unprompted_note=UNPROMPTED_NOTE if unprompted else "",
        )
        options.recall = await self._recall(active, records, history, history_start_id)
        count = self.builder.count_text
        options.pins = await self.pins.block(
            active.session.id, budget=config.pin_tokens, count=count
        )
        speaking = character or active.lead
        if config.player_facts:
            options.player_facts = await self.facts.block(
                session_id=active.session.id,
                guild_id=guild,
                history=history,
                character_id=speaking.id,
                character=speaking.name,
                players={p.author_id: p.name for p in players},
                budget=config.fact_tokens,
                count=self.builder.count_text,
            )
        scripts_run = ScriptRun()
        history, scripted = await self._prompt_view(
            active, speaking, history, user=starter_name or speaker_name, run=scripts_run
        )
        build = functools.partial(
            self.builder.build_async,
            card=active.cards[speaking.id],
            cast=[active.cards[c.id] for c in active.cast],
            history=history,
            user_name=speaker_name,
            players=players,
            scene_user_name=starter_name or speaker_name,
            channel_lorebook=active.channel_lorebook,
            options=options,
            continue_last=continue_message is not None,
            impersonate=impersonate,
            macro_context=self._macro_context(active, records),
        )
        try:
            built = await build()
        except PromptTooLarge:
            if options.recall is None and options.player_facts is None and options.pins is None:
                raise
            # Recall, facts and pins never cost a turn: the prompt goes without them.
            options.recall = options.player_facts = options.pins = None
            built = await build()
        if len(self._history_start) >= CACHE_LIMIT:
            self._history_start.clear()
        self._history_start[anchor_key] = built.history_start_id
        # For the inspector: what the summary covers (its tokens are the builder's count).
        built.report.summary_until_id = active.session.summary_until_id
        built.report.scripts_ran = scripts_run.changed
        built.report.scripts_failed = [f"{name}: {why}" for name, why in scripts_run.failed]
        built.report.summary_auto = active.session.summary_auto
        built.report.summary_stale = active.session.summary_stale
        facts = options.player_facts
        if facts is not None:
            built.report.facts_of = (facts.character, facts.player)
            built.report.player_facts = list(facts.notes)
            built.report.facts_about, built.report.facts_text = facts.player_id, facts.text
        if options.pins is not None:
            built.report.pin_tokens = count(options.pins.text)
            built.report.pins_left_out = options.pins.left_out
        counts = {k: v for k, v in built.new_token_counts.items() if k not in scripted}
        if counts:
            await repo.save_token_counts(self.sessions, counts=counts)
            self._history.counted(active.session.id, counts)
        return built

    async def _author_note(self, active: ActiveRoleplay) -> tuple[str, int]:
        """The author's note this turn and its depth: the scene's own (an imported chat's)
        where it has one, added on the turns its interval says; else the channel's."""
        session = active.session
        if session.author_note is None:
            return active.config.author_note, active.config.author_note_depth
        depth = session.author_note_depth
        depth = DEFAULT_NOTE_DEPTH if depth is None else depth
        interval = session.author_note_interval
        interval = DEFAULT_NOTE_INTERVAL if interval is None else interval
        turns = 0
        if interval > 1:  # only then does the count matter
            turns = await archives.player_turns(self.sessions, session_id=session.id)
        return (session.author_note if note_due(interval, turns) else ""), depth

    async def _recall(
        self,
        active: ActiveRoleplay,
        records: Sequence[MessageRecord],
        history: Sequence[HistoryMessage],
        history_start_id: int | None,
    ) -> RecallBlock | None:
        """The old turns the newest messages recall, when turns were left behind the window
        (`records` hold the one turn before the window's start, when there is one)."""
        budget = active.config.recall_tokens - RECALL_PIECE_TOKENS
        if self.recall is None or budget <= 0 or not records or not history:
            return None
        if history_start_id is not None and records[0].id < history_start_id:
            before_id = history_start_id
        elif history_start_id is None and len(records) >= self._recent_limit(active):
            before_id = records[0].id
        else:
            return None
        query = "\n".join(m.content for m in history[-RECALL_QUERY_MESSAGES:])
        return await self.recall.recall(
            session_id=active.session.id,
            query=query,
            before_id=before_id,
            budget=budget,
            count=self.builder.count_text,
        )

    async def _prompt_view(
        self,
        active: ActiveRoleplay,
        speaking: CharacterRecord,
        history: list[HistoryMessage],
        *,
        user: str,
        run: ScriptRun,
    ) -> tuple[list[HistoryMessage], set[int | None]]:
        """The history as the speaking character's prompt-only scripts leave it (the stored
        text stays; a message they empty is left out), and the ids of the messages they
        changed: those are counted as the prompt sees them, a count not to be stored."""
        scripts = active.scripts_of(speaking.id)
        if not scripts:
            return history, set()
        texts = await apply_to_history_async(
            scripts,
            [(m.role, m.content) for m in history],
            char=macro_name(active.cards[speaking.id]),
            user=user,
            run=run,
        )
        seen: list[HistoryMessage] = []
        changed: set[int | None] = set()
        for message, text in zip(history, texts, strict=True):
            if text == message.content:
                seen.append(message)
                continue
            changed.add(message.message_id)
            if text.strip():
                seen.append(dataclasses.replace(message, content=text, token_count=None))
        return seen, changed

    def _macro_context(
        self, active: ActiveRoleplay, records: Sequence[MessageRecord]
    ) -> MacroContext:
        """What SillyTavern's time and chance macros see: picks stable for the scene, the
        clock to the minute (so a card's `{{time}}` changes the prompt at most once a minute),
        the newest message and how long ago it came."""
        now = datetime.now().astimezone().replace(second=0, microsecond=0)
        last = records[-1] if records else None
        idle = None
        if last is not None:
            sent = (
                last.created_at if last.created_at.tzinfo else last.created_at.replace(tzinfo=UTC)
            )
            idle = timedelta(minutes=max(0, int((datetime.now(UTC) - sent).total_seconds() // 60)))
        return MacroContext(
            seed=active.session.id,
            now=now,
            last_message=last.content if last is not None else "",
            idle=idle,
            locale=MACRO_LOCALE,
        )

    async def _starter_name(
        self, active: ActiveRoleplay, players: Sequence[ScenePlayer], guild_id: int | None
    ) -> str | None:
        """The name `{{user}}` stands for in the cast's cards: the scene's starter's, so the
        prompt's start stays the same whoever speaks."""
        started_by = active.session.started_by
        known = next((p.name for p in players if p.author_id == started_by), None)
        if known is not None:
            return known
        persona = await self.persona(started_by, guild_id)
        return persona.name if persona else None

    async def stop_strings(
        self, active: ActiveRoleplay, *, for_player: bool = False
    ) -> tuple[str, ...]:
        """Where a reply in a scene of several speakers (a group, or guests of an imported
        chat), or any suggested player line (`for_player`), ends: a line starting with a name
        (the model would go on writing others' lines)."""
        records = await self.recent(active)
        guests = {
            m.display_name for m in records if m.role == "assistant" and m.character_id is None
        }
        if not active.is_group and not guests and not for_player:
            return ()
        names = {c.name for c in active.cast} | guests
        names |= {m.display_name for m in records if m.role == "user"}
        return tuple(f"\n{name}:" for name in sorted(names) if name.strip())

    async def _players(
        self, records: Sequence[MessageRecord], guild_id: int | None
    ) -> list[ScenePlayer]:
        """Everyone who speaks in `records`, in order of their first turn, with their persona."""
        names: dict[int, str] = {}
        for record in records:
            if record.role == "user" and record.author_id is not None:
                names.setdefault(record.author_id, record.display_name)
        players = []
        for author_id, name in names.items():
            persona = await self.persona(author_id, guild_id)
            if persona is None:
                players.append(ScenePlayer(author_id, name, ""))
            else:
                players.append(ScenePlayer(author_id, persona.name, persona.description))
        return players

    def _count(self, role: str, display_name: str, content: str, *, group: bool = False) -> int:
        """The tokens a turn takes in the prompt: stored with it, so no prompt counts it again."""
        message = _history_message(role, display_name, content)
        return self.builder.count_message(message, group=group)

    # --- storing replies ----------------------------------------------------------------------

    async def store_reply(
        self,
        active: ActiveRoleplay,
        text: str,
        *,
        character: CharacterRecord | None = None,
        regenerate_of: int | None = None,
        continue_of: MessageRecord | None = None,
        discord_message_ids: Sequence[int] | None = None,
    ) -> MessageRecord:
        """Store a finished reply of `character` (the lead by default): a new turn, a new
        alternative, or the continued text; tried again as a player's line is."""
        store = functools.partial(
            self._store_reply,
            active,
            text,
            character=character,
            regenerate_of=regenerate_of,
            continue_of=continue_of,
            discord_message_ids=discord_message_ids,
        )
        return await retrying(store, self.patience)

    async def _store_reply(
        self,
        active: ActiveRoleplay,
        text: str,
        *,
        character: CharacterRecord | None,
        regenerate_of: int | None,
        continue_of: MessageRecord | None,
        discord_message_ids: Sequence[int] | None,
    ) -> MessageRecord:
        ids = list(discord_message_ids or ())
        speaking = character or active.lead
        name = speaking.name
        group = active.is_group
        session_id = active.session.id
        if continue_of is not None:
            content = continue_of.content + text
            updated = await repo.update_message(
                self.sessions,
                message_id=continue_of.id,
                content=content,
                token_count=self._count(
                    "assistant", continue_of.display_name, content, group=group
                ),
                discord_message_ids=ids or None,
            )
            self._history.changed(session_id)
            if updated is None:
                raise NotFound("that reply is gone", key="error.not_found")
            if self.recall is not None:
                await self.recall.turns_changed(session_id, updated.id)
            return updated
        if regenerate_of is not None:
            alternative = await repo.add_alternative(
                self.sessions,
                message_id=regenerate_of,
                content=text,
                token_count=self._count("assistant", name, text, group=group),
                discord_message_ids=ids,
            )
            self._history.changed(session_id)
            if self.recall is not None:
                self.recall.turn_stored(session_id)
            return alternative
        turn = repo.NewMessage(
            session_id=session_id,
            role="assistant",
            content=text,
            display_name=name,
            character_id=speaking.id,
            token_count=self._count("assistant", name, text, group=group),
            discord_message_ids=tuple(ids),
        )
        stored = await self._turns.submit(turn)
        self._history.appended(stored)
        if self.recall is not None:
            self.recall.turn_stored(stored.session_id)
        return stored

    async def drop_reply(self, stored: MessageRecord) -> None:
        """Take a stored reply out of the story (it never reached the screen)."""
        await repo.delete_messages(self.sessions, message_ids=[stored.id])
        await self._turn_changed(stored)

    async def drop_alternative(self, stored: MessageRecord, *, back_to: MessageRecord) -> None:
        """Take a new alternative out of its turn; `back_to` is chosen again."""
        await repo.delete_messages(self.sessions, message_ids=[stored.id])
        await repo.choose_alternative(self.sessions, message_id=back_to.id)
        await self._turn_changed(stored)

    async def revert_continuation(self, before: MessageRecord) -> None:
        """Cut a continued reply back to `before`, its text before the continuation."""
        await repo.update_message(
            self.sessions,
            message_id=before.id,
            content=before.content,
            token_count=before.token_count,
        )
        await self._turn_changed(before)

    async def shown_in(self, discord_message_id: int) -> MessageRecord | None:
        """The stored turn that Discord message `discord_message_id` shows, if any."""
        return await repo.find_by_discord_id(self.sessions, discord_message_id=discord_message_id)

    async def attach_discord_ids(self, message_id: int, ids: Sequence[int]) -> None:
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
    *,
    author_id: int | None = None,
    guest: bool = False,
) -> HistoryMessage:
    """A stored turn as the prompt builder sees it."""
    return HistoryMessage(
        role="assistant" if role == "assistant" else "user",
        name=display_name or ("" if role == "assistant" else "user"),
        content=content,
        token_count=token_count,
        message_id=message_id,
        author_id=author_id,
        guest=guest,
    )
