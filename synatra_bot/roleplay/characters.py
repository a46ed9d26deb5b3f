"""Characters: create, import, edit, share and approve them, with ownership rules enforced;
and the personal lorebooks their owners link them to."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import Any

from synatra_bot.errors import CardError, NotFound, PermissionDenied
from synatra_bot.prompt.avatars import normalise_avatar
from synatra_bot.prompt.cards import (
    V3_FIELDS,
    CharacterCard,
    SpeechLevel,
    card_to_png,
    card_to_v3_json,
    creator_note,
    parse_card,
    split_stored_extensions,
    stored_extensions,
    v3_fields,
)
from synatra_bot.prompt.risum import character_book, read_module
from synatra_bot.roleplay.config import character_limit, character_megabytes
from synatra_bot.roleplay.types import Actor, Place
from synatra_bot.settings import DEFAULT_LOREBOOK_QUOTA_BYTES
from synatra_bot.storage import repository as repo
from synatra_bot.storage.records import CharacterRecord, LorebookRecord

VISIBILITIES = ("private", "guild")
MIB = 1024 * 1024
#: How many personal lorebooks one member may keep (the bytes they may take together are the
#: host's `LOREBOOK_QUOTA_BYTES`).
MAX_PERSONAL_LOREBOOKS = 50
#: A lorebook's name, as Discord's autocomplete can offer it.
MAX_LOREBOOK_NAME_CHARS = 100
#: The card extension naming the World Info book a character uses (SillyTavern's link).
WORLD_EXTENSION = "world"
#: The card attributes with a column of their own; the V3 ones are stored in `extensions`.
CARD_FIELDS = tuple(f.name for f in fields(CharacterCard) if f.name not in V3_FIELDS)


def card_from_record(record: CharacterRecord) -> CharacterCard:
    values: dict[str, Any] = {name: getattr(record, name) for name in CARD_FIELDS}
    values["speech_level"] = SpeechLevel(record.speech_level) if record.speech_level else None
    values["alternate_greetings"] = list(record.alternate_greetings)
    values["tags"] = list(record.tags)
    v3, values["extensions"] = split_stored_extensions(record.extensions)
    return CharacterCard(**values, **v3)


def columns_from_card(card: CharacterCard) -> dict[str, Any]:
    values: dict[str, Any] = {name: getattr(card, name) for name in CARD_FIELDS}
    values["speech_level"] = card.speech_level.value if card.speech_level else None
    values["extensions"] = stored_extensions(card)
    return values


def greetings_of(character: CharacterRecord) -> list[str]:
    """The greetings a new scene may open with: the first message, then the alternates."""
    return [g for g in [character.first_message, *character.alternate_greetings] if g.strip()]


def group_greetings_of(character: CharacterRecord) -> list[str]:
    """The greetings for joining a running scene (V3 `group_only_greetings`)."""
    greetings: list[str] = v3_fields(character.extensions)["group_only_greetings"]
    return [g for g in greetings if g.strip()]


def names_of(character: CharacterRecord) -> tuple[str, ...]:
    """What players call the character: its name, then its V3 `nickname` when it has one."""
    nickname: str = v3_fields(character.extensions)["nickname"].strip()
    names = [character.name]
    if nickname and nickname != character.name:
        names.append(nickname)
    return tuple(names)


def world_of(character: CharacterRecord) -> str:
    """The name of the lorebook the character's card links to ("" for none)."""
    name = character.extensions.get(WORLD_EXTENSION)
    return name.strip() if isinstance(name, str) else ""


def lorebook_name(book: dict[str, Any], fallback: str) -> str:
    """What a lorebook is called here: its own name, else `fallback`, one line, bounded."""
    for candidate in (book.get("name"), fallback):
        if isinstance(candidate, str) and (name := " ".join(candidate.split())):
            return name[:MAX_LOREBOOK_NAME_CHARS]
    return "lorebook"


def creator_notes_of(character: CharacterRecord, *, locale: str) -> str:
    """The creator's notes in the language of `locale` where the card has them (V3
    `creator_notes_multilingual`), else its English or only notes."""
    notes: dict[str, str] = v3_fields(character.extensions)["creator_notes_multilingual"]
    return creator_note(character.creator_notes, notes, locale)


def can_manage(actor: Actor, character: CharacterRecord) -> bool:
    """Owners manage their characters; moderators manage the shared ones of their own server.

    A private character stays its owner's alone: not even a moderator edits, exports or
    deletes it (moderators stop its roleplays with `/rp stop` instead)."""
    if character.owner_id == actor.user_id:
        return True
    return actor.is_moderator and is_shared_in(character, actor.guild_id)


def is_shared_in(character: CharacterRecord, guild_id: int | None) -> bool:
    """Whether `character` is shared with the server `guild_id`. "No server" (a DM) is never a
    server anything is shared with."""
    return (
        character.visibility == "guild"
        and character.guild_id is not None
        and character.guild_id == guild_id
    )


def can_use(actor: Actor, character: CharacterRecord) -> bool:
    """Owners use their characters: in a server those made there or in a DM, in a DM all of
    them. Others only what is shared with this server (in a DM: a server they are a member
    of) and not waiting for (or refused) approval."""
    if character.owner_id == actor.user_id:
        return actor.guild_id is None or character.guild_id in (None, actor.guild_id)
    servers = (actor.guild_id,) if actor.guild_id is not None else actor.member_of
    shared = any(is_shared_in(character, guild_id) for guild_id in servers)
    return shared and character.approval in ("none", "approved")


def nsfw_allowed(policy: str, place: Place) -> bool:
    """Whether an NSFW character may play in `place` under the server's policy."""
    if policy == "allowed":
        return True
    return policy == "age_restricted" and place.age_restricted


def require_nsfw_allowed(character: CharacterRecord, policy: str, place: Place) -> None:
    """Refuse an NSFW character where the server's policy does not allow one."""
    if character.nsfw and not nsfw_allowed(policy, place):
        if place.dm:
            raise PermissionDenied(
                "NSFW characters play in DMs only for users who turned them on",
                key="error.nsfw_dm",
            )
        raise PermissionDenied(
            "NSFW characters play only in age-restricted channels", key="error.nsfw_channel"
        )


class CharacterService:
    """Character operations for one database, enforcing who may do what."""

    def __init__(
        self,
        sessions: repo.Sessions,
        *,
        max_card_bytes: int,
        lorebook_quota_bytes: int = DEFAULT_LOREBOOK_QUOTA_BYTES,
    ) -> None:
        self._sessions = sessions
        self._max_card_bytes = max_card_bytes
        self._lorebook_quota_bytes = lorebook_quota_bytes
        self._listeners: list[Callable[[], None]] = []

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call `listener` after any character is edited or deleted (to drop cached copies)."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

    async def create(
        self, actor: Actor, card: CharacterCard, *, visibility: str = "private"
    ) -> CharacterRecord:
        """Store a new character of `actor`'s, or LimitReached when they already have as many
        here as the server allows (outside servers: the default limit)."""
        if not card.name.strip():
            raise CardError("a character needs a name", reason="missing name")
        approval = await self._approval_for(actor, visibility)
        guild = (
            await repo.get_guild_settings(self._sessions, guild_id=actor.guild_id)
            if actor.guild_id is not None
            else None
        )
        return await repo.create_character(
            self._sessions,
            owner_id=actor.user_id,
            guild_id=actor.guild_id,
            max_owned=character_limit(guild),
            max_bytes=character_megabytes(guild) * MIB,
            visibility=visibility,
            approval=approval,
            **columns_from_card(card),
        )

    async def import_file(
        self, actor: Actor, data: bytes, *, filename: str, visibility: str = "private"
    ) -> CharacterRecord:
        if len(data) > self._max_card_bytes:
            raise CardError(
                f"{filename} is {len(data)} bytes; the limit is {self._max_card_bytes}",
                key="error.card_too_large",
                size=len(data),
                limit=self._max_card_bytes,
            )
        # Off the event loop: a PNG card's image (a CHARX card's icon) is decoded and shrunk
        # for the avatar.
        card = await asyncio.to_thread(parse_card, data, filename=filename)
        return await self.create(actor, card, visibility=visibility)

    async def import_module(
        self, actor: Actor, character_id: int, data: bytes
    ) -> tuple[CharacterRecord, int, int]:
        """Add a RisuAI module's scripts and lore entries to a character `actor` manages,
        after the card's own (RisuAI runs a card's scripts before its modules'); those the
        card already holds are not added again. The character and how many of each were added;
        CardError where the module cannot be read or holds neither."""
        record = await self.managed(actor, character_id)  # refuse before reading anything
        if len(data) > self._max_card_bytes:
            raise CardError(
                f"module is {len(data)} bytes; the limit is {self._max_card_bytes}",
                key="error.card_too_large",
                size=len(data),
                limit=self._max_card_bytes,
            )
        module = await asyncio.to_thread(read_module, data)
        book = character_book(module)
        if not module.scripts and book is None:
            reason = "it holds no scripts and no lorebook"
            raise CardError(f"RisuAI module: {reason}", key="error.risum", reason=reason)
        extensions = dict(record.extensions)
        risu = extensions.get("risuai")
        risu = dict(risu) if isinstance(risu, dict) else {}
        scripts = risu.get("customScripts")
        scripts = list(scripts) if isinstance(scripts, list) else []
        new_scripts = [s for s in module.scripts if s not in scripts]
        risu["customScripts"] = scripts + new_scripts
        extensions["risuai"] = risu
        changes: dict[str, Any] = {"extensions": extensions}
        new_entries: list[dict[str, Any]] = []
        if book is not None:
            current = dict(record.character_book or {"entries": [], "extensions": {}})
            entries = current.get("entries")
            entries = list(entries) if isinstance(entries, list) else []
            new_entries = [e for e in book["entries"] if e not in entries]
            current["entries"] = entries + new_entries
            changes["character_book"] = current
        updated = await self.edit(actor, character_id, **changes)
        return updated, len(new_scripts), len(new_entries)

    async def set_avatar(self, actor: Actor, character_id: int, image: bytes) -> CharacterRecord:
        """Make `image` the character's avatar: checked, shrunk and stored as PNG (avatars.py),
        or ImageRejected and nothing stored."""
        await self.managed(actor, character_id)  # refuse before decoding anything
        avatar = await asyncio.to_thread(normalise_avatar, image)
        return await self.edit(actor, character_id, avatar=avatar)

    async def _approval_for(self, actor: Actor, visibility: str) -> str:
        if visibility not in VISIBILITIES:
            raise ValueError(f"visibility must be one of {VISIBILITIES}")
        if visibility == "private":
            return "none"
        if actor.guild_id is None:
            raise PermissionDenied("sharing needs a server", key="error.share_needs_server")
        guild = await repo.get_guild_settings(self._sessions, guild_id=actor.guild_id)
        return "pending" if guild.approval_required and not actor.is_moderator else "approved"

    async def get(self, character_id: int) -> CharacterRecord:
        record = await repo.get_character(self._sessions, character_id=character_id)
        if record is None:
            raise NotFound(f"character {character_id} does not exist", key="error.no_character")
        return record

    async def for_use(
        self, actor: Actor, character_id: int, *, place: Place | None, nsfw_policy: str
    ) -> CharacterRecord:
        """A character `actor` may start here, or a clear refusal."""
        record = await self.get(character_id)
        if not can_use(actor, record):
            raise NotFound(f"character {character_id} is not available", key="error.no_character")
        if place is not None:
            require_nsfw_allowed(record, nsfw_policy, place)
        return record

    async def search(self, actor: Actor, text: str, *, limit: int = 25) -> list[CharacterRecord]:
        return await repo.visible_characters(
            self._sessions,
            guild_id=actor.guild_id,
            user_id=actor.user_id,
            name_prefix=text,
            limit=limit,
            member_of=actor.member_of,
        )

    async def managed(self, actor: Actor, character_id: int) -> CharacterRecord:
        record = await self.get(character_id)
        if not can_use(actor, record) and not can_manage(actor, record):
            raise NotFound(f"character {character_id} is not available", key="error.no_character")
        if not can_manage(actor, record):
            raise PermissionDenied(
                "only the owner or a moderator may change this character", key="error.not_owner"
            )
        return record

    async def edit(self, actor: Actor, character_id: int, **changes: Any) -> CharacterRecord:
        record = await self.managed(actor, character_id)
        if "visibility" in changes and changes["visibility"] != record.visibility:
            changes["approval"] = await self._approval_for(actor, changes["visibility"])
            if changes["visibility"] == "guild":
                # Sharing binds the character to the server it is shared in (one made in a
                # DM has none until then).
                changes["guild_id"] = actor.guild_id
        elif record.visibility == "guild" and not actor.is_moderator:
            # A changed shared character goes back for approval where the server asks for it.
            changes["approval"] = await self._approval_for(actor, "guild")
        if "speech_level" in changes and isinstance(changes["speech_level"], SpeechLevel):
            changes["speech_level"] = changes["speech_level"].value
        guild_id = changes.get("guild_id", record.guild_id)
        guild = (
            await repo.get_guild_settings(self._sessions, guild_id=guild_id)
            if guild_id is not None
            else None
        )
        updated = await repo.update_character(
            self._sessions,
            character_id=character_id,
            max_bytes=character_megabytes(guild) * MIB,
            **changes,
        )
        self._changed()
        if updated is None:
            raise NotFound(f"character {character_id} does not exist", key="error.no_character")
        return updated

    async def delete(self, actor: Actor, character_id: int) -> CharacterRecord:
        record = await self.managed(actor, character_id)
        await repo.delete_character(self._sessions, character_id=character_id)
        self._changed()
        return record

    async def export(self, actor: Actor, character_id: int, *, as_png: bool) -> tuple[str, bytes]:
        record = await self.managed(actor, character_id)
        card = card_from_record(record)
        if as_png:
            return f"{record.name}.png", card_to_png(card)
        return f"{record.name}.json", card_to_v3_json(card)

    async def review(self, actor: Actor, character_id: int, *, approve: bool) -> CharacterRecord:
        if not actor.is_moderator:
            raise PermissionDenied("only moderators review characters", key="error.moderator_only")
        record = await self.get(character_id)
        if not is_shared_in(record, actor.guild_id):
            # Private characters are their owner's alone: to a reviewer they do not exist.
            raise NotFound(f"character {character_id} is not available", key="error.no_character")
        updated = await repo.update_character(
            self._sessions,
            character_id=character_id,
            approval="approved" if approve else "rejected",
        )
        self._changed()
        assert updated is not None
        return updated

    async def pending(self, actor: Actor) -> list[CharacterRecord]:
        if not actor.is_moderator or actor.guild_id is None:
            raise PermissionDenied("only moderators review characters", key="error.moderator_only")
        return await repo.characters_awaiting_approval(self._sessions, guild_id=actor.guild_id)

    # --- personal lorebooks ----------------------------------------------------------------

    async def save_lorebook(
        self, actor: Actor, book: dict[str, Any], *, name: str
    ) -> LorebookRecord:
        """Keep `book` (character_book form, already checked) as the actor's lorebook `name`,
        replacing theirs of that name: characters linked to it use the new one at once."""
        record = await repo.save_lorebook(
            self._sessions,
            owner_id=actor.user_id,
            name=name,
            book={**book, "name": name},
            max_owned=MAX_PERSONAL_LOREBOOKS,
            max_bytes=self._lorebook_quota_bytes,
        )
        self._changed()
        return record

    async def owned(self, actor: Actor) -> list[CharacterRecord]:
        """The actor's own characters, wherever they made them."""
        return await repo.characters_owned_by(self._sessions, owner_id=actor.user_id)

    async def lorebooks(self, actor: Actor) -> list[LorebookRecord]:
        return await repo.lorebooks_of(self._sessions, owner_id=actor.user_id)

    async def lorebook(self, actor: Actor, name: str) -> LorebookRecord:
        found = await repo.named_lorebooks(self._sessions, [(actor.user_id, name)])
        record = found.get((actor.user_id, name))
        if record is None:
            raise NotFound(f"no lorebook named {name}", key="error.no_lorebook", name=name)
        return record

    async def delete_lorebook(self, actor: Actor, name: str) -> None:
        """Forget the actor's lorebook `name`; characters linked to it keep the link (and
        their card's own lorebook) until one of that name is imported again."""
        if not await repo.delete_lorebook(self._sessions, owner_id=actor.user_id, name=name):
            raise NotFound(f"no lorebook named {name}", key="error.no_lorebook", name=name)
        self._changed()

    async def link_lorebook(
        self, actor: Actor, character_id: int, name: str | None
    ) -> CharacterRecord:
        """Link the character to its owner's lorebook `name` (None: unlink), as SillyTavern
        links a card to a World Info book; only who may change the character may link it."""
        record = await self.managed(actor, character_id)
        extensions = dict(record.extensions)
        if name is None:
            extensions.pop(WORLD_EXTENSION, None)
        else:
            owner = (record.owner_id, name)
            if owner not in await repo.named_lorebooks(self._sessions, [owner]):
                raise NotFound(f"no lorebook named {name}", key="error.no_lorebook", name=name)
            extensions[WORLD_EXTENSION] = name
        return await self.edit(actor, character_id, extensions=extensions)

    async def linked_lorebooks(
        self, characters: Sequence[CharacterRecord]
    ) -> dict[int, dict[str, Any]]:
        """Character id -> the lorebook its card links to, for those whose owner has one of
        that name (one read for a whole cast)."""
        links = {c.id: (c.owner_id, world) for c in characters if (world := world_of(c))}
        found = await repo.named_lorebooks(self._sessions, links.values())
        return {cid: found[key].book for cid, key in links.items() if key in found}
