"""Model objects of the fake Discord and their API v10 payloads."""

from __future__ import annotations

import datetime
import itertools
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

DISCORD_EPOCH_MS = 1420070400000

# Permission bits used by the default scenario (Discord API v10).
ADD_REACTIONS = 1 << 6
ADMINISTRATOR = 1 << 3
MANAGE_GUILD = 1 << 5
VIEW_CHANNEL = 1 << 10
SEND_MESSAGES = 1 << 11
MANAGE_MESSAGES = 1 << 13
EMBED_LINKS = 1 << 14
ATTACH_FILES = 1 << 15
READ_MESSAGE_HISTORY = 1 << 16
MENTION_EVERYONE = 1 << 17
USE_EXTERNAL_EMOJIS = 1 << 18
MANAGE_WEBHOOKS = 1 << 29
USE_APPLICATION_COMMANDS = 1 << 31
MANAGE_THREADS = 1 << 34
CREATE_PUBLIC_THREADS = 1 << 35
SEND_MESSAGES_IN_THREADS = 1 << 38
ALL_PERMISSIONS = (1 << 51) - 1

# Names of the bits above, so refusals say which permission was missing.
PERMISSION_NAMES: tuple[tuple[int, str], ...] = (
    (ADD_REACTIONS, "ADD_REACTIONS"),
    (ADMINISTRATOR, "ADMINISTRATOR"),
    (MANAGE_GUILD, "MANAGE_GUILD"),
    (VIEW_CHANNEL, "VIEW_CHANNEL"),
    (SEND_MESSAGES, "SEND_MESSAGES"),
    (MANAGE_MESSAGES, "MANAGE_MESSAGES"),
    (EMBED_LINKS, "EMBED_LINKS"),
    (ATTACH_FILES, "ATTACH_FILES"),
    (READ_MESSAGE_HISTORY, "READ_MESSAGE_HISTORY"),
    (MENTION_EVERYONE, "MENTION_EVERYONE"),
    (USE_EXTERNAL_EMOJIS, "USE_EXTERNAL_EMOJIS"),
    (MANAGE_WEBHOOKS, "MANAGE_WEBHOOKS"),
    (USE_APPLICATION_COMMANDS, "USE_APPLICATION_COMMANDS"),
    (MANAGE_THREADS, "MANAGE_THREADS"),
    (CREATE_PUBLIC_THREADS, "CREATE_PUBLIC_THREADS"),
    (SEND_MESSAGES_IN_THREADS, "SEND_MESSAGES_IN_THREADS"),
)

EVERYONE_PERMISSIONS = (
    ADD_REACTIONS
    | VIEW_CHANNEL
    | SEND_MESSAGES
    | EMBED_LINKS
    | ATTACH_FILES
    | READ_MESSAGE_HISTORY
    | USE_EXTERNAL_EMOJIS
    | USE_APPLICATION_COMMANDS
    | CREATE_PUBLIC_THREADS
    | SEND_MESSAGES_IN_THREADS
)
BOT_PERMISSIONS = EVERYONE_PERMISSIONS | MANAGE_WEBHOOKS | MANAGE_MESSAGES | MANAGE_THREADS
# What Discord reports as ``app_permissions`` in a DM with the bot user.
BOT_DM_PERMISSIONS = ATTACH_FILES | EMBED_LINKS | MENTION_EVERYONE | USE_EXTERNAL_EMOJIS

EPHEMERAL_FLAG = 1 << 6
LOADING_FLAG = 1 << 7

TEXT_CHANNEL = 0
DM_CHANNEL = 1
PUBLIC_THREAD = 11
PRIVATE_THREAD = 12

# Permission overwrite target types.
ROLE_OVERWRITE = 0
MEMBER_OVERWRITE = 1

# Interaction context types (where a command was used).
GUILD_CONTEXT = 0
BOT_DM_CONTEXT = 1


def permission_names(bits: int) -> str:
    """``"SEND_MESSAGES | ATTACH_FILES"`` for known bits, hex for the rest."""
    names = [name for bit, name in PERMISSION_NAMES if bits & bit]
    unnamed = bits & ~sum(bit for bit, _ in PERMISSION_NAMES)
    if unnamed:
        names.append(f"{unnamed:#x}")
    return " | ".join(names)


def iso(ts: datetime.datetime) -> str:
    return ts.isoformat()


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class SnowflakeFactory:
    """Monotonic snowflakes (time based, so discord.py's created_at stays sensible)."""

    def __init__(self) -> None:
        self._last = 0
        self._counter = itertools.count()

    def __call__(self) -> int:
        ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
        value = (ms << 22) | (next(self._counter) & 0xFFF)
        if value <= self._last:
            value = self._last + 1
        self._last = value
        return value


@dataclass
class FakeUser:
    id: int
    username: str
    global_name: str | None = None
    bot: bool = False

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "username": self.username,
            "global_name": self.global_name,
            "discriminator": "0",
            "avatar": None,
            "bot": self.bot,
            "system": False,
            "public_flags": 0,
            "flags": 0,
            "banner": None,
            "accent_color": None,
            "avatar_decoration_data": None,
        }


@dataclass
class FakeRole:
    id: int
    guild_id: int
    name: str
    permissions: int = 0
    position: int = 0
    color: int = 0
    managed: bool = False

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "name": self.name,
            "color": self.color,
            "colors": {
                "primary_color": self.color,
                "secondary_color": None,
                "tertiary_color": None,
            },
            "hoist": False,
            "icon": None,
            "unicode_emoji": None,
            "position": self.position,
            "permissions": str(self.permissions),
            "managed": self.managed,
            "mentionable": False,
            "flags": 0,
        }


@dataclass
class FakeMember:
    user: FakeUser
    guild_id: int
    nick: str | None = None
    role_ids: list[int] = field(default_factory=list)
    locale: str = "ko"
    joined_at: datetime.datetime = field(default_factory=now)

    @property
    def id(self) -> int:
        return self.user.id

    @property
    def display_name(self) -> str:
        return self.nick or self.user.global_name or self.user.username

    def payload(self, *, with_user: bool = True, permissions: int | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {
            "nick": self.nick,
            "avatar": None,
            "banner": None,
            "roles": [str(r) for r in self.role_ids],
            "joined_at": iso(self.joined_at),
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "communication_disabled_until": None,
        }
        if with_user:
            data["user"] = self.user.payload()
        if permissions is not None:
            data["permissions"] = str(permissions)
        return data


@dataclass
class FakeAttachment:
    id: int
    filename: str
    data: bytes
    content_type: str | None
    url: str
    description: str | None = None

    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(self.id),
            "filename": self.filename,
            "size": len(self.data),
            "url": self.url,
            "proxy_url": self.url,
        }
        if self.content_type:
            data["content_type"] = self.content_type
        if self.description:
            data["description"] = self.description
        return data


@dataclass
class PermissionOverwrite:
    """A channel's allow/deny bits for one role (type 0) or one member (type 1)."""

    id: int
    type: int
    allow: int = 0
    deny: int = 0

    def apply(self, permissions: int) -> int:
        return (permissions & ~self.deny) | self.allow

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "type": self.type,
            "allow": str(self.allow),
            "deny": str(self.deny),
        }


@dataclass
class FakeChannel:
    """A guild text channel (type 0), a thread (type 11/12; ``parent_id`` set) or a DM
    with the bot (type 1; no guild, ``recipient`` set)."""

    id: int
    guild_id: int | None
    name: str
    type: int = TEXT_CHANNEL
    nsfw: bool = False
    topic: str | None = None
    position: int = 0
    parent_id: int | None = None
    owner_id: int | None = None
    recipient: FakeUser | None = None
    overwrites: list[PermissionOverwrite] = field(default_factory=list)
    #: Set by ``FakeDiscord.delete_channel``: requests naming it answer Unknown Channel.
    deleted: bool = False
    messages: list[FakeMessage] = field(default_factory=list, repr=False)
    edit_times: deque[float] = field(default_factory=deque, repr=False)

    @property
    def is_thread(self) -> bool:
        return self.type in (PUBLIC_THREAD, PRIVATE_THREAD, 10)

    @property
    def is_dm(self) -> bool:
        return self.type == DM_CHANNEL

    @property
    def visible_messages(self) -> list[FakeMessage]:
        return [m for m in self.messages if not m.deleted]

    def overwrite_for(self, target_type: int, target_id: int) -> PermissionOverwrite | None:
        return next(
            (o for o in self.overwrites if o.type == target_type and o.id == target_id), None
        )

    def payload(self, parent_nsfw: bool = False) -> dict[str, Any]:
        last = str(self.messages[-1].id) if self.messages else None
        if self.is_dm:
            assert self.recipient is not None
            return {
                "id": str(self.id),
                "type": self.type,
                "last_message_id": last,
                "flags": 0,
                "recipients": [self.recipient.payload()],
            }
        if self.is_thread:
            return {
                "id": str(self.id),
                "type": self.type,
                "guild_id": str(self.guild_id),
                "parent_id": str(self.parent_id),
                "owner_id": str(self.owner_id),
                "name": self.name,
                "nsfw": parent_nsfw,
                "last_message_id": last,
                "message_count": len(self.messages),
                "total_message_sent": len(self.messages),
                "member_count": 1,
                "rate_limit_per_user": 0,
                "flags": 0,
                "applied_tags": [],
                "thread_metadata": {
                    "archived": False,
                    "auto_archive_duration": 1440,
                    "archive_timestamp": iso(now()),
                    "locked": False,
                    "invitable": True,
                    "create_timestamp": iso(now()),
                },
            }
        return {
            "id": str(self.id),
            "type": self.type,
            "guild_id": str(self.guild_id),
            "name": self.name,
            "position": self.position,
            "permission_overwrites": [o.payload() for o in self.overwrites],
            "nsfw": self.nsfw,
            "topic": self.topic,
            "last_message_id": last,
            "rate_limit_per_user": 0,
            "parent_id": None,
            "flags": 0,
            "default_auto_archive_duration": 1440,
        }


@dataclass
class FakeGuild:
    id: int
    name: str
    owner_id: int
    preferred_locale: str = "ko"
    roles: dict[int, FakeRole] = field(default_factory=dict)
    members: dict[int, FakeMember] = field(default_factory=dict)
    channels: dict[int, FakeChannel] = field(default_factory=dict)
    threads: dict[int, FakeChannel] = field(default_factory=dict)
    joined_at: datetime.datetime = field(default_factory=now)

    @property
    def everyone_role(self) -> FakeRole:
        return self.roles[self.id]

    def permissions_of(self, member: FakeMember) -> int:
        """Guild-wide permissions from roles (owner and Administrator get everything)."""
        if member.id == self.owner_id:
            return ALL_PERMISSIONS
        perms = self.everyone_role.permissions
        for role_id in member.role_ids:
            role = self.roles.get(role_id)
            if role is not None:
                perms |= role.permissions
        if perms & ADMINISTRATOR:
            return ALL_PERMISSIONS
        return perms

    def permissions_in(self, channel: FakeChannel, member: FakeMember) -> int:
        """The member's permissions in ``channel`` after its overwrites, in Discord's order.

        Threads use their parent channel's overwrites. Without VIEW_CHANNEL the member has
        no permissions in the channel at all.
        """
        perms = self.permissions_of(member)
        if perms & ADMINISTRATOR:
            return perms  # owner or Administrator: overwrites do not apply
        source = (
            self.channels.get(channel.parent_id or 0, channel) if channel.is_thread else channel
        )
        everyone = source.overwrite_for(ROLE_OVERWRITE, self.id)
        if everyone is not None:
            perms = everyone.apply(perms)
        # All of the member's role overwrites count as one: deny everything, then allow.
        allow = deny = 0
        for role_id in member.role_ids:
            if role_id == self.id:
                continue  # @everyone was applied above
            overwrite = source.overwrite_for(ROLE_OVERWRITE, role_id)
            if overwrite is not None:
                allow |= overwrite.allow
                deny |= overwrite.deny
        perms = (perms & ~deny) | allow
        own = source.overwrite_for(MEMBER_OVERWRITE, member.id)
        if own is not None:
            perms = own.apply(perms)
        if not perms & VIEW_CHANNEL:
            return 0
        return perms

    def payload(self) -> dict[str, Any]:
        """The GUILD_CREATE payload (full guild with channels, threads, roles and members)."""
        return {
            **self.rest_payload(),
            "joined_at": iso(self.joined_at),
            "large": False,
            "unavailable": False,
            "member_count": len(self.members),
            "members": [m.payload() for m in self.members.values()],
            "channels": [c.payload() for c in self.channels.values()],
            "threads": [t.payload(parent_nsfw=self._parent_nsfw(t)) for t in self.threads.values()],
            "presences": [],
            "voice_states": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
        }

    def _parent_nsfw(self, thread: FakeChannel) -> bool:
        parent = self.channels.get(thread.parent_id or 0)
        return bool(parent and parent.nsfw)

    def rest_payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "name": self.name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "banner": None,
            "description": None,
            "owner_id": str(self.owner_id),
            "region": None,
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "roles": [r.payload() for r in self.roles.values()],
            "emojis": [],
            "stickers": [],
            "features": [],
            "mfa_level": 0,
            "application_id": None,
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "vanity_url_code": None,
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "preferred_locale": self.preferred_locale,
            "nsfw_level": 0,
            "premium_progress_bar_enabled": False,
            "max_members": 500000,
        }


@dataclass
class FakeWebhook:
    id: int
    token: str
    guild_id: int
    channel_id: int
    name: str
    application_id: int
    creator: FakeUser
    #: The avatar image as sent (a data URI), or None.
    avatar_data: str | None = None

    def payload(self) -> dict[str, Any]:
        avatar_hash = f"{abs(hash(self.avatar_data)):032x}"[:32] if self.avatar_data else None
        return {
            "id": str(self.id),
            "type": 1,
            "guild_id": str(self.guild_id),
            "channel_id": str(self.channel_id),
            "name": self.name,
            "avatar": avatar_hash,
            "token": self.token,
            "application_id": str(self.application_id),
            "user": self.creator.payload(),
        }


@dataclass
class FakeMessage:
    """One stored message; ``versions`` holds every state it had, oldest first."""

    id: int
    channel_id: int
    guild_id: int | None
    content: str = ""
    author: FakeUser | None = None
    member: FakeMember | None = None
    webhook_id: int | None = None
    username: str | None = None
    avatar_url: str | None = None
    embeds: list[dict[str, Any]] = field(default_factory=list)
    components: list[dict[str, Any]] = field(default_factory=list)
    attachments: list[FakeAttachment] = field(default_factory=list)
    allowed_mentions: dict[str, Any] | None = None
    mentions: list[FakeUser] = field(default_factory=list)
    flags: int = 0
    type: int = 0
    tts: bool = False
    application_id: int | None = None
    interaction_id: int | None = None
    interaction_user: FakeUser | None = None
    reference: dict[str, Any] | None = None
    created_at: datetime.datetime = field(default_factory=now)
    edited_at: datetime.datetime | None = None
    deleted: bool = False
    from_test: bool = False
    versions: list[dict[str, Any]] = field(default_factory=list)
    reactions: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.versions:
            self.versions.append(self.snapshot())

    def __getitem__(self, key: str) -> Any:
        return self.payload()[key]

    @property
    def edit_count(self) -> int:
        return len(self.versions) - 1

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & EPHEMERAL_FLAG)

    @property
    def author_name(self) -> str:
        """Webhook username, member display name or user name: what a reader sees."""
        if self.username is not None:
            return self.username
        if self.member is not None:
            return self.member.display_name
        return self.author.username if self.author else ""

    def snapshot(self) -> dict[str, Any]:
        return {
            "content": self.content,
            "embeds": list(self.embeds),
            "components": list(self.components),
            "attachments": [a.filename for a in self.attachments],
            "edited_at": self.edited_at,
        }

    def author_payload(self) -> dict[str, Any]:
        if self.webhook_id is not None:
            return {
                "id": str(self.webhook_id),
                "username": self.username or "webhook",
                "avatar": None,
                "discriminator": "0000",
                "global_name": None,
                "bot": True,
                "public_flags": 0,
            }
        assert self.author is not None
        return self.author.payload()

    def payload(self, *, with_member: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(self.id),
            "channel_id": str(self.channel_id),
            "author": self.author_payload(),
            "content": self.content,
            "timestamp": iso(self.created_at),
            "edited_timestamp": iso(self.edited_at) if self.edited_at else None,
            "tts": self.tts,
            "mention_everyone": False,
            "mentions": [u.payload() for u in self.mentions],
            "mention_roles": [],
            "mention_channels": [],
            "attachments": [a.payload() for a in self.attachments],
            "embeds": self.embeds,
            "components": self.components,
            "reactions": [],
            "pinned": False,
            "type": self.type,
            "flags": self.flags,
        }
        if self.guild_id is not None:  # DM messages carry no guild_id
            data["guild_id"] = str(self.guild_id)
        if self.webhook_id is not None:
            data["webhook_id"] = str(self.webhook_id)
        if self.application_id is not None:
            data["application_id"] = str(self.application_id)
        if self.interaction_id is not None and self.interaction_user is not None:
            data["interaction_metadata"] = {
                "id": str(self.interaction_id),
                "type": 2,
                "user": self.interaction_user.payload(),
                # A guild install used in the bot's DM is authorized by "guild" "0".
                "authorizing_integration_owners": {"0": str(self.guild_id or 0)},
            }
        if self.reference is not None:
            data["message_reference"] = self.reference
        if with_member and self.member is not None:
            data["member"] = self.member.payload(with_user=False)
        return data


def attachment_url(base_url: str, channel_id: int, attachment_id: int, filename: str) -> str:
    return f"{base_url}/attachments/{channel_id}/{attachment_id}/{quote(filename)}"


@dataclass
class RestCall:
    method: str
    path: str
    query: dict[str, str]
    json: Any
    files: list[tuple[str, bytes, str | None]] = field(default_factory=list)
    status: int = 0
    route: str | None = None


@dataclass
class InteractionRecord:
    """An interaction the test dispatched, with everything the bot answered."""

    id: int
    token: str
    type: int
    data: dict[str, Any]
    guild_id: int | None
    channel_id: int
    user: FakeUser
    #: The acting member; None for an interaction from a DM.
    member: FakeMember | None
    message: FakeMessage | None = None
    callback_type: int | None = None
    callback_data: dict[str, Any] | None = None
    original: FakeMessage | None = None
    followups: list[FakeMessage] = field(default_factory=list)
    choices: list[dict[str, Any]] | None = None
    modal: dict[str, Any] | None = None
    callbacks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def responded(self) -> bool:
        return self.callback_type is not None

    @property
    def deferred(self) -> bool:
        return self.callback_type in (5, 6)

    @property
    def ephemeral(self) -> bool:
        if self.original is not None:
            return self.original.ephemeral
        return bool((self.callback_data or {}).get("flags", 0) & EPHEMERAL_FLAG)

    @property
    def content(self) -> str | None:
        return self.original.content if self.original is not None else None

    @property
    def embeds(self) -> list[dict[str, Any]]:
        return self.original.embeds if self.original is not None else []

    @property
    def components(self) -> list[dict[str, Any]]:
        return self.original.components if self.original is not None else []

    @property
    def messages(self) -> list[FakeMessage]:
        """Original response (if any) followed by followups, without duplicates."""
        out = [self.original] if self.original is not None else []
        out.extend(m for m in self.followups if m is not self.original)
        return out
