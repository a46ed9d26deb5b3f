"""A channel's scenes over time: earlier scenes reopened, branches from any message, chats
moved in and out as SillyTavern chat files, and archived scenes forgotten when the server says.

The rules of who may do what are the same as for starting a scene (a new running scene replaces
the current one): see `Turns.admit_start`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from synatra_bot.errors import NotFound, PermissionDenied
from synatra_bot.prompt.st_chat import (
    DEFAULT_NOTE_DEPTH,
    DEFAULT_NOTE_INTERVAL,
    AuthorNote,
    ChatFile,
    ChatLine,
    parse_chat,
    render_chat,
)
from synatra_bot.roleplay.characters import can_use, names_of, nsfw_allowed
from synatra_bot.roleplay.config import ChannelConfig, scene_quota
from synatra_bot.roleplay.core import RoleplayCore
from synatra_bot.roleplay.rules import is_starter_or_moderator, require_voice
from synatra_bot.roleplay.scheduler import Scheduler
from synatra_bot.roleplay.turns import Turns
from synatra_bot.roleplay.types import Actor, Place
from synatra_bot.storage import archives
from synatra_bot.storage import repository as repo
from synatra_bot.storage.archives import SceneSummary
from synatra_bot.storage.records import CharacterRecord, SessionRecord

#: Scenes `/rp sessions` lists.
SCENES_LISTED = 25
#: Characters whose names contain a speaker's name that an import looks through for it.
NAME_MATCHES = 25
#: Speakers of one chat looked up by name at most (a chat may name thousands; the rest, and
#: every one after the cast is full, are guests).
SPEAKERS_LOOKED_UP = 32


@dataclass(frozen=True, slots=True)
class Imported:
    session: SessionRecord
    character: CharacterRecord
    turns: int
    #: The scene's cast in order (the chosen character first, then those the chat named).
    cast: tuple[CharacterRecord, ...] = ()
    #: The chat's named speakers kept as guests, in order of their first line.
    guests: tuple[str, ...] = ()


class Archive:
    """Earlier scenes, branches and chat files, for any front end."""

    def __init__(self, turns: Turns) -> None:
        self.turns = turns
        self.core: RoleplayCore = turns.core
        self.scheduler: Scheduler = turns.scheduler

    async def scenes(self, place: Place) -> list[SceneSummary]:
        """This channel's scenes, newest first (the running one marked)."""
        return await archives.channel_scenes(
            self.core.sessions, channel_id=place.channel_id, limit=SCENES_LISTED
        )

    async def resume(self, actor: Actor, place: Place, session_id: int) -> SessionRecord:
        """Reopen an earlier scene of this channel: its starter or a moderator, and only where
        a new scene could start (nobody else's scene is running); in a DM only while its user
        may still use every character of it (one who left a server loses its characters); then
        the gate of every new scene (`Turns.admit_start`: enabled channel, rate limit)."""
        require_voice(actor)
        found = await repo.get_session(self.core.sessions, session_id=session_id)
        if found is None or found.channel_id != place.channel_id:
            raise NotFound("no such scene here", key="error.no_scene")
        if not is_starter_or_moderator(actor, found):
            raise PermissionDenied("only who started it or a moderator", key="error.starter_only")
        if place.dm:
            for member in await repo.session_cast(self.core.sessions, session_id=session_id):
                character = await repo.get_character(
                    self.core.sessions, character_id=member.character_id
                )
                if character is not None and not can_use(actor, character):
                    raise PermissionDenied(
                        "the character is no longer available",
                        key="error.character_unavailable",
                        name=character.name,
                    )
        await self.turns.admit_start(actor, place)  # the gate of every new scene
        await self.turns.scene_changing(place, reason="an earlier scene resumed")
        reopened = await archives.reopen_scene(
            self.core.sessions, channel_id=place.channel_id, session_id=session_id
        )
        self.core.forget(place.channel_id)
        await self.prune(place)
        return reopened

    async def branch(self, actor: Actor, place: Place, message_id: int) -> SessionRecord:
        """A new scene whose history is this channel's scene up to `message_id` (a stored turn
        id); the scene it came from stays in the archive. Whoever branches owns the branch.
        It passes the gate of every new scene (`Turns.admit_start`: a branch is one turn), and
        its copies must fit the member's quota of imported and branched scenes (checked before
        the running reply is stopped for it)."""
        require_voice(actor)
        message = await self.core.get_message(message_id)
        source = None
        if message is not None and not message.deleted:
            source = await repo.get_session(self.core.sessions, session_id=message.session_id)
        if source is None or source.channel_id != place.channel_id:
            raise NotFound("that message is not part of a scene here", key="error.no_scene")
        if source.ended_at is not None and not is_starter_or_moderator(actor, source):
            # An archived scene is reopened, by copy or not, by its starter or a moderator.
            raise PermissionDenied("only who started it or a moderator", key="error.starter_only")
        await self.turns.admit_start(actor, place)  # the gate of every new scene
        quota = await self.quota(source.guild_id)
        await archives.check_scene_room(
            self.core.sessions,
            quota,
            started_by=actor.user_id,
            guild_id=source.guild_id,
            adding=await archives.branch_size(self.core.sessions, message_id=message_id),
        )
        await self.turns.scene_changing(place, reason="a branch started")
        branch = await archives.branch_scene(
            self.core.sessions, message_id=message_id, started_by=actor.user_id, quota=quota
        )
        self.core.forget(place.channel_id)
        await self.prune(place)
        return branch

    async def branch_at(self, actor: Actor, place: Place, discord_message_id: int) -> SessionRecord:
        """`branch` from the turn a Discord message shows."""
        found = await repo.find_by_discord_id(
            self.core.sessions, discord_message_id=discord_message_id
        )
        if found is None:
            raise NotFound("that message is not part of a scene here", key="error.no_scene")
        return await self.branch(actor, place, found.id)

    async def quota(self, guild_id: int | None) -> archives.SceneQuota:
        """What one member's imported and branched scenes may hold in `guild_id` (None:
        outside servers, the defaults)."""
        guild = None
        if guild_id is not None:
            guild = await repo.get_guild_settings(self.core.sessions, guild_id=guild_id)
        rows, megabytes = scene_quota(guild)
        return archives.SceneQuota(rows=rows, bytes=megabytes * 1024 * 1024)

    async def prune(self, place: Place) -> int:
        """Forget the server's scenes archived longer than its moderators keep them."""
        if place.dm:
            return 0
        guild = await repo.get_guild_settings(self.core.sessions, guild_id=place.guild_id)
        days = guild.archive_keep_days
        if days is None:
            return 0
        cutoff = datetime.now(UTC) - timedelta(days=days)
        return await archives.forget_archived(
            self.core.sessions, guild_id=place.guild_id, ended_before=cutoff
        )

    # --- SillyTavern chat files ---------------------------------------------------------------

    async def export(self, place: Place) -> tuple[str, bytes]:
        """The running scene as a SillyTavern chat file: its file name and bytes. A scene with
        several speaking characters (its cast, or guests of an imported chat) is written as
        SillyTavern writes group chats; the author's note in effect goes in `chat_metadata`."""
        active = await self.core.require_active(place)
        session = active.session
        turns = await archives.scene_turns(self.core.sessions, session_id=session.id)
        starter = await self.core.persona(session.started_by, session.guild_id)
        user_names = [m.display_name for m, _ in turns if m.role == "user"]
        user_name = starter.name if starter else (user_names[0] if user_names else "User")
        lines = []
        for chosen, options in turns:
            swipes = tuple(m.content for m in options) if len(options) > 1 else ()
            reasoning = tuple(m.reasoning or "" for m in options) if swipes else ()
            lines.append(
                ChatLine(
                    name=chosen.display_name or active.lead.name,
                    is_user=chosen.role == "user",
                    text=chosen.content,
                    swipes=swipes,
                    swipe_id=next(i for i, m in enumerate(options) if m.chosen) if swipes else 0,
                    sent_at=_aware(chosen.created_at),
                    is_system=chosen.role == "system",
                    reasoning=chosen.reasoning or "",
                    swipe_reasoning=reasoning,
                )
            )
        speakers = {line.name for line in lines if not line.is_user and not line.is_system}
        chat = ChatFile(
            user_name=user_name,
            character_name=active.lead.name,
            created_at=_aware(session.started_at),
            lines=tuple(lines),
            group=active.is_group or bool(speakers - {active.lead.name}),
            author_note=_note_in_effect(session, active.config),
        )
        day = session.started_at.strftime("%Y-%m-%d")
        data = await asyncio.to_thread(render_chat, chat)
        return f"{active.lead.name} - {day} - scene {session.id}.jsonl", data

    async def import_chat(
        self, actor: Actor, place: Place, *, data: bytes, filename: str, character_id: int
    ) -> Imported:
        """Start a scene here that continues a SillyTavern chat, `character` leading it.

        A chat with one speaking character has `character` speak all of its lines. In a chat
        with several (a group chat), `character` speaks the lines under its own name (or the
        chat's character name) and each other speaker is matched by name to a character the
        importer may use here, which joins the cast (up to the channel's cast limit); a
        speaker matched to none stays a guest of the scene: its lines are kept under its name.
        The chat's own author's note becomes the scene's. The file is read whole before
        anything is stored: a malformed one stores nothing. The caller has admitted the start
        (`Turns.admit_start`)."""
        # Reading a large file takes a while: it happens on a worker thread, never the loop.
        chat = await asyncio.to_thread(parse_chat, data, filename=filename)
        config = await self.core.config_for(place, user_id=actor.user_id)
        character = await self.core.characters.for_use(
            actor, character_id, place=place, nsfw_policy=config.nsfw_policy
        )
        speakers = await self._speakers(actor, place, chat, character, config)
        now = self.core.now()
        turns = await asyncio.to_thread(
            lambda: [self._turn(actor, speakers, line, now) for line in chat.lines]
        )
        guild_id = None if place.dm else place.guild_id
        quota = await self.quota(guild_id)
        await archives.check_scene_room(
            self.core.sessions,
            quota,
            started_by=actor.user_id,
            guild_id=guild_id,
            adding=archives.import_size(turns),
        )
        # The characters the chat brings in, in order of their first line.
        joined = {c.id: c for c in speakers.values() if c is not None and c.id != character.id}
        note = chat.author_note
        await self.turns.scene_changing(place, reason="a chat was imported")
        session = await archives.import_scene(
            self.core.sessions,
            guild_id=guild_id,
            channel_id=place.channel_id,
            parent_channel_id=place.parent_channel_id,
            character_id=character.id,
            started_by=actor.user_id,
            turns=turns,
            quota=quota,
            cast=list(joined),
            note=None if note is None else archives.SceneNote(note.text, note.depth, note.interval),
        )
        self.core.forget(place.channel_id)
        await self.prune(place)
        return Imported(
            session,
            character,
            len(chat.lines),
            cast=(character, *joined.values()),
            guests=tuple(n for n, found in speakers.items() if found is None and n.strip()),
        )

    async def _speakers(
        self,
        actor: Actor,
        place: Place,
        chat: ChatFile,
        lead: CharacterRecord,
        config: ChannelConfig,
    ) -> dict[str, CharacterRecord | None]:
        """Who speaks each character line of `chat`: a character, or None for a guest. Names
        are looked up until the cast is full (at most `SPEAKERS_LOOKED_UP` of them)."""
        names = list(
            dict.fromkeys(
                line.name for line in chat.lines if not line.is_user and not line.is_system
            )
        )
        if len(names) <= 1:
            return {name: lead for name in names}
        own = {_folded(n) for n in names_of(lead)}
        if not chat.group and chat.character_name:
            own.add(_folded(chat.character_name))
        speakers: dict[str, CharacterRecord | None] = {}
        cast = {lead.id}
        looked_up = 0
        for name in names:
            if _folded(name) in own:
                speakers[name] = lead
                continue
            found = None
            if looked_up < SPEAKERS_LOOKED_UP and len(cast) < config.cast_limit:
                looked_up += 1
                found = await self._character_named(actor, place, name, config)
            if found is not None:
                cast.add(found.id)
            speakers[name] = found
        return speakers

    async def _character_named(
        self, actor: Actor, place: Place, name: str, config: ChannelConfig
    ) -> CharacterRecord | None:
        """The character named `name` that `actor` may use here (their own first, then the
        oldest), or None."""
        wanted = _folded(name)
        if not wanted:
            return None
        found = [
            c
            for c in await self.core.characters.search(actor, name.strip(), limit=NAME_MATCHES)
            if _folded(c.name) == wanted
            and can_use(actor, c)
            and (not c.nsfw or nsfw_allowed(config.nsfw_policy, place))
        ]
        found.sort(key=lambda c: (c.owner_id != actor.user_id, c.id))
        return found[0] if found else None

    @staticmethod
    def _turn(
        actor: Actor,
        speakers: Mapping[str, CharacterRecord | None],
        line: ChatLine,
        now: datetime,
    ) -> archives.ImportedTurn:
        """A chat line as a stored turn: the player's lines are the importer's, a character's
        its speaker's (a guest's under its own name, with no character); system lines (hidden
        or narration) are kept, never shown to the model. A date after `now` (the import)
        becomes `now`: the file says when its lines were written, not how long the scene here
        stays busy."""
        role = "system" if line.is_system else "user" if line.is_user else "assistant"
        alternatives = line.alternatives
        speaker = speakers.get(line.name) if role == "assistant" else None
        return archives.ImportedTurn(
            role=role,
            options=tuple(text for text, _ in alternatives),
            chosen=line.swipe_id if line.swipes else 0,
            author_id=actor.user_id if line.is_user else None,
            display_name=speaker.name if speaker is not None else line.name,
            character_id=speaker.id if speaker is not None else None,
            sent_at=None if line.sent_at is None else min(line.sent_at, now),
            reasonings=tuple(reasoning for _, reasoning in alternatives),
        )


def _folded(name: str) -> str:
    """A name as names are compared: case and surrounding spaces ignored."""
    return name.strip().casefold()


def _note_in_effect(session: SessionRecord, config: ChannelConfig) -> AuthorNote | None:
    """The scene's own author's note, else its channel's (None when neither has text)."""
    if session.author_note is not None:
        return AuthorNote(
            session.author_note,
            DEFAULT_NOTE_DEPTH if session.author_note_depth is None else session.author_note_depth,
            (
                DEFAULT_NOTE_INTERVAL
                if session.author_note_interval is None
                else session.author_note_interval
            ),
        )
    if config.author_note.strip():
        return AuthorNote(config.author_note, config.author_note_depth)
    return None


def _aware(moment: datetime) -> datetime:
    """SQLite hands back naive UTC times."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
