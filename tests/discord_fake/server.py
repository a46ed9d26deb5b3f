"""Loopback fake Discord: REST v10 and the gateway on one aiohttp server for discord.py."""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
import re
import secrets
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import BodyPartReader, WSMsgType, web

from .limits import (
    TEXT_INPUT_VALUE,
    ApiError,
    check_commands,
    check_message,
    check_modal,
    check_query,
    check_webhook_body,
)
from .state import (
    ATTACH_FILES,
    BOT_DM_CONTEXT,
    BOT_DM_PERMISSIONS,
    BOT_PERMISSIONS,
    DM_CHANNEL,
    EPHEMERAL_FLAG,
    EVERYONE_PERMISSIONS,
    GUILD_CONTEXT,
    LOADING_FLAG,
    MANAGE_GUILD,
    MANAGE_MESSAGES,
    MEMBER_OVERWRITE,
    PUBLIC_THREAD,
    ROLE_OVERWRITE,
    SEND_MESSAGES,
    SEND_MESSAGES_IN_THREADS,
    TEXT_CHANNEL,
    USE_APPLICATION_COMMANDS,
    VIEW_CHANNEL,
    FakeAttachment,
    FakeChannel,
    FakeGuild,
    FakeMember,
    FakeMessage,
    FakeRole,
    FakeUser,
    FakeWebhook,
    InteractionRecord,
    PermissionOverwrite,
    RestCall,
    SnowflakeFactory,
    attachment_url,
    now,
    permission_names,
)

API_PREFIX = "/api/v10"
HEARTBEAT_INTERVAL_MS = 41250
MENTION_RE = re.compile(r"<@!?(\d+)>")

Handler = Callable[["_Request"], Awaitable[web.Response]]


@dataclass
class RateLimitConfig:
    """Message edit limit per channel (thread messages count on the thread)."""

    enabled: bool = True
    edit_limit: int = 5
    edit_window: float = 5.0


@dataclass
class _ForcedLimit:
    method: str | None
    route: str | None
    remaining: int
    retry_after: float


@dataclass
class _Failure:
    method: str | None
    route: str | None
    #: Requests still to fail; None fails them until ``clear_failures()``.
    remaining: int | None
    status: int
    applied: bool


@dataclass
class _Request:
    raw: web.Request
    params: dict[str, str]
    route: str
    json: Any
    files: list[tuple[str, bytes, str | None]]
    call: RestCall

    @property
    def query(self) -> Any:
        return self.raw.query


@dataclass
class Scenario:
    """The default scenario: one guild with Korean members, channels and a thread."""

    guild: FakeGuild
    general: FakeChannel
    nsfw_channel: FakeChannel
    thread: FakeChannel
    moderator: FakeMember
    members: list[FakeMember]
    moderator_role: FakeRole
    owner: FakeMember


@dataclass
class _Session:
    session_id: str
    shard_id: int
    shard_count: int
    intents: int
    seq: int = 0
    history: deque[tuple[int, str]] = field(default_factory=lambda: deque(maxlen=20000))
    ws: web.WebSocketResponse | None = None
    pending: deque[str] = field(default_factory=deque)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def _without_default_localisations(item: dict[str, Any]) -> dict[str, Any]:
    """A command (option, choice) as Discord keeps it: a localisation identical to the default
    text is ignored, at every level of the command."""
    kept = dict(item)
    for text_field in ("name", "description"):
        localised = item.get(f"{text_field}_localizations")
        if isinstance(localised, dict):
            default = item.get(text_field)
            kept[f"{text_field}_localizations"] = {
                locale: text for locale, text in localised.items() if text != default
            }
    for nested in ("options", "choices"):
        if isinstance(item.get(nested), list):
            kept[nested] = [_without_default_localisations(inner) for inner in item[nested]]
    return kept


class FakeDiscord:
    """A Discord API v10 + gateway fake that the real discord.py client logs in to."""

    def __init__(self, *, shard_count: int = 1, bot_name: str = "시나트라") -> None:
        self.snowflake = SnowflakeFactory()
        self.shard_count = shard_count
        self.bot_user = FakeUser(self.snowflake(), bot_name, bot_name, bot=True)
        self.application_id = self.bot_user.id
        self.owner_user = FakeUser(self.snowflake(), "봇주인", "봇 주인")
        self.token = "fake-token"
        self.guilds: dict[int, FakeGuild] = {}
        self.channels: dict[int, FakeChannel] = {}
        #: The bot's DM channel with each user, by user id.
        self.dm_channels: dict[int, FakeChannel] = {}
        self.users: dict[int, FakeUser] = {self.bot_user.id: self.bot_user}
        self.messages: dict[int, FakeMessage] = {}
        self.attachments: dict[int, FakeAttachment] = {}
        self.webhooks: dict[int, FakeWebhook] = {}
        self.interactions: dict[str, InteractionRecord] = {}
        self.global_commands: dict[str, dict[str, Any]] = {}
        self.guild_commands: dict[int, dict[str, dict[str, Any]]] = {}
        self.calls: list[RestCall] = []
        self.unknown_routes: list[RestCall] = []
        self.rate_limits = RateLimitConfig()
        self.rate_limited: list[RestCall] = []
        #: REST calls answered with an injected 5xx (``fail_requests``).
        self.failed: list[RestCall] = []
        self.echo_bot_messages = True
        self.identify_count = 0
        self.resume_count = 0
        #: How many op 9 INVALID_SESSION (d=false) the gateway sent.
        self.invalid_session_count = 0
        self.intents: int | None = None
        self.scenario: Scenario | None = None
        self._forced: list[_ForcedLimit] = []
        self._failures: list[_Failure] = []
        self._gateway_open = asyncio.Event()
        self._gateway_open.set()
        self._sessions: dict[int, _Session] = {}
        self._sockets: set[web.WebSocketResponse] = set()
        self._last_dispatch: dict[int, int] = {}
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._runner: web.AppRunner | None = None
        self._routes: list[tuple[str, re.Pattern[str], str, Handler]] = []
        self.port = 0
        self._register_routes()

    # ------------------------------------------------------------------ lifecycle

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base(self) -> str:
        return self.base_url + API_PREFIX

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/gateway", self._gateway)
        app.router.add_get("/gateway/", self._gateway)
        app.router.add_get("/attachments/{channel_id}/{attachment_id}/{filename}", self._cdn)
        app.router.add_route("*", API_PREFIX + "/{tail:.*}", self._dispatch_rest)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        self._gateway_open.set()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for ws in list(self._sockets):
            await ws.close(code=1001, message=b"fake discord stopping")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeDiscord:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def install(self, monkeypatch: Any) -> None:
        """Point discord.py's REST base and default gateway at this fake (undone by monkeypatch)."""
        import discord.gateway
        import discord.http
        import yarl

        monkeypatch.setattr(discord.http.Route, "BASE", self.api_base)
        monkeypatch.setattr(
            discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(self.gateway_url + "/")
        )

    # ------------------------------------------------------------------ model helpers

    def add_guild(
        self,
        name: str = "시나트라 테스트 서버",
        *,
        owner: FakeUser | None = None,
        locale: str = "ko",
        everyone_permissions: int = EVERYONE_PERMISSIONS,
    ) -> FakeGuild:
        owner = owner or self.owner_user
        guild = FakeGuild(self.snowflake(), name, owner.id, preferred_locale=locale)
        guild.roles[guild.id] = FakeRole(guild.id, guild.id, "@everyone", everyone_permissions)
        bot_role = FakeRole(self.snowflake(), guild.id, self.bot_user.username, BOT_PERMISSIONS, 1)
        bot_role.managed = True
        guild.roles[bot_role.id] = bot_role
        self.guilds[guild.id] = guild
        self.users[owner.id] = owner
        guild.members[owner.id] = FakeMember(owner, guild.id, role_ids=[])
        guild.members[self.bot_user.id] = FakeMember(
            self.bot_user, guild.id, role_ids=[bot_role.id]
        )
        return guild

    def add_role(
        self, guild: FakeGuild, name: str, permissions: int = 0, *, position: int = 1
    ) -> FakeRole:
        role = FakeRole(self.snowflake(), guild.id, name, permissions, position)
        guild.roles[role.id] = role
        self._fire("GUILD_ROLE_CREATE", {"guild_id": str(guild.id), "role": role.payload()}, guild)
        return role

    def add_channel(
        self, guild: FakeGuild, name: str, *, nsfw: bool = False, topic: str | None = None
    ) -> FakeChannel:
        channel = FakeChannel(
            self.snowflake(), guild.id, name, TEXT_CHANNEL, nsfw, topic, len(guild.channels)
        )
        guild.channels[channel.id] = channel
        self.channels[channel.id] = channel
        self._fire("CHANNEL_CREATE", channel.payload(), guild)
        return channel

    def add_thread(
        self, parent: FakeChannel, name: str, *, owner: FakeMember | FakeUser | None = None
    ) -> FakeChannel:
        guild = self.guild_of(parent)
        owner_id = owner.id if owner is not None else self.bot_user.id
        thread = FakeChannel(
            self.snowflake(), guild.id, name, PUBLIC_THREAD, parent_id=parent.id, owner_id=owner_id
        )
        guild.threads[thread.id] = thread
        self.channels[thread.id] = thread
        payload = thread.payload(parent_nsfw=parent.nsfw)
        payload["newly_created"] = True
        self._fire("THREAD_CREATE", payload, guild)
        return thread

    def add_member(
        self,
        guild: FakeGuild,
        username: str,
        *,
        nick: str | None = None,
        global_name: str | None = None,
        roles: list[FakeRole] | None = None,
        locale: str = "ko",
        bot: bool = False,
    ) -> FakeMember:
        user = FakeUser(self.snowflake(), username, global_name, bot=bot)
        self.users[user.id] = user
        member = FakeMember(user, guild.id, nick, [r.id for r in roles or []], locale)
        guild.members[user.id] = member
        self._fire("GUILD_MEMBER_ADD", {**member.payload(), "guild_id": str(guild.id)}, guild)
        return member

    def remove_member(self, guild: FakeGuild, member: FakeMember) -> None:
        """``member`` leaves ``guild`` (or is kicked); sends GUILD_MEMBER_REMOVE."""
        del guild.members[member.id]
        payload = {"guild_id": str(guild.id), "user": member.user.payload()}
        self._fire("GUILD_MEMBER_REMOVE", payload, guild)

    def set_overwrite(
        self,
        channel: FakeChannel,
        target: FakeRole | FakeMember | FakeUser,
        *,
        allow: int = 0,
        deny: int = 0,
    ) -> PermissionOverwrite:
        """Set (replace) the channel's overwrite for a role or member; sends CHANNEL_UPDATE.

        ``guild.everyone_role`` targets @everyone. Threads have no overwrites of their own:
        set them on the parent channel.
        """
        guild = self._overwrite_guild(channel)
        if isinstance(target, FakeRole):
            if target.guild_id != guild.id:
                raise ValueError(f"role {target.name!r} is not in the channel's guild")
            kind = ROLE_OVERWRITE
        else:
            if target.id not in guild.members:
                raise ValueError(f"user {target.id} is not a member of the channel's guild")
            kind = MEMBER_OVERWRITE
        overwrite = PermissionOverwrite(target.id, kind, allow, deny)
        channel.overwrites = [
            o for o in channel.overwrites if (o.type, o.id) != (kind, target.id)
        ] + [overwrite]
        self._fire("CHANNEL_UPDATE", channel.payload(), guild)
        self._notify()
        return overwrite

    def remove_overwrite(
        self, channel: FakeChannel, target: FakeRole | FakeMember | FakeUser
    ) -> None:
        """Drop the channel's overwrite for a role or member; sends CHANNEL_UPDATE."""
        guild = self._overwrite_guild(channel)
        channel.overwrites = [o for o in channel.overwrites if o.id != target.id]
        self._fire("CHANNEL_UPDATE", channel.payload(), guild)
        self._notify()

    def _overwrite_guild(self, channel: FakeChannel) -> FakeGuild:
        if channel.guild_id is None:
            raise ValueError("DM channels have no permission overwrites")
        if channel.is_thread:
            raise ValueError("threads take their parent's overwrites: set them on the parent")
        return self.guilds[channel.guild_id]

    def delete_webhook(self, webhook: FakeWebhook) -> None:
        """A server admin deletes the webhook: executes and message edits on it answer 404
        Unknown Webhook (10015) and the gateway sends WEBHOOKS_UPDATE for its channel."""
        if self.webhooks.pop(webhook.id, None) is None:
            raise LookupError(f"webhook {webhook.id} does not exist (already deleted?)")
        self._webhooks_update(webhook)
        self._notify()

    def delete_channel_webhooks(self, channel: FakeChannel) -> list[FakeWebhook]:
        """Delete every webhook of ``channel`` (as an admin clearing Integrations); one
        WEBHOOKS_UPDATE for the channel. Returns the deleted webhooks."""
        gone = [w for w in self.webhooks.values() if w.channel_id == channel.id]
        for webhook in gone:
            del self.webhooks[webhook.id]
        if gone:
            self._webhooks_update(gone[0])
        self._notify()
        return gone

    def _webhooks_update(self, webhook: FakeWebhook) -> None:
        data = {"guild_id": str(webhook.guild_id), "channel_id": str(webhook.channel_id)}
        self._fire("WEBHOOKS_UPDATE", data, self.guilds.get(webhook.guild_id))

    def delete_channel(self, channel: FakeChannel) -> None:
        """A server admin deletes a channel or thread.

        Requests naming it answer 404 Unknown Channel (10003), its webhooks are gone (10015)
        and the gateway sends CHANNEL_DELETE (THREAD_DELETE for a thread). A channel's
        threads go with it without events of their own, as on Discord (discord.py drops
        them from its cache on CHANNEL_DELETE).
        """
        if channel.is_dm:
            raise ValueError("a DM channel cannot be deleted by a server admin")
        if self.channels.get(channel.id) is not channel:
            raise LookupError(f"channel {channel.id} does not exist (already deleted?)")
        guild = self.guild_of(channel)
        doomed = [channel]
        if not channel.is_thread:
            doomed += [t for t in guild.threads.values() if t.parent_id == channel.id]
        for gone in doomed:
            gone.deleted = True
            self.channels.pop(gone.id, None)
            guild.channels.pop(gone.id, None)
            guild.threads.pop(gone.id, None)
        for webhook in [w for w in self.webhooks.values() if w.channel_id == channel.id]:
            del self.webhooks[webhook.id]
        if channel.is_thread:
            data = {
                "id": str(channel.id),
                "guild_id": str(guild.id),
                "parent_id": str(channel.parent_id),
                "type": channel.type,
            }
            self._fire("THREAD_DELETE", data, guild)
        else:
            self._fire("CHANNEL_DELETE", channel.payload(), guild)
        self._notify()

    def open_dm(self, user: FakeUser | FakeMember) -> FakeChannel:
        """The bot's DM channel with ``user`` (created on first use, then the same one).

        Like Discord, opening a DM sends no gateway event to the bot.
        """
        recipient = user.user if isinstance(user, FakeMember) else user
        if recipient.id == self.bot_user.id:
            raise ValueError("the bot cannot open a DM with itself")
        channel = self.dm_channels.get(recipient.id)
        if channel is None:
            channel = FakeChannel(
                self.snowflake(), None, recipient.username, DM_CHANNEL, recipient=recipient
            )
            self.users.setdefault(recipient.id, recipient)
            self.dm_channels[recipient.id] = channel
            self.channels[channel.id] = channel
        return channel

    def add_default_scenario(self) -> Scenario:
        guild = self.add_guild()
        general = self.add_channel(guild, "일반", topic="자유롭게 대화하는 곳")
        nsfw_channel = self.add_channel(guild, "성인-롤플레이", nsfw=True)
        moderator_role = self.add_role(guild, "운영진", MANAGE_GUILD, position=2)
        moderator = self.add_member(guild, "minsu", nick="관리자 민수", roles=[moderator_role])
        members = [
            self.add_member(guild, "jisu", global_name="김지수"),
            self.add_member(guild, "haneul", nick="하늘이"),
            self.add_member(guild, "seoyeon", global_name="박서연", locale="en-US"),
        ]
        thread = self.add_thread(general, "민지와의 대화", owner=members[0])
        owner = guild.members[guild.owner_id]
        self.scenario = Scenario(
            guild, general, nsfw_channel, thread, moderator, members, moderator_role, owner
        )
        return self.scenario

    def guild_of(self, obj: FakeChannel | FakeMember) -> FakeGuild:
        if obj.guild_id is None:
            raise ValueError(f"{obj!r} is a DM channel: it has no guild")
        return self.guilds[obj.guild_id]

    def member(self, guild: FakeGuild, user_id: int) -> FakeMember:
        return guild.members[user_id]

    def messages_in(self, channel: FakeChannel) -> list[FakeMessage]:
        return channel.visible_messages

    # ------------------------------------------------------------------ change notification

    def _notify(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    async def wait_until(
        self,
        predicate: Callable[[], Any],
        timeout: float = 10.0,  # noqa: ASYNC109 - tests read better with a plain timeout
    ) -> Any:
        """Wait until ``predicate()`` is truthy (checked after each state change); return it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            event = self._changed
            result = predicate()
            if result:
                return result
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"fake discord: condition not met within {timeout}s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), min(remaining, 0.25))

    async def wait_for_message(
        self,
        channel: FakeChannel,
        predicate: Callable[[FakeMessage], bool] | None = None,
        timeout: float = 10.0,  # noqa: ASYNC109
        *,
        after: FakeMessage | int | None = None,
    ) -> FakeMessage:
        """The first message in ``channel`` not sent by a test helper, newer than ``after``.

        ``after`` defaults to the last message a test helper sent in that channel.
        """
        if after is None:
            after_id = self._last_dispatch.get(channel.id, 0)
        else:
            after_id = after if isinstance(after, int) else after.id

        def find() -> FakeMessage | None:
            # Messages are appended in id order: walk back only over the new ones.
            newer = []
            for candidate in reversed(channel.messages):
                if candidate.id <= after_id:
                    break
                newer.append(candidate)
            for candidate in reversed(newer):
                if candidate.from_test:
                    continue
                if predicate is None or predicate(candidate):
                    return candidate
            return None

        result: FakeMessage = await self.wait_until(find, timeout)
        return result

    async def wait_for_edit(
        self,
        message: FakeMessage,
        predicate: Callable[[FakeMessage], bool] | None = None,
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> FakeMessage:
        """Wait for ``predicate(message)``, or without one for the message's next edit."""
        count = message.edit_count

        def check() -> FakeMessage | None:
            if predicate is not None:
                return message if predicate(message) else None
            return message if message.edit_count > count else None

        result: FakeMessage = await self.wait_until(check, timeout)
        return result

    async def wait_for_response(
        self,
        interaction: InteractionRecord,
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> InteractionRecord:
        await self.wait_until(lambda: interaction.responded, timeout)
        return interaction

    async def wait_for_followup(
        self,
        interaction: InteractionRecord,
        count: int = 1,
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> FakeMessage:
        await self.wait_until(lambda: len(interaction.followups) >= count, timeout)
        return interaction.followups[count - 1]

    # ------------------------------------------------------------------ rate limit controls

    def force_rate_limit(
        self,
        method: str | None = None,
        route: str | None = None,
        *,
        times: int = 1,
        retry_after: float = 0.05,
    ) -> None:
        """Answer the next ``times`` matching requests with 429.

        ``route`` is a template such as ``"/channels/{channel_id}/messages/{message_id}"``
        (see ``ROUTES`` in this module); ``None`` matches every route.
        """
        self._forced.append(_ForcedLimit(method, route, times, retry_after))

    def fail_requests(
        self,
        method: str | None = None,
        route: str | None = None,
        *,
        times: int | None = 1,
        status: int = 503,
        applied: bool = False,
    ) -> None:
        """Answer the next ``times`` matching requests with a 5xx, as an outage would.

        Matching is as in ``force_rate_limit``. ``times=None`` fails every matching request
        until ``clear_failures()``. The body is Discord's ``{"message": "503: Service
        Unavailable", "code": 0}``. With ``applied=True`` the request takes effect first and
        only its answer is lost (a send that reached Discord but timed out on the way back),
        so a client that retries it creates a second message.

        discord.py retries 500, 502, 504 and 524 itself, five tries in all, sleeping 1, 3,
        5, 7 and 9 s between them; any other 5xx (503 by default) raises
        ``DiscordServerError`` at once.
        """
        if not 500 <= status <= 599:
            raise ValueError(f"fail_requests injects server errors (5xx), not {status}")
        if times is not None and times < 1:
            raise ValueError("times must be at least 1 (or None: until clear_failures())")
        self._failures.append(_Failure(method, route, times, status, applied))

    def clear_failures(self) -> None:
        """Stop failing requests (``fail_requests``), including those set until cleared."""
        self._failures.clear()

    # ------------------------------------------------------------------ gateway

    def shard_for(self, guild_id: int | None) -> int:
        if guild_id is None:
            return 0
        return (guild_id >> 22) % self.shard_count

    def _fire(self, event: str, data: dict[str, Any], guild: FakeGuild | None) -> None:
        """Dispatch from sync code: the event is sequenced now, sent by a background flush."""
        session = self._sessions.get(self.shard_for(guild.id if guild else None))
        if session is None:
            return
        self._enqueue(session, event, data)
        self._background(asyncio.get_running_loop().create_task(self._flush(session)))

    def _background(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def dispatch(self, event: str, data: dict[str, Any], guild_id: int | None) -> None:
        """Send a DISPATCH event to the shard that owns ``guild_id`` (buffered if disconnected)."""
        session = self._sessions.get(self.shard_for(guild_id))
        if session is not None:
            await self._send(session, event, data)

    def _enqueue(self, session: _Session, event: str, data: dict[str, Any]) -> None:
        # Sequencing is synchronous so events keep the order in which the fake produced them,
        # whichever task ends up writing them to the socket.
        session.seq += 1
        frame = json.dumps({"op": 0, "t": event, "s": session.seq, "d": data})
        session.history.append((session.seq, frame))
        if session.ws is not None:
            session.pending.append(frame)

    async def _flush(self, session: _Session) -> None:
        async with session.lock:
            await self._flush_locked(session)

    async def _flush_locked(self, session: _Session) -> None:
        while session.pending and session.ws is not None:
            frame = session.pending.popleft()
            with contextlib.suppress(ConnectionError, RuntimeError):
                await session.ws.send_str(frame)

    async def _send(self, session: _Session, event: str, data: dict[str, Any]) -> None:
        self._enqueue(session, event, data)
        await self._flush(session)

    async def drop_connection(self, shard_id: int | None = None) -> None:
        """Close the gateway socket(s) with 4000 so discord.py reconnects and RESUMEs."""
        for session in list(self._sessions.values()):
            if shard_id is not None and session.shard_id != shard_id:
                continue
            async with session.lock:
                ws, session.ws = session.ws, None
                session.pending.clear()  # still in history: replayed on RESUME
            if ws is not None:
                await ws.close(code=4000, message=b"dropped by test")
        self._notify()

    async def invalidate_session(self, shard_id: int | None = None) -> None:
        """Forget the gateway session(s) and close the socket(s), as when Discord expires a
        session: discord.py's RESUME gets op 9 INVALID_SESSION (d=false) and it must
        IDENTIFY afresh (new session, READY, GUILD_CREATEs).

        Events produced from now until that IDENTIFY go nowhere and are never replayed; a
        bot that wants them must read channel history. Wrap this in ``gateway_outage()`` to
        produce such events deterministically before the bot can reconnect.
        """
        for session in list(self._sessions.values()):
            if shard_id is not None and session.shard_id != shard_id:
                continue
            del self._sessions[session.shard_id]
            async with session.lock:
                ws, session.ws = session.ws, None
                session.pending.clear()
                session.history.clear()
            if ws is not None:
                await ws.close(code=4000, message=b"session invalidated by test")
        self._notify()

    @contextlib.asynccontextmanager
    async def gateway_outage(self) -> AsyncIterator[None]:
        """While inside, gateway connections are accepted but get no HELLO, so the bot
        cannot RESUME or IDENTIFY; they go on when the block exits (discord.py waits up to
        60 s for HELLO). REST keeps working, and helpers such as ``say`` store as usual."""
        self._gateway_open.clear()
        try:
            yield
        finally:
            self._gateway_open.set()

    async def redeliver_last(
        self, event: str, *, channel: FakeChannel | None = None
    ) -> dict[str, Any]:
        """Send the newest already dispatched ``event`` again, as Discord occasionally
        does: identical data under a new sequence number. ``channel`` picks the newest one
        about that channel (``channel_id``, or ``id`` for channel and thread events).
        Returns the redelivered data; LookupError when the live session never sent one.
        """
        if channel is not None:
            candidates = [self._sessions.get(self.shard_for(channel.guild_id))]
        else:
            candidates = list(self._sessions.values())
        wanted = str(channel.id) if channel is not None else None
        for session in candidates:
            if session is None:
                continue
            for _, frame in reversed(session.history):
                payload = json.loads(frame)
                data = payload["d"]
                if payload["t"] != event:
                    continue
                if wanted is not None and wanted not in (data.get("channel_id"), data.get("id")):
                    continue
                await self._send(session, event, data)
                return dict(data)
        where = f" for channel {channel.id}" if channel is not None else ""
        raise LookupError(f"no {event} was dispatched{where} in the current session(s)")

    @property
    def connected(self) -> bool:
        return bool(self._sessions) and all(
            s.ws is not None and not s.ws.closed for s in self._sessions.values()
        )

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        self._sockets.add(ws)
        try:
            await self._gateway_open.wait()  # held during gateway_outage()
            await ws.send_str(
                json.dumps({"op": 10, "d": {"heartbeat_interval": HEARTBEAT_INTERVAL_MS}})
            )
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    continue
                payload = json.loads(msg.data)
                await self._gateway_op(ws, payload.get("op"), payload.get("d"))
        finally:
            self._sockets.discard(ws)
            for session in self._sessions.values():
                if session.ws is ws:
                    session.ws = None
                    session.pending.clear()
            self._notify()
        return ws

    async def _gateway_op(self, ws: web.WebSocketResponse, op: int, data: Any) -> None:
        if op == 1:
            await ws.send_str(json.dumps({"op": 11}))
        elif op == 2:
            await self._identify(ws, data)
        elif op == 6:
            await self._resume(ws, data)
        elif op == 8:
            await self._request_members(data)

    async def _identify(self, ws: web.WebSocketResponse, data: dict[str, Any]) -> None:
        shard_id, shard_count = data.get("shard", [0, 1])
        self.intents = data.get("intents")
        self.identify_count += 1
        session = _Session(uuid.uuid4().hex, shard_id, shard_count, self.intents or 0)
        guilds = [g for g in self.guilds.values() if self.shard_for(g.id) == shard_id]
        ready = {
            "v": 10,
            "user": {**self.bot_user.payload(), "verified": True, "mfa_enabled": False},
            "guilds": [{"id": str(g.id), "unavailable": True} for g in guilds],
            "session_id": session.session_id,
            "resume_gateway_url": self.gateway_url,
            "shard": [shard_id, shard_count],
            "application": {"id": str(self.application_id), "flags": 0},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": [],
            "user_settings": {},
            "auth_session_id_hash": "",
        }
        old = self._sessions.get(shard_id)
        if old is not None and old.ws is not None and old.ws is not ws:
            await old.ws.close(code=4000)
        session.ws = ws
        self._sessions[shard_id] = session
        self._enqueue(session, "READY", ready)
        for guild in guilds:
            self._enqueue(session, "GUILD_CREATE", guild.payload())
        await self._flush(session)
        self._notify()

    async def _resume(self, ws: web.WebSocketResponse, data: dict[str, Any]) -> None:
        session = next(
            (s for s in self._sessions.values() if s.session_id == data.get("session_id")), None
        )
        if session is None:
            self.invalid_session_count += 1
            await ws.send_str(json.dumps({"op": 9, "d": False}))
            self._notify()
            return
        client_seq = data.get("seq") or 0
        async with session.lock:
            missed = [frame for seq, frame in session.history if seq > client_seq]
            session.pending.clear()
            session.ws = ws  # events produced while replaying queue up behind the replay
            for frame in missed:
                await ws.send_str(frame)
            self._enqueue(session, "RESUMED", {})
            await self._flush_locked(session)
        self.resume_count += 1
        self._notify()

    async def _request_members(self, data: dict[str, Any]) -> None:
        guild = self.guilds.get(int(data["guild_id"]))
        if guild is None:
            return
        chunk = {
            "guild_id": str(guild.id),
            "members": [m.payload() for m in guild.members.values()],
            "chunk_index": 0,
            "chunk_count": 1,
            "not_found": [],
            "presences": [],
        }
        if data.get("nonce"):
            chunk["nonce"] = data["nonce"]
        await self.dispatch("GUILD_MEMBERS_CHUNK", chunk, guild.id)

    # ------------------------------------------------------------------ test dispatch helpers

    def _resolve_mentions(self, content: str) -> list[FakeUser]:
        found = []
        for match in MENTION_RE.finditer(content):
            user = self.users.get(int(match.group(1)))
            if user is not None and user not in found:
                found.append(user)
        return found

    def _make_attachment(
        self, channel_id: int, filename: str, data: bytes, content_type: str | None
    ) -> FakeAttachment:
        attachment_id = self.snowflake()
        url = attachment_url(self.base_url, channel_id, attachment_id, filename)
        attachment = FakeAttachment(attachment_id, filename, data, content_type, url)
        self.attachments[attachment_id] = attachment
        return attachment

    def _store(self, message: FakeMessage) -> None:
        if not message.ephemeral:
            # Ephemeral messages are seen only by one member: keep them off the channel.
            self.channels[message.channel_id].messages.append(message)
        self.messages[message.id] = message
        self._notify()

    def _participant(
        self, channel: FakeChannel, who: FakeMember | FakeUser
    ) -> tuple[FakeUser, FakeMember | None]:
        """(user, member) acting in ``channel``; the member is None in a DM."""
        self._require_exists(channel)
        user = who.user if isinstance(who, FakeMember) else who
        if channel.guild_id is None:
            if channel.recipient is None or channel.recipient.id != user.id:
                raise ValueError(f"{user.username!r} is not the recipient of DM {channel.id}")
            return user, None
        member = self.guilds[channel.guild_id].members.get(user.id)
        if member is None:
            raise LookupError(f"{user.username!r} is not a member of the channel's guild")
        return user, member

    def _require(self, channel: FakeChannel, member: FakeMember, needed: int, action: str) -> None:
        """Refuse, in the test, what the Discord client would not let the member do."""
        guild = self.guilds[member.guild_id]
        missing = needed & ~guild.permissions_in(channel, member)
        if missing:
            raise PermissionError(
                f"{member.display_name!r} cannot {action} #{channel.name}: missing "
                f"{permission_names(missing)} (a real client could not do this)"
            )

    async def say(
        self,
        channel: FakeChannel,
        member: FakeMember | FakeUser,
        content: str,
        *,
        attachments: list[tuple[str, bytes, str | None]] | None = None,
        mentions_bot: bool = False,
        reply_to: FakeMessage | None = None,
        duplicate: bool = False,
    ) -> FakeMessage:
        """A member (or, in a DM, the user) posts a message: stored and sent as MESSAGE_CREATE.

        ``duplicate=True`` delivers that MESSAGE_CREATE twice (same data, two sequence
        numbers), as Discord occasionally does. While the bot is disconnected the message is
        stored and its event waits for RESUME; after ``invalidate_session`` it is lost.
        Raises PermissionError when the member may not post there (SEND_MESSAGES, or
        SEND_MESSAGES_IN_THREADS in a thread, and ATTACH_FILES for attachments) and
        LookupError in a deleted channel.
        """
        self._require_exists(channel)
        user, guild_member = self._participant(channel, member)
        if guild_member is not None:
            needed = VIEW_CHANNEL
            needed |= SEND_MESSAGES_IN_THREADS if channel.is_thread else SEND_MESSAGES
            if attachments:
                needed |= ATTACH_FILES
            self._require(channel, guild_member, needed, "post in")
        if mentions_bot:
            content = f"<@{self.bot_user.id}> {content}"
        message = FakeMessage(
            self.snowflake(),
            channel.id,
            channel.guild_id,
            content,
            author=user,
            member=guild_member,
            attachments=[self._make_attachment(channel.id, *a) for a in attachments or []],
            mentions=self._resolve_mentions(content),
            from_test=True,
        )
        if reply_to is not None:
            message.type = 19
            message.reference = _reference(reply_to.id, reply_to.channel_id, reply_to.guild_id)
        self._store(message)
        self._last_dispatch[channel.id] = message.id
        payload = message.payload(with_member=True)
        if reply_to is not None:
            payload["referenced_message"] = reply_to.payload()
        await self.dispatch("MESSAGE_CREATE", payload, channel.guild_id)
        if duplicate:
            await self.dispatch("MESSAGE_CREATE", payload, channel.guild_id)
        return message

    def _live_channel(self, channel_id: int) -> FakeChannel:
        channel = self.channels.get(channel_id)
        if channel is None:
            raise LookupError(f"channel {channel_id} was deleted (a real client could not do this)")
        return channel

    def _require_exists(self, channel: FakeChannel) -> None:
        if channel.deleted:
            raise LookupError(f"#{channel.name} was deleted (a real client could not do this)")

    async def edit(self, message: FakeMessage, content: str) -> FakeMessage:
        """The author edits their message: MESSAGE_UPDATE."""
        self._apply_edit(message, {"content": content})
        await self.dispatch("MESSAGE_UPDATE", message.payload(with_member=True), message.guild_id)
        return message

    async def delete(self, message: FakeMessage) -> None:
        """The message is deleted by its author or a moderator: MESSAGE_DELETE."""
        message.deleted = True
        self._notify()
        await self._dispatch_delete(message)

    async def _dispatch_delete(self, message: FakeMessage) -> None:
        data = {"id": str(message.id), "channel_id": str(message.channel_id)}
        if message.guild_id is not None:
            data["guild_id"] = str(message.guild_id)
        await self.dispatch("MESSAGE_DELETE", data, message.guild_id)

    def _find_command(
        self, guild: FakeGuild | None, path: str
    ) -> tuple[dict[str, Any], list[str], list[dict[str, Any]], bool]:
        """(command, [sub names], leaf option definitions, is guild command).

        ``guild`` is None in a DM, where only global commands allowed in bot DMs exist.
        """
        parts = path.split()
        guild_scope = self.guild_commands.get(guild.id, {}) if guild is not None else {}
        is_guild = parts[0] in guild_scope
        scope = guild_scope if is_guild else self.global_commands
        if parts[0] not in scope:
            if guild is None and any(parts[0] in c for c in self.guild_commands.values()):
                raise LookupError(f"/{parts[0]} is a guild command: not available in DMs")
            raise LookupError(f"command /{parts[0]} was not synced (synced: {sorted(scope)})")
        command = scope[parts[0]]
        context = GUILD_CONTEXT if guild is not None else BOT_DM_CONTEXT
        if not is_guild and not _offered_in(command, context):
            where = "in servers" if guild is not None else "in DMs"
            raise LookupError(
                f"/{parts[0]} is not available {where} (contexts={command.get('contexts')}, "
                f"dm_permission={command.get('dm_permission')}): the client would not offer it"
            )
        definitions = command.get("options") or []
        for part in parts[1:]:
            sub = next((o for o in definitions if o["name"] == part and o["type"] in (1, 2)), None)
            if sub is None:
                raise LookupError(f"/{path}: no subcommand {part!r}")
            definitions = sub.get("options") or []
        return command, parts[1:], definitions, is_guild

    def _build_options(
        self,
        channel: FakeChannel,
        invoker: FakeMember | None,
        definitions: list[dict[str, Any]],
        values: dict[str, Any],
        focused: str | None,
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        resolved: dict[str, dict[str, Any]] = {}
        options: list[dict[str, Any]] = []
        by_name = {d["name"]: d for d in definitions}
        for name in values:
            if name not in by_name:
                raise LookupError(f"unknown option {name!r}; the command has {sorted(by_name)}")
        for definition in definitions:
            name = definition["name"]
            if name not in values:
                if definition.get("required") and focused is None:
                    raise ValueError(f"required option {name!r} missing")
                continue
            value = values[name]
            option: dict[str, Any] = {"name": name, "type": definition["type"]}
            if name == focused:
                option["focused"] = True
                option["value"] = str(value)
            else:
                option["value"] = self._option_value(
                    channel, invoker, definition["type"], value, resolved
                )
                _within_range(definition, option["value"])
            options.append(option)
        return options, resolved

    def _option_value(
        self,
        channel: FakeChannel,
        invoker: FakeMember | None,
        kind: int,
        value: Any,
        resolved: dict[str, dict[str, Any]],
    ) -> Any:
        """An option's value; users, members, roles, channels and files go into ``resolved``.

        As on Discord, a resolved member carries its permissions in the interaction's channel
        and a resolved channel the invoking member's permissions in that channel.
        """
        guild = self.guilds.get(channel.guild_id or 0)
        if kind == 3:
            return str(value)
        if kind == 4:
            return int(value)
        if kind == 5:
            return bool(value)
        if kind == 10:
            return float(value)
        if kind in (6, 9) and isinstance(value, FakeMember | FakeUser):
            user = value.user if isinstance(value, FakeMember) else value
            resolved.setdefault("users", {})[str(user.id)] = user.payload()
            member = guild.members.get(user.id) if guild is not None else None
            if guild is not None and member is not None:
                perms = guild.permissions_in(channel, member)
                resolved.setdefault("members", {})[str(user.id)] = member.payload(
                    with_user=False, permissions=perms
                )
            return str(user.id)
        if kind in (8, 9) and isinstance(value, FakeRole):
            resolved.setdefault("roles", {})[str(value.id)] = value.payload()
            return str(value.id)
        if kind == 7 and isinstance(value, FakeChannel):
            parent = self.channels.get(value.parent_id or 0)
            payload = value.payload(parent_nsfw=bool(parent and parent.nsfw))
            if guild is not None and invoker is not None and value.guild_id == guild.id:
                payload["permissions"] = str(guild.permissions_in(value, invoker))
            resolved.setdefault("channels", {})[str(value.id)] = payload
            return str(value.id)
        if kind == 11:
            if not isinstance(value, FakeAttachment):
                filename, data, content_type = value
                value = self._make_attachment(channel.id, filename, data, content_type)
            resolved.setdefault("attachments", {})[str(value.id)] = value.payload()
            return str(value.id)
        raise TypeError(f"cannot convert {value!r} for option type {kind}")

    def _interaction_payload(
        self, record: InteractionRecord, channel: FakeChannel, locale: str | None
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "id": str(record.id),
            "application_id": str(self.application_id),
            "type": record.type,
            "data": record.data,
            "channel_id": str(channel.id),
            "token": record.token,
            "version": 1,
            "entitlements": [],
            "attachment_size_limit": 10 * 1024 * 1024,
        }
        if record.member is None:
            # From the bot's DM: a user instead of a member, no guild, context BOT_DM.
            payload.update(
                {
                    "channel": channel.payload(),
                    "user": record.user.payload(),
                    "locale": locale or self._user_locale(record.user),
                    "app_permissions": str(BOT_DM_PERMISSIONS),
                    "authorizing_integration_owners": {"0": "0"},
                    "context": BOT_DM_CONTEXT,
                }
            )
        else:
            member = record.member
            guild = self.guilds[member.guild_id]
            parent = self.channels.get(channel.parent_id or 0)
            bot_member = guild.members[self.bot_user.id]
            payload.update(
                {
                    "guild_id": str(guild.id),
                    "guild": {
                        "id": str(guild.id),
                        "locale": guild.preferred_locale,
                        "features": [],
                    },
                    "channel": channel.payload(parent_nsfw=bool(parent and parent.nsfw)),
                    # Both are permissions in the interaction's channel, overwrites included.
                    "member": member.payload(permissions=guild.permissions_in(channel, member)),
                    "app_permissions": str(guild.permissions_in(channel, bot_member)),
                    "locale": locale or member.locale,
                    "guild_locale": guild.preferred_locale,
                    "authorizing_integration_owners": {"0": str(guild.id)},
                    "context": GUILD_CONTEXT,
                }
            )
        if record.message is not None:
            payload["message"] = record.message.payload()
        return payload

    def _user_locale(self, user: FakeUser) -> str:
        """A user's client locale: the one their guild memberships were given."""
        for guild in self.guilds.values():
            member = guild.members.get(user.id)
            if member is not None:
                return member.locale
        return "ko"

    async def _send_interaction(
        self,
        kind: int,
        who: FakeMember | FakeUser,
        channel: FakeChannel,
        data: dict[str, Any],
        locale: str | None,
        message: FakeMessage | None = None,
    ) -> InteractionRecord:
        user, member = self._participant(channel, who)
        if member is not None:
            self._require(channel, member, VIEW_CHANNEL, "use interactions in")
        record = InteractionRecord(
            self.snowflake(),
            "itk_" + secrets.token_urlsafe(48),
            kind,
            data,
            channel.guild_id,
            channel.id,
            user,
            member,
            message,
        )
        self.interactions[record.token] = record
        self._last_dispatch[channel.id] = record.id
        payload = self._interaction_payload(record, channel, locale)
        await self.dispatch("INTERACTION_CREATE", payload, channel.guild_id)
        return record

    def _default_channel(self, channel: FakeChannel | None) -> FakeChannel:
        if channel is not None:
            return channel
        if self.scenario is None:
            raise ValueError("pass channel=... (no default scenario)")
        return self.scenario.general

    def _command_data(
        self,
        who: FakeMember | FakeUser,
        command: str,
        channel: FakeChannel,
        options: dict[str, Any],
        focused: str | None,
    ) -> dict[str, Any]:
        _, member = self._participant(channel, who)
        guild = self.guilds[channel.guild_id] if channel.guild_id is not None else None
        if member is not None:
            # Without Use Application Commands the client shows no commands at all.
            self._require(
                channel, member, VIEW_CHANNEL | USE_APPLICATION_COMMANDS, "use commands in"
            )
        cmd, subs, definitions, is_guild = self._find_command(guild, command)
        leaf, resolved = self._build_options(channel, member, definitions, options, focused)
        nested = leaf
        for depth, name in reversed(list(enumerate(subs))):
            kind = 1 if depth == len(subs) - 1 else 2
            nested = [{"name": name, "type": kind, "options": nested}]
        data: dict[str, Any] = {
            "id": cmd["id"],
            "name": cmd["name"],
            "type": 1,
            "options": nested,
        }
        if resolved:
            data["resolved"] = resolved
        if is_guild and guild is not None:
            data["guild_id"] = str(guild.id)
        return data

    async def slash(
        self,
        member: FakeMember | FakeUser,
        command: str,
        *,
        channel: FakeChannel | None = None,
        locale: str | None = None,
        **options: Any,
    ) -> InteractionRecord:
        """Run a synced slash command (``"rp start"`` = group/subcommand path) as ``member``.

        Option values: str/int/float/bool, FakeMember/FakeUser, FakeChannel, FakeRole,
        and for attachment options a ``(filename, bytes, content_type)`` tuple.
        ``channel=fake.open_dm(user)`` runs it from the bot's DM; commands Discord would not
        offer there (guild commands, ``guild_only``) raise LookupError.
        """
        channel = self._default_channel(channel)
        data = self._command_data(member, command, channel, options, None)
        return await self._send_interaction(2, member, channel, data, locale)

    async def message_command(
        self,
        member: FakeMember | FakeUser,
        name: str,
        message: FakeMessage,
        *,
        locale: str | None = None,
    ) -> InteractionRecord:
        """Run a synced message context-menu command (type 3) on ``message`` as ``member``,
        as the client does from a message's Apps menu: the message travels resolved."""
        channel = self._live_channel(message.channel_id)
        _, guild_member = self._participant(channel, member)
        if guild_member is not None:
            self._require(
                channel, guild_member, VIEW_CHANNEL | USE_APPLICATION_COMMANDS, "use commands in"
            )
        guild = self.guilds[channel.guild_id] if channel.guild_id is not None else None
        scopes = [self.guild_commands.get(guild.id, {})] if guild is not None else []
        scopes.append(self.global_commands)
        found = [
            (scope is not self.global_commands, c)
            for scope in scopes
            for c in scope.values()
            if c["name"] == name and c.get("type") == 3
        ]
        if not found:
            raise LookupError(f"no message command {name!r} was synced")
        is_guild, command = found[0]
        context = GUILD_CONTEXT if guild is not None else BOT_DM_CONTEXT
        if not is_guild and not _offered_in(command, context):
            raise LookupError(f"{name!r} is not offered here (contexts={command.get('contexts')})")
        data: dict[str, Any] = {
            "id": command["id"],
            "name": command["name"],
            "type": 3,
            "target_id": str(message.id),
            "resolved": {"messages": {str(message.id): message.payload()}},
        }
        if is_guild and guild is not None:
            data["guild_id"] = str(guild.id)
        return await self._send_interaction(2, member, channel, data, locale)

    async def autocomplete(
        self,
        member: FakeMember | FakeUser,
        command: str,
        *,
        focused: str,
        value: str = "",
        channel: FakeChannel | None = None,
        locale: str | None = None,
        **options: Any,
    ) -> InteractionRecord:
        """Ask for autocomplete choices; ``await fake.wait_for_response(r)`` then ``r.choices``."""
        channel = self._default_channel(channel)
        data = self._command_data(
            member, command, channel, {**options, focused: value}, focused=focused
        )
        return await self._send_interaction(4, member, channel, data, locale)

    async def press(
        self,
        member: FakeMember | FakeUser,
        message: FakeMessage,
        custom_id: str,
        *,
        values: list[str] | None = None,
        locale: str | None = None,
    ) -> InteractionRecord:
        """Press a button (or pick ``values`` in a select) on ``message``."""
        component = _find_component(message.components, custom_id)
        if component is None:
            raise LookupError(f"no component {custom_id!r} on message {message.id}")
        data: dict[str, Any] = {"custom_id": custom_id, "component_type": component["type"]}
        if values is not None:
            data["values"] = values
        channel = self._live_channel(message.channel_id)
        return await self._send_interaction(3, member, channel, data, locale, message)

    async def submit_modal(
        self,
        member: FakeMember | FakeUser,
        modal: InteractionRecord | str,
        values: dict[str, str | list[str]],
        *,
        channel: FakeChannel | None = None,
        locale: str | None = None,
    ) -> InteractionRecord:
        """Submit a modal the bot opened (by its interaction record, or by custom_id)."""
        if isinstance(modal, InteractionRecord):
            if modal.modal is None:
                raise LookupError("that interaction was not answered with a modal")
            spec = modal.modal
            channel = channel or self._live_channel(modal.channel_id)
        else:
            spec = {"custom_id": modal, "components": []}
            channel = self._default_channel(channel)
        components = _modal_submission(spec.get("components", []), values)
        if not spec.get("components"):
            components = [
                {"type": 1, "components": [{"type": 4, "custom_id": k, "value": v}]}
                for k, v in values.items()
            ]
        data = {"custom_id": spec["custom_id"], "components": components}
        source = modal.message if isinstance(modal, InteractionRecord) else None
        return await self._send_interaction(5, member, channel, data, locale, source)

    # ------------------------------------------------------------------ REST plumbing

    def _register_routes(self) -> None:
        for method, template, handler_name in ROUTES:
            pattern = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template)
            handler = getattr(self, handler_name)
            self._routes.append((method, re.compile(f"^{pattern}$"), template, handler))

    async def _dispatch_rest(self, request: web.Request) -> web.Response:
        path = "/" + request.match_info["tail"]
        body_json, files = await _read_body(request)
        call = RestCall(request.method, path, dict(request.query), body_json, files)
        self.calls.append(call)
        authorization = request.headers.get("Authorization")
        if authorization is not None and authorization != f"Bot {self.token}":
            # Discord's answer to a bot token it does not know, on any route.
            call.status = 401
            self._notify()
            return _json({"message": "401: Unauthorized", "code": 0}, 401)
        for method, pattern, template, handler in self._routes:
            if method != request.method:
                continue
            match = pattern.match(path)
            if match is None:
                continue
            call.route = template
            limited = self._forced_limit(request.method, template)
            if limited is not None:
                call.status = 429
                self.rate_limited.append(call)
                self._notify()
                return _rate_limited(limited, "forced")
            failure = self._failure(request.method, template)
            if failure is not None and not failure.applied:
                return self._server_error(call, failure.status)
            try:
                check_query(request.query)
                response = await handler(
                    _Request(request, match.groupdict(), template, body_json, files, call)
                )
            except ApiError as exc:
                response = _json(exc.body(), exc.status)
            if failure is not None:
                return self._server_error(call, failure.status)
            call.status = response.status
            if response.status == 429:
                self.rate_limited.append(call)
            self._notify()
            return response
        call.status = 404
        self.unknown_routes.append(call)
        self._notify()
        return _json({"message": "404: Not Found (fake discord)", "code": 0}, 404)

    def _forced_limit(self, method: str, template: str) -> float | None:
        for forced in self._forced:
            if forced.remaining <= 0:
                continue
            if forced.method not in (None, method) or forced.route not in (None, template):
                continue
            forced.remaining -= 1
            return forced.retry_after
        return None

    def _failure(self, method: str, template: str) -> _Failure | None:
        for failure in self._failures:
            if failure.remaining is not None and failure.remaining <= 0:
                continue
            if failure.method not in (None, method) or failure.route not in (None, template):
                continue
            if failure.remaining is not None:
                failure.remaining -= 1
            return failure
        return None

    def _server_error(self, call: RestCall, status: int) -> web.Response:
        call.status = status
        self.failed.append(call)
        self._notify()
        try:
            reason = http.HTTPStatus(status).phrase
        except ValueError:
            reason = "Server Error"
        return _json({"message": f"{status}: {reason}", "code": 0}, status)

    def _check_edit_rate(self, channel: FakeChannel) -> web.Response | None:
        config = self.rate_limits
        if not config.enabled:
            return None
        clock = time.monotonic()
        times = channel.edit_times
        while times and times[0] <= clock - config.edit_window:
            times.popleft()
        if len(times) >= config.edit_limit:
            return _rate_limited(times[0] + config.edit_window - clock, f"edit-{channel.id}")
        times.append(clock)
        return None

    async def _cdn(self, request: web.Request) -> web.Response:
        attachment = self.attachments.get(int(request.match_info["attachment_id"]))
        if attachment is None:
            return web.Response(status=404, text="not found")
        return web.Response(
            body=attachment.data,
            headers={"Content-Type": attachment.content_type or "application/octet-stream"},
        )

    # ------------------------------------------------------------------ REST lookups

    def _channel(self, channel_id: str) -> FakeChannel:
        channel = self.channels.get(int(channel_id))
        if channel is None:
            raise ApiError(404, "Unknown Channel", 10003)
        return channel

    def _guild(self, guild_id: str) -> FakeGuild:
        guild = self.guilds.get(int(guild_id))
        if guild is None:
            raise ApiError(404, "Unknown Guild", 10004)
        return guild

    def _message(self, channel: FakeChannel, message_id: str) -> FakeMessage:
        message = self.messages.get(int(message_id))
        if message is None or message.deleted or message.channel_id != channel.id:
            raise ApiError(404, "Unknown Message", 10008)
        return message

    def _webhook(self, webhook_id: str, token: str) -> FakeWebhook:
        webhook = self.webhooks.get(int(webhook_id))
        if webhook is None or webhook.token != token:
            raise ApiError(404, "Unknown Webhook", 10015)
        return webhook

    def _interaction(self, token: str) -> InteractionRecord:
        record = self.interactions.get(token)
        if record is None:
            raise ApiError(404, "Unknown interaction", 10062)
        return record

    def _new_attachments(
        self,
        channel_id: int,
        payload: dict[str, Any],
        files: list[tuple[str, bytes, str | None]],
        existing: list[FakeAttachment],
    ) -> list[FakeAttachment]:
        """Attachments after a create/edit: kept ones (by id) plus uploaded files."""
        if "attachments" not in payload and not files:
            return existing
        by_id = {a.id: a for a in existing}
        result: list[FakeAttachment] = []
        used: set[int] = set()
        for item in payload.get("attachments") or []:
            raw_id = int(item["id"])
            if raw_id in by_id:
                result.append(by_id[raw_id])
            elif raw_id < len(files):
                name, data, content_type = files[raw_id]
                attachment = self._make_attachment(
                    channel_id, item.get("filename") or name, data, content_type
                )
                attachment.description = item.get("description")
                result.append(attachment)
                used.add(raw_id)
        for index, (name, data, content_type) in enumerate(files):
            if index not in used:
                result.append(self._make_attachment(channel_id, name, data, content_type))
        return result

    def _apply_edit(self, message: FakeMessage, payload: dict[str, Any], files: Any = ()) -> None:
        if "content" in payload:
            message.content = payload["content"] or ""
            message.mentions = self._resolve_mentions(message.content)
        if "embeds" in payload:
            message.embeds = payload["embeds"] or []
        if "components" in payload:
            message.components = payload["components"] or []
        if "allowed_mentions" in payload:
            message.allowed_mentions = payload["allowed_mentions"]
        if "flags" in payload and payload["flags"] is not None:
            message.flags = (message.flags & EPHEMERAL_FLAG) | int(payload["flags"])
        message.flags &= ~LOADING_FLAG
        message.attachments = self._new_attachments(
            message.channel_id, payload, list(files), message.attachments
        )
        message.edited_at = now()
        message.versions.append(message.snapshot())
        self._notify()

    def _create_message(
        self,
        channel: FakeChannel,
        payload: dict[str, Any],
        files: list[tuple[str, bytes, str | None]],
        **fields: Any,
    ) -> FakeMessage:
        content = payload.get("content") or ""
        message = FakeMessage(
            self.snowflake(),
            channel.id,
            channel.guild_id,
            content,
            embeds=payload.get("embeds") or [],
            components=payload.get("components") or [],
            allowed_mentions=payload.get("allowed_mentions"),
            mentions=self._resolve_mentions(content),
            flags=int(payload.get("flags") or 0),
            tts=bool(payload.get("tts")),
            **fields,
        )
        message.attachments = self._new_attachments(channel.id, payload, files, [])
        ref = payload.get("message_reference")
        if ref and ref.get("message_id"):
            message.type = 19
            message.reference = _reference(
                ref["message_id"], ref.get("channel_id") or channel.id, channel.guild_id
            )
        message.versions = [message.snapshot()]
        self._store(message)
        return message

    def _bot_member(self, channel: FakeChannel) -> FakeMember | None:
        """The bot as a member of the channel's guild (None in a DM)."""
        guild = self.guilds.get(channel.guild_id or 0)
        return guild.members.get(self.bot_user.id) if guild is not None else None

    def _require_bot(self, channel: FakeChannel, needed: int) -> None:
        """403 Missing Permissions when the bot lacks ``needed`` in a guild channel."""
        bot_member = self._bot_member(channel)
        if bot_member is None:
            return
        guild = self.guilds[bot_member.guild_id]
        if needed & ~guild.permissions_in(channel, bot_member):
            raise ApiError(403, "Missing Permissions", 50013)

    @staticmethod
    def _refuse_dm(channel: FakeChannel) -> None:
        if channel.is_dm:
            raise ApiError(400, "Cannot execute action on a DM channel", 50003)

    async def _echo(self, event: str, message: FakeMessage) -> None:
        if self.echo_bot_messages and not message.ephemeral:
            await self.dispatch(event, message.payload(with_member=True), message.guild_id)

    # ------------------------------------------------------------------ REST handlers

    async def _get_me(self, req: _Request) -> web.Response:
        return _json({**self.bot_user.payload(), "verified": True, "mfa_enabled": False})

    async def _get_application(self, req: _Request) -> web.Response:
        return _json(
            {
                "id": str(self.application_id),
                "name": self.bot_user.username,
                "icon": None,
                "description": "테스트용 가짜 애플리케이션",
                "rpc_origins": [],
                "bot_public": True,
                "bot_require_code_grant": False,
                "bot": self.bot_user.payload(),
                "owner": self.owner_user.payload(),
                "summary": "",
                "verify_key": "0" * 64,
                "team": None,
                "flags": 0,
                "tags": [],
                "redirect_uris": [],
                "interactions_endpoint_url": None,
                "integration_types_config": {},
            }
        )

    async def _get_gateway(self, req: _Request) -> web.Response:
        return _json({"url": self.gateway_url})

    async def _get_gateway_bot(self, req: _Request) -> web.Response:
        limit = {"total": 1000, "remaining": 1000, "reset_after": 0, "max_concurrency": 1}
        return _json(
            {"url": self.gateway_url, "shards": self.shard_count, "session_start_limit": limit}
        )

    def _store_commands(
        self, scope: dict[str, dict[str, Any]], commands: list[dict[str, Any]], guild_id: int | None
    ) -> list[dict[str, Any]]:
        old = dict(scope)
        scope.clear()
        for command in commands:
            stored = _without_default_localisations(command)
            previous = old.get(command["name"])
            stored["id"] = previous["id"] if previous else str(self.snowflake())
            stored["application_id"] = str(self.application_id)
            stored["version"] = str(self.snowflake())
            stored.setdefault("type", 1)
            stored.setdefault("description", "")
            stored.setdefault("default_member_permissions", None)
            stored.setdefault("nsfw", False)
            if guild_id is not None:
                stored["guild_id"] = str(guild_id)
            scope[command["name"]] = stored
        return list(scope.values())

    async def _put_global_commands(self, req: _Request) -> web.Response:
        check_commands(req.json or [])
        return _json(self._store_commands(self.global_commands, req.json or [], None))

    async def _get_global_commands(self, req: _Request) -> web.Response:
        return _json(list(self.global_commands.values()))

    async def _put_guild_commands(self, req: _Request) -> web.Response:
        guild = self._guild(req.params["guild_id"])
        check_commands(req.json or [])
        scope = self.guild_commands.setdefault(guild.id, {})
        return _json(self._store_commands(scope, req.json or [], guild.id))

    async def _get_guild_commands(self, req: _Request) -> web.Response:
        guild = self._guild(req.params["guild_id"])
        return _json(list(self.guild_commands.get(guild.id, {}).values()))

    async def _post_message(self, req: _Request) -> web.Response:
        channel = self._channel(req.params["channel_id"])
        payload = req.json or {}
        check_message(payload, files=len(req.files))
        needed = VIEW_CHANNEL | (SEND_MESSAGES_IN_THREADS if channel.is_thread else SEND_MESSAGES)
        self._require_bot(channel, needed | (ATTACH_FILES if req.files else 0))
        message = self._create_message(
            channel, payload, req.files, author=self.bot_user, member=self._bot_member(channel)
        )
        await self._echo("MESSAGE_CREATE", message)
        return _json(message.payload())

    async def _get_messages(self, req: _Request) -> web.Response:
        channel = self._channel(req.params["channel_id"])
        limit = int(req.query.get("limit", 50))
        before = int(req.query.get("before", 0)) or None
        after = int(req.query.get("after", 0)) or None
        if after is not None:
            items = [m for m in channel.messages if m.id > after and not m.deleted][:limit]
            return _json([m.payload() for m in reversed(items)])
        newest_first: list[dict[str, Any]] = []
        for message in reversed(channel.messages):
            if len(newest_first) >= limit:
                break
            if message.deleted or (before is not None and message.id >= before):
                continue
            newest_first.append(message.payload())
        return _json(newest_first)

    async def _get_message(self, req: _Request) -> web.Response:
        channel = self._channel(req.params["channel_id"])
        return _json(self._message(channel, req.params["message_id"]).payload())

    async def _patch_message(self, req: _Request) -> web.Response:
        channel = self._channel(req.params["channel_id"])
        message = self._message(channel, req.params["message_id"])
        if message.author is not self.bot_user or message.webhook_id is not None:
            raise ApiError(403, "Cannot edit a message authored by another user", 50005)
        check_message(req.json or {}, files=len(req.files), existing=message)
        limited = self._check_edit_rate(channel)
        if limited is not None:
            return limited
        self._apply_edit(message, req.json or {}, req.files)
        await self._echo("MESSAGE_UPDATE", message)
        return _json(message.payload())

    async def _delete_message(self, req: _Request) -> web.Response:
        channel = self._channel(req.params["channel_id"])
        message = self._message(channel, req.params["message_id"])
        if message.author is None or message.author.id != self.bot_user.id:
            # Another's message (a member's, a webhook's) needs Manage Messages; in a DM the
            # bot may delete only its own.
            self._refuse_dm(channel)
            self._require_bot(channel, MANAGE_MESSAGES)
        message.deleted = True
        self._notify()
        await self._dispatch_delete(message)
        return web.Response(status=204)

    async def _put_reaction(self, req: _Request) -> web.Response:
        channel = self._channel(req.params["channel_id"])
        message = self._message(channel, req.params["message_id"])
        message.reactions.append(req.params["emoji"])
        return web.Response(status=204)

    async def _typing(self, req: _Request) -> web.Response:
        self._channel(req.params["channel_id"])
        return web.Response(status=204)

    async def _get_channel(self, req: _Request) -> web.Response:
        channel = self._channel(req.params["channel_id"])
        parent = self.channels.get(channel.parent_id or 0)
        return _json(channel.payload(parent_nsfw=bool(parent and parent.nsfw)))

    async def _create_thread(self, req: _Request) -> web.Response:
        parent = self._channel(req.params["channel_id"])
        self._refuse_dm(parent)
        if parent.is_thread:
            raise ApiError(400, "Cannot execute action on this channel type", 50024)
        payload = req.json or {}
        thread = self.add_thread(parent, payload.get("name") or "스레드", owner=self.bot_user)
        return _json(thread.payload(parent_nsfw=parent.nsfw), 201)

    async def _create_webhook(self, req: _Request) -> web.Response:
        channel = self._channel(req.params["channel_id"])
        self._refuse_dm(channel)
        if channel.is_thread:
            raise ApiError(400, "Cannot execute action on this channel type", 50024)
        payload = req.json or {}
        check_webhook_body(payload)
        webhook = FakeWebhook(
            self.snowflake(),
            secrets.token_urlsafe(51),
            self.guild_of(channel).id,
            channel.id,
            payload.get("name") or "웹훅",
            self.application_id,
            self.bot_user,
            payload.get("avatar"),
        )
        self.webhooks[webhook.id] = webhook
        return _json(webhook.payload())

    async def _patch_webhook(self, req: _Request) -> web.Response:
        webhook = self.webhooks.get(int(req.params["webhook_id"]))
        if webhook is None:
            raise ApiError(404, "Unknown Webhook", 10015)
        payload = req.json or {}
        check_webhook_body(payload)
        if "name" in payload:
            webhook.name = payload["name"]
        if "avatar" in payload:
            webhook.avatar_data = payload["avatar"]
        self._notify()
        return _json(webhook.payload())

    async def _channel_webhooks(self, req: _Request) -> web.Response:
        channel = self._channel(req.params["channel_id"])
        self._refuse_dm(channel)
        return _json([w.payload() for w in self.webhooks.values() if w.channel_id == channel.id])

    async def _guild_webhooks(self, req: _Request) -> web.Response:
        guild = self._guild(req.params["guild_id"])
        return _json([w.payload() for w in self.webhooks.values() if w.guild_id == guild.id])

    async def _get_webhook(self, req: _Request) -> web.Response:
        webhook = self.webhooks.get(int(req.params["webhook_id"]))
        if webhook is None:
            raise ApiError(404, "Unknown Webhook", 10015)
        return _json(webhook.payload())

    async def _get_webhook_token(self, req: _Request) -> web.Response:
        return _json(self._webhook(req.params["webhook_id"], req.params["token"]).payload())

    async def _delete_webhook(self, req: _Request) -> web.Response:
        webhook = self.webhooks.pop(int(req.params["webhook_id"]), None)
        if webhook is None:
            raise ApiError(404, "Unknown Webhook", 10015)
        self._webhooks_update(webhook)
        return web.Response(status=204)

    def _webhook_target(self, webhook: FakeWebhook, thread_id: str | None) -> FakeChannel:
        channel = self._channel(str(webhook.channel_id))
        if thread_id is None:
            return channel
        thread = self.channels.get(int(thread_id))
        if thread is None or thread.parent_id != webhook.channel_id:
            raise ApiError(400, "Unknown Channel (thread_id not in the webhook's channel)", 10003)
        return thread

    async def _execute_webhook(self, req: _Request) -> web.Response:
        if int(req.params["webhook_id"]) == self.application_id:
            return await self._create_followup(req)
        webhook = self._webhook(req.params["webhook_id"], req.params["token"])
        channel = self._webhook_target(webhook, req.query.get("thread_id"))
        payload = req.json or {}
        check_message(payload, files=len(req.files), webhook=True)
        message = self._create_message(
            channel,
            payload,
            req.files,
            webhook_id=webhook.id,
            username=payload.get("username") or webhook.name,
            avatar_url=payload.get("avatar_url"),
            application_id=self.application_id,
        )
        await self._echo("MESSAGE_CREATE", message)
        if req.query.get("wait") in ("true", "1", "True"):
            return _json(message.payload())
        return web.Response(status=204)

    def _webhook_message(self, req: _Request) -> tuple[FakeMessage, FakeChannel]:
        if int(req.params["webhook_id"]) == self.application_id:
            record = self._interaction(req.params["token"])
            if req.params["message_id"] == "@original":
                if record.original is not None:
                    return record.original, self._channel(str(record.channel_id))
                # A component's (or its modal's) update response: @original is the message
                # the component is on, as on Discord.
                if record.message is not None and record.callback_type in (6, 7):
                    return record.message, self._channel(str(record.message.channel_id))
                raise ApiError(404, "Unknown Message", 10008)
            message = next(
                (m for m in record.messages if str(m.id) == req.params["message_id"]), None
            )
            if message is None or message.deleted:
                raise ApiError(404, "Unknown Message", 10008)
            return message, self._channel(str(message.channel_id))
        webhook = self._webhook(req.params["webhook_id"], req.params["token"])
        channel = self._webhook_target(webhook, req.query.get("thread_id"))
        message = self._message(channel, req.params["message_id"])
        if message.webhook_id != webhook.id:
            raise ApiError(403, "Cannot edit a message authored by another user", 50005)
        return message, channel

    async def _get_webhook_message(self, req: _Request) -> web.Response:
        message, _ = self._webhook_message(req)
        return _json(message.payload())

    async def _patch_webhook_message(self, req: _Request) -> web.Response:
        message, channel = self._webhook_message(req)
        check_message(req.json or {}, files=len(req.files), existing=message, webhook=True)
        limited = self._check_edit_rate(channel)
        if limited is not None:
            return limited
        self._apply_edit(message, req.json or {}, req.files)
        await self._echo("MESSAGE_UPDATE", message)
        return _json(message.payload())

    async def _delete_webhook_message(self, req: _Request) -> web.Response:
        message, _ = self._webhook_message(req)
        message.deleted = True
        self._notify()
        if not message.ephemeral:
            await self._dispatch_delete(message)
        return web.Response(status=204)

    def _interaction_message(
        self, record: InteractionRecord, payload: dict[str, Any], files: Any, flags: int = 0
    ) -> FakeMessage:
        channel = self._channel(str(record.channel_id))
        message = self._create_message(
            channel,
            {**payload, "flags": int(payload.get("flags") or 0) | flags},
            list(files),
            author=self.bot_user,
            member=self._bot_member(channel),
            application_id=self.application_id,
            interaction_id=record.id,
            interaction_user=record.user,
            type=20 if record.type == 2 else 0,
        )
        return message

    async def _interaction_callback(self, req: _Request) -> web.Response:
        record = self._interaction(req.params["token"])
        if str(record.id) != req.params["interaction_id"]:
            raise ApiError(404, "Unknown interaction", 10062)
        if record.responded:
            raise ApiError(400, "Interaction has already been acknowledged.", 40060)
        body = req.json or {}
        kind = int(body["type"])
        data = body.get("data") or {}
        if kind == 4:
            check_message(data, files=len(req.files), prefix=("data",))
        elif kind == 7:
            check_message(data, files=len(req.files), prefix=("data",), existing=record.message)
        elif kind == 9:
            check_modal(data)
        record.callbacks.append(body)
        record.callback_data = data
        resource: dict[str, Any] | None = None
        loading = False
        if kind == 4:
            record.original = self._interaction_message(record, data, req.files)
            await self._echo("MESSAGE_CREATE", record.original)
        elif kind == 5:
            record.original = self._interaction_message(
                record, {"flags": data.get("flags", 0)}, (), LOADING_FLAG
            )
            loading = True
        elif kind == 7:
            if record.message is None:
                raise ApiError(400, "Interaction has no message to update", 50035)
            self._apply_edit(record.message, data, req.files)
            record.original = record.message
            await self._echo("MESSAGE_UPDATE", record.message)
        elif kind == 8:
            record.choices = data.get("choices", [])
        elif kind == 9:
            record.modal = data
        elif kind not in (1, 6):
            raise ApiError(400, f"Invalid interaction response type {kind}", 50035)
        record.callback_type = kind
        interaction: dict[str, Any] = {"id": str(record.id), "type": record.type}
        if record.original is not None:
            interaction["response_message_id"] = str(record.original.id)
            interaction["response_message_loading"] = loading
            interaction["response_message_ephemeral"] = record.original.ephemeral
            resource = {"type": kind, "message": record.original.payload()}
        elif kind in (8, 9):
            resource = {"type": kind}
        self._notify()
        result: dict[str, Any] = {"interaction": interaction}
        if resource is not None:
            result["resource"] = resource
        return _json(result)

    async def _create_followup(self, req: _Request) -> web.Response:
        record = self._interaction(req.params["token"])
        if not record.responded:
            raise ApiError(400, "Unknown Webhook (interaction not acknowledged yet)", 10015)
        payload = req.json or {}
        check_message(payload, files=len(req.files))
        original = record.original
        if original is not None and original.flags & LOADING_FLAG:
            # The first followup after a deferred response fills in the loading message.
            self._apply_edit(
                original, {k: v for k, v in payload.items() if k != "flags"}, req.files
            )
            record.followups.append(original)
            await self._echo("MESSAGE_CREATE", original)
            return _json(original.payload())
        message = self._interaction_message(record, payload, req.files)
        record.followups.append(message)
        await self._echo("MESSAGE_CREATE", message)
        return _json(message.payload())

    async def _get_guild(self, req: _Request) -> web.Response:
        guild = self._guild(req.params["guild_id"])
        data = guild.rest_payload()
        if req.query.get("with_counts") in ("true", "1"):
            data["approximate_member_count"] = len(guild.members)
            data["approximate_presence_count"] = 0
        return _json(data)

    async def _get_guild_channels(self, req: _Request) -> web.Response:
        guild = self._guild(req.params["guild_id"])
        return _json([c.payload() for c in guild.channels.values()])

    async def _get_guild_roles(self, req: _Request) -> web.Response:
        guild = self._guild(req.params["guild_id"])
        return _json([r.payload() for r in guild.roles.values()])

    async def _get_member(self, req: _Request) -> web.Response:
        guild = self._guild(req.params["guild_id"])
        member = guild.members.get(int(req.params["user_id"]))
        if member is None:
            raise ApiError(404, "Unknown Member", 10007)
        return _json(member.payload())

    async def _get_members(self, req: _Request) -> web.Response:
        guild = self._guild(req.params["guild_id"])
        limit = int(req.query.get("limit", 1))
        after = int(req.query.get("after", 0))
        members = sorted((m for m in guild.members.values() if m.id > after), key=lambda m: m.id)
        return _json([m.payload() for m in members[:limit]])

    async def _create_dm(self, req: _Request) -> web.Response:
        recipient_id = (req.json or {}).get("recipient_id")
        user = self.users.get(int(recipient_id or 0))
        if user is None:
            raise ApiError(404, "Unknown User", 10013)
        if user.id == self.bot_user.id:
            raise ApiError(400, "Cannot send messages to this user", 50007)
        return _json(self.open_dm(user).payload())

    async def _get_user(self, req: _Request) -> web.Response:
        user = self.users.get(int(req.params["user_id"]))
        if user is None:
            raise ApiError(404, "Unknown User", 10013)
        return _json(user.payload())


ROUTES: list[tuple[str, str, str]] = [
    ("GET", "/users/@me", "_get_me"),
    ("GET", "/oauth2/applications/@me", "_get_application"),
    ("GET", "/gateway", "_get_gateway"),
    ("GET", "/gateway/bot", "_get_gateway_bot"),
    ("PUT", "/applications/{application_id}/commands", "_put_global_commands"),
    ("GET", "/applications/{application_id}/commands", "_get_global_commands"),
    (
        "PUT",
        "/applications/{application_id}/guilds/{guild_id}/commands",
        "_put_guild_commands",
    ),
    (
        "GET",
        "/applications/{application_id}/guilds/{guild_id}/commands",
        "_get_guild_commands",
    ),
    ("POST", "/channels/{channel_id}/messages", "_post_message"),
    ("GET", "/channels/{channel_id}/messages", "_get_messages"),
    ("GET", "/channels/{channel_id}/messages/{message_id}", "_get_message"),
    ("PATCH", "/channels/{channel_id}/messages/{message_id}", "_patch_message"),
    ("DELETE", "/channels/{channel_id}/messages/{message_id}", "_delete_message"),
    (
        "PUT",
        "/channels/{channel_id}/messages/{message_id}/reactions/{emoji}/@me",
        "_put_reaction",
    ),
    ("POST", "/channels/{channel_id}/typing", "_typing"),
    ("GET", "/channels/{channel_id}", "_get_channel"),
    ("POST", "/channels/{channel_id}/threads", "_create_thread"),
    ("POST", "/channels/{channel_id}/messages/{message_id}/threads", "_create_thread"),
    ("POST", "/channels/{channel_id}/webhooks", "_create_webhook"),
    ("GET", "/channels/{channel_id}/webhooks", "_channel_webhooks"),
    ("GET", "/guilds/{guild_id}/webhooks", "_guild_webhooks"),
    ("GET", "/webhooks/{webhook_id}", "_get_webhook"),
    ("DELETE", "/webhooks/{webhook_id}", "_delete_webhook"),
    ("PATCH", "/webhooks/{webhook_id}", "_patch_webhook"),
    ("GET", "/webhooks/{webhook_id}/{token}", "_get_webhook_token"),
    ("POST", "/webhooks/{webhook_id}/{token}", "_execute_webhook"),
    ("GET", "/webhooks/{webhook_id}/{token}/messages/{message_id}", "_get_webhook_message"),
    ("PATCH", "/webhooks/{webhook_id}/{token}/messages/{message_id}", "_patch_webhook_message"),
    (
        "DELETE",
        "/webhooks/{webhook_id}/{token}/messages/{message_id}",
        "_delete_webhook_message",
    ),
    ("POST", "/interactions/{interaction_id}/{token}/callback", "_interaction_callback"),
    ("GET", "/guilds/{guild_id}", "_get_guild"),
    ("GET", "/guilds/{guild_id}/channels", "_get_guild_channels"),
    ("GET", "/guilds/{guild_id}/roles", "_get_guild_roles"),
    ("GET", "/guilds/{guild_id}/members/{user_id}", "_get_member"),
    ("GET", "/guilds/{guild_id}/members", "_get_members"),
    ("POST", "/users/@me/channels", "_create_dm"),
    ("GET", "/users/{user_id}", "_get_user"),
]


def _json(data: Any, status: int = 200) -> web.Response:
    # discord.py only parses JSON when the content type is exactly "application/json".
    return web.Response(
        body=json.dumps(data, ensure_ascii=False).encode(),
        status=status,
        headers={"Content-Type": "application/json"},
    )


def _rate_limited(retry_after: float, bucket: str) -> web.Response:
    retry_after = max(retry_after, 0.001)
    response = _json(
        {"message": "You are being rate limited.", "retry_after": retry_after, "global": False},
        429,
    )
    response.headers.update(
        {
            "X-RateLimit-Limit": "5",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": f"{time.time() + retry_after:.3f}",
            "X-RateLimit-Reset-After": f"{retry_after:.3f}",
            "X-RateLimit-Bucket": bucket,
            "X-RateLimit-Scope": "user",
            "Retry-After": str(max(1, int(retry_after + 0.999))),
            # discord.py treats a 429 without "Via" as a Cloudflare ban.
            "Via": "1.1 google",
        }
    )
    return response


async def _read_body(request: web.Request) -> tuple[Any, list[tuple[str, bytes, str | None]]]:
    files: list[tuple[str, bytes, str | None]] = []
    if request.content_type == "multipart/form-data":
        payload: Any = None
        reader = await request.multipart()
        while True:
            part = await reader.next()
            if part is None:
                break
            if not isinstance(part, BodyPartReader):
                continue
            data = await part.read()
            if part.name == "payload_json":
                payload = json.loads(data)
            else:
                ctype = part.headers.get("Content-Type")
                files.append((part.filename or part.name or "file", bytes(data), ctype))
        return payload, files
    if request.can_read_body:
        raw = await request.read()
        if raw:
            return json.loads(raw), files
    return None, files


def _offered_in(command: dict[str, Any], context: int) -> bool:
    """Whether the client offers a global command in a context (0 guild, 1 bot DM).

    ``contexts`` wins when set; otherwise the legacy ``dm_permission`` decides for DMs.
    """
    contexts = command.get("contexts")
    if contexts is not None:
        return context in contexts
    return context != BOT_DM_CONTEXT or command.get("dm_permission") is not False


def _reference(
    message_id: int | str, channel_id: int | str, guild_id: int | None
) -> dict[str, Any]:
    """A reply's message_reference (DM replies have no guild_id)."""
    reference: dict[str, Any] = {
        "type": 0,
        "message_id": str(message_id),
        "channel_id": str(channel_id),
    }
    if guild_id is not None:
        reference["guild_id"] = str(guild_id)
    return reference


def _find_component(components: list[dict[str, Any]], custom_id: str) -> dict[str, Any] | None:
    for component in components:
        if component.get("custom_id") == custom_id:
            return component
        for key in ("components", "accessory", "component"):
            child = component.get(key)
            children = child if isinstance(child, list) else [child] if child else []
            found = _find_component(children, custom_id)
            if found is not None:
                return found
    return None


def _check_typed(item: dict[str, Any], value: Any) -> None:
    """A text input's value as a Discord client lets it be submitted: no longer than its
    max_length (at most 4000), no shorter than its min_length, and not empty when required
    (Discord's default)."""
    text = value if isinstance(value, str) else ""
    longest = min(item.get("max_length") or TEXT_INPUT_VALUE, TEXT_INPUT_VALUE)
    if len(text) > longest:
        raise ValueError(f"a client cannot type {len(text)} characters into a {longest} input")
    if text and len(text) < (item.get("min_length") or 0):
        raise ValueError(f"a client cannot submit fewer than {item['min_length']} characters")
    if not text and item.get("required", True):
        raise ValueError("a client cannot submit a required text input empty")


def _modal_submission(
    components: list[dict[str, Any]], values: dict[str, str | list[str]]
) -> list[dict[str, Any]]:
    """Mirror the modal's layout (action rows or labels) with the submitted values; a text
    input the test leaves out is submitted with its prefilled value, as a user would."""

    def answer(item: dict[str, Any]) -> dict[str, Any]:
        custom_id = item.get("custom_id")
        value = values.get(custom_id or "", item.get("value") or "" if item["type"] == 4 else [])
        out: dict[str, Any] = {"type": item["type"], "custom_id": custom_id}
        if item["type"] == 4:
            _check_typed(item, value)
            out["value"] = value
        else:
            out["values"] = value if isinstance(value, list) else [value]
        return out

    result = []
    for component in components:
        if component["type"] == 1:
            children = [answer(c) for c in component.get("components", [])]
            result.append({"type": 1, "components": children})
        elif component["type"] == 18 and "component" in component:
            result.append({"type": 18, "component": answer(component["component"])})
    return result


__all__ = [
    "ROUTES",
    "ApiError",
    "FakeDiscord",
    "RateLimitConfig",
    "Scenario",
]


#: Discord's bounds on an integer or number option without its own (a double's exact integers).
OPTION_NUMBER_BOUND = 2**53


def _within_range(definition: dict[str, Any], value: Any) -> None:
    """An integer or number option outside its `min_value`/`max_value` (or Discord's own
    bounds) is refused by the client before anything is sent."""
    if definition["type"] not in (4, 10):
        return
    low = definition.get("min_value", -OPTION_NUMBER_BOUND)
    high = definition.get("max_value", OPTION_NUMBER_BOUND)
    if not low <= value <= high:
        raise ValueError(f"option {definition['name']!r} must be in [{low}, {high}]: {value}")
