"""The real discord.py client against the loopback fake Discord."""

from __future__ import annotations

import asyncio
import io
import warnings
from collections.abc import AsyncIterator

import pytest

with warnings.catch_warnings():
    # discord.py imports the stdlib audioop (deprecated on 3.11+) for voice.
    warnings.filterwarnings("ignore", "'audioop' is deprecated", DeprecationWarning)
    import discord
    from discord import app_commands
    from discord.ext import commands

from discord.errors import HTTPException
from discord.http import Route

from tests.discord_fake import (
    ATTACH_FILES,
    EPHEMERAL_FLAG,
    SEND_MESSAGES,
    SEND_MESSAGES_IN_THREADS,
    USE_APPLICATION_COMMANDS,
    VIEW_CHANNEL,
    FakeDiscord,
    InteractionRecord,
    Scenario,
)
from tests.discord_fake.fixtures import discord_fake, running_client

__all__ = ["discord_fake"]

PNG_BYTES = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


class RoleplayGroup(app_commands.Group):
    """롤플레이 명령."""

    # A subcommand group holds subcommands only: Discord refuses a group inside a group.
    reset = app_commands.Group(name="reset", description="초기화")

    @app_commands.command(name="start", description="롤플레이를 시작합니다")
    async def start(
        self,
        interaction: discord.Interaction,
        character: str,
        card: discord.Attachment | None = None,
    ) -> None:
        await interaction.response.defer(thinking=True)
        extra = ""
        if card is not None:
            data = await card.read()
            extra = f" (카드 {card.filename}, {len(data)}바이트)"
        await interaction.followup.send(f"{character}와(과)의 롤플레이를 시작합니다{extra}")

    @start.autocomplete("character")
    async def start_character(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        names = ["민지", "민수", "서연"]
        return [app_commands.Choice(name=n, value=n) for n in names if n.startswith(current)]

    @app_commands.command(name="secret", description="나만 보기")
    async def secret(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message("비밀 메시지입니다", ephemeral=True)

    @app_commands.command(name="form", description="캐릭터 만들기")
    async def form(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_modal(CharacterModal())

    @app_commands.command(name="button", description="버튼")
    async def button(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message("눌러 주세요", view=ConfirmView())

    @app_commands.command(name="edit", description="응답 수정")
    async def edit(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message("처음 응답")
        await interaction.edit_original_response(content="수정된 응답")
        original = await interaction.original_response()
        await interaction.followup.send(f"원본: {original.content}", ephemeral=True)

    @reset.command(name="all", description="전부 초기화")
    async def reset_all(self, interaction: discord.Interaction, confirm: bool) -> None:
        allowed = interaction.permissions.manage_guild
        text = "초기화했습니다" if allowed and confirm else "권한이 없습니다"
        await interaction.response.send_message(text, ephemeral=True)


class CharacterModal(discord.ui.Modal, title="캐릭터 만들기"):
    name: discord.ui.TextInput[CharacterModal] = discord.ui.TextInput(
        label="이름", custom_id="character_name"
    )

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message(f"{self.name.value} 캐릭터를 만들었습니다")


class ConfirmView(discord.ui.View):
    @discord.ui.button(label="확인", custom_id="rp:confirm")
    async def confirm(
        self, interaction: discord.Interaction, button: discord.ui.Button[ConfirmView]
    ) -> None:
        await interaction.response.edit_message(content="확인했습니다", view=None)


class FakeTestBot(commands.Bot):
    def __init__(self) -> None:
        intents = discord.Intents.default()
        intents.message_content = True
        intents.members = True
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents,
            guild_ready_timeout=0.05,
            max_messages=None,
        )
        self.handled: list[int] = []
        self.interactions: list[discord.Interaction] = []

    async def setup_hook(self) -> None:
        self.tree.add_command(RoleplayGroup(name="rp", description="롤플레이"))

        @self.tree.command(name="whoami", description="누구인지 알려 줍니다")
        async def whoami(interaction: discord.Interaction) -> None:
            where = "DM" if interaction.guild is None else interaction.guild.name
            await interaction.response.send_message(f"{interaction.user.id} @ {where}")
            await interaction.user.send("DM으로 인사드려요")

        @self.tree.command(name="quiet", description="응답하지 않습니다")
        async def quiet(interaction: discord.Interaction) -> None:
            """Leaves the interaction for the test to answer through raw REST calls."""

        @self.tree.command(name="server", description="서버 전용")
        @app_commands.guild_only()
        async def server(interaction: discord.Interaction) -> None:
            await interaction.response.send_message("서버에서만 됩니다", ephemeral=True)

        await self.tree.sync()

    async def on_interaction(self, interaction: discord.Interaction) -> None:
        # Kept so tests can read what discord.py parsed (permissions, guild, user).
        self.interactions.append(interaction)

    async def on_message(self, message: discord.Message) -> None:
        if message.author.bot or message.webhook_id is not None:
            return
        self.handled.append(message.id)
        if message.attachments:
            data = await message.attachments[0].read()
            await message.channel.send(f"첨부 파일 {len(data)}바이트를 받았습니다")
        elif message.content.startswith("안녕"):
            name = getattr(message.author, "display_name", message.author.name)
            await message.reply(f"안녕하세요, {name}님!")


@pytest.fixture
async def bot(discord_fake: FakeDiscord) -> AsyncIterator[FakeTestBot]:
    client = FakeTestBot()
    async with running_client(client, discord_fake):
        yield client


async def parsed(
    fake: FakeDiscord, bot: FakeTestBot, record: InteractionRecord
) -> discord.Interaction:
    """The discord.Interaction the bot built for ``record``, once the bot answered it."""
    await fake.wait_for_response(record)
    return next(i for i in bot.interactions if i.id == record.id)


async def test_login_reads_guild_and_syncs_commands(
    discord_fake: FakeDiscord, bot: FakeTestBot
) -> None:
    scenario = discord_fake.scenario
    assert scenario is not None
    guild = bot.get_guild(scenario.guild.id)
    assert guild is not None and guild.name == "시나트라 테스트 서버"
    assert bot.user is not None and bot.user.id == discord_fake.bot_user.id
    assert guild.get_channel(scenario.nsfw_channel.id).is_nsfw()  # type: ignore[union-attr]
    assert guild.get_thread(scenario.thread.id) is not None
    moderator = guild.get_member(scenario.moderator.id)
    assert moderator is not None and moderator.display_name == "관리자 민수"
    assert moderator.guild_permissions.manage_guild
    assert "rp" in discord_fake.global_commands
    paths = [(c.method, c.route) for c in discord_fake.calls]
    assert ("GET", "/users/@me") in paths
    assert ("GET", "/oauth2/applications/@me") in paths
    assert discord_fake.unknown_routes == []


async def test_slash_command_defers_then_follows_up(
    discord_fake: FakeDiscord, bot: FakeTestBot
) -> None:
    scenario = discord_fake.scenario
    assert scenario is not None
    record = await discord_fake.slash(scenario.members[0], "rp start", character="민지")
    await discord_fake.wait_for_response(record)
    assert record.callback_type == 5
    followup = await discord_fake.wait_for_followup(record)
    assert followup.content == "민지와(과)의 롤플레이를 시작합니다"
    assert followup in scenario.general.messages
    assert not record.ephemeral


async def test_slash_command_attachment_option_is_downloadable(
    discord_fake: FakeDiscord, bot: FakeTestBot
) -> None:
    scenario = discord_fake.scenario
    assert scenario is not None
    record = await discord_fake.slash(
        scenario.members[1],
        "rp start",
        character="서연",
        card=("서연.png", PNG_BYTES, "image/png"),
    )
    followup = await discord_fake.wait_for_followup(record)
    assert (
        followup.content
        == f"서연와(과)의 롤플레이를 시작합니다 (카드 서연.png, {len(PNG_BYTES)}바이트)"
    )


async def test_autocomplete_returns_choices(discord_fake: FakeDiscord, bot: FakeTestBot) -> None:
    scenario = discord_fake.scenario
    assert scenario is not None
    record = await discord_fake.autocomplete(
        scenario.members[0], "rp start", focused="character", value="민"
    )
    await discord_fake.wait_for_response(record)
    assert [c["value"] for c in record.choices or []] == ["민지", "민수"]


async def test_ephemeral_response_stays_out_of_the_channel(
    discord_fake: FakeDiscord, bot: FakeTestBot
) -> None:
    scenario = discord_fake.scenario
    assert scenario is not None
    record = await discord_fake.slash(scenario.members[0], "rp secret")
    await discord_fake.wait_for_response(record)
    assert record.ephemeral
    assert record.content == "비밀 메시지입니다"
    assert record.original is not None and record.original.flags & EPHEMERAL_FLAG
    assert record.original not in scenario.general.messages


async def test_nested_group_sees_member_permissions(
    discord_fake: FakeDiscord, bot: FakeTestBot
) -> None:
    scenario = discord_fake.scenario
    assert scenario is not None
    allowed = await discord_fake.slash(scenario.moderator, "rp reset all", confirm=True)
    denied = await discord_fake.slash(scenario.members[0], "rp reset all", confirm=True)
    await discord_fake.wait_for_response(allowed)
    await discord_fake.wait_for_response(denied)
    assert allowed.content == "초기화했습니다"
    assert denied.content == "권한이 없습니다"


async def test_modal_submission_reaches_on_submit(
    discord_fake: FakeDiscord, bot: FakeTestBot
) -> None:
    scenario = discord_fake.scenario
    assert scenario is not None
    member = scenario.members[0]
    opened = await discord_fake.slash(member, "rp form")
    await discord_fake.wait_for_response(opened)
    assert opened.modal is not None and opened.modal["title"] == "캐릭터 만들기"
    submitted = await discord_fake.submit_modal(member, opened, {"character_name": "민지"})
    await discord_fake.wait_for_response(submitted)
    assert submitted.content == "민지 캐릭터를 만들었습니다"


async def test_button_press_updates_the_message(
    discord_fake: FakeDiscord, bot: FakeTestBot
) -> None:
    scenario = discord_fake.scenario
    assert scenario is not None
    member = scenario.members[0]
    record = await discord_fake.slash(member, "rp button")
    await discord_fake.wait_for_response(record)
    assert record.original is not None
    pressed = await discord_fake.press(member, record.original, "rp:confirm")
    await discord_fake.wait_for_response(pressed)
    assert pressed.callback_type == 7
    assert record.original.content == "확인했습니다"
    assert record.original.components == []
    assert record.original.versions[0]["content"] == "눌러 주세요"


async def test_message_handler_replies(discord_fake: FakeDiscord, bot: FakeTestBot) -> None:
    scenario = discord_fake.scenario
    assert scenario is not None
    said = await discord_fake.say(scenario.general, scenario.members[1], "안녕 봇아")
    reply = await discord_fake.wait_for_message(scenario.general)
    assert reply.content == "안녕하세요, 하늘이님!"
    assert reply.author is discord_fake.bot_user
    assert reply.reference is not None and reply.reference["message_id"] == str(said.id)


async def test_attachment_download_and_multipart_upload(
    discord_fake: FakeDiscord, bot: FakeTestBot
) -> None:
    scenario = discord_fake.scenario
    assert scenario is not None
    await discord_fake.say(
        scenario.general,
        scenario.members[0],
        "카드예요",
        attachments=[("카드.png", PNG_BYTES, "image/png")],
    )
    reply = await discord_fake.wait_for_message(scenario.general)
    assert reply.content == f"첨부 파일 {len(PNG_BYTES)}바이트를 받았습니다"

    channel = bot.get_channel(scenario.general.id)
    assert isinstance(channel, discord.TextChannel)
    sent = await channel.send("내보낸 카드", file=discord.File(io.BytesIO(PNG_BYTES), "민지.png"))
    stored = discord_fake.messages[sent.id]
    assert [(a.filename, a.data) for a in stored.attachments] == [("민지.png", PNG_BYTES)]
    assert await sent.attachments[0].read() == PNG_BYTES


async def test_webhook_in_thread_send_and_edit(discord_fake: FakeDiscord, bot: FakeTestBot) -> None:
    scenario = discord_fake.scenario
    assert scenario is not None
    parent = bot.get_channel(scenario.general.id)
    assert isinstance(parent, discord.TextChannel)
    thread = parent.get_thread(scenario.thread.id)
    assert thread is not None
    webhook = await parent.create_webhook(name="시나트라 웹훅")
    message = await webhook.send(
        "민지: 안녕!",
        username="민지",
        avatar_url="https://example.invalid/minji.png",
        thread=thread,
        wait=True,
    )
    await message.edit(content="민지: 안녕! 반가워.")

    stored = discord_fake.messages[message.id]
    assert stored in scenario.thread.messages
    assert stored.username == "민지"
    assert stored.avatar_url == "https://example.invalid/minji.png"
    assert [v["content"] for v in stored.versions] == ["민지: 안녕!", "민지: 안녕! 반가워."]
    same = discord.Webhook.from_url(webhook.url, client=bot)
    assert same.id == webhook.id
    assert discord_fake.unknown_routes == []


async def test_edit_rate_limit_answers_429_and_retry_succeeds(
    discord_fake: FakeDiscord, bot: FakeTestBot
) -> None:
    scenario = discord_fake.scenario
    assert scenario is not None
    discord_fake.rate_limits.edit_window = 0.3
    channel = bot.get_channel(scenario.general.id)
    assert isinstance(channel, discord.TextChannel)
    sent = await channel.send("스트리밍 중")
    for step in range(7):
        await sent.edit(content=f"스트리밍 중 {step}")
    stored = discord_fake.messages[sent.id]
    assert stored.content == "스트리밍 중 6"
    assert stored.edit_count == 7
    assert discord_fake.rate_limited, "expected at least one 429"
    assert discord_fake.rate_limited[0].route == "/channels/{channel_id}/messages/{message_id}"


async def test_forced_rate_limit_storm_is_retried(
    discord_fake: FakeDiscord, bot: FakeTestBot
) -> None:
    scenario = discord_fake.scenario
    assert scenario is not None
    channel = bot.get_channel(scenario.general.id)
    assert isinstance(channel, discord.TextChannel)
    discord_fake.force_rate_limit("POST", "/channels/{channel_id}/messages", times=2)
    sent = await channel.send("폭풍 속 메시지")
    assert discord_fake.messages[sent.id].content == "폭풍 속 메시지"
    assert len(discord_fake.rate_limited) == 2


async def test_dropped_connection_resumes_without_duplicates(
    discord_fake: FakeDiscord, bot: FakeTestBot
) -> None:
    scenario = discord_fake.scenario
    assert scenario is not None
    first = await discord_fake.say(scenario.general, scenario.members[0], "안녕 연결 끊기 전")
    await discord_fake.wait_for_message(scenario.general)
    await discord_fake.drop_connection()
    missed = await discord_fake.say(scenario.general, scenario.members[0], "안녕 끊긴 동안")
    await discord_fake.wait_until(lambda: discord_fake.resume_count == 1)
    await discord_fake.wait_for_message(scenario.general, after=missed)
    after = await discord_fake.say(scenario.general, scenario.members[0], "안녕 다시 연결됨")
    await discord_fake.wait_for_message(scenario.general)
    assert bot.handled == [first.id, missed.id, after.id]
    assert discord_fake.identify_count == 1


async def test_unknown_route_is_recorded(discord_fake: FakeDiscord, bot: FakeTestBot) -> None:
    scenario = discord_fake.scenario
    assert scenario is not None
    channel = bot.get_channel(scenario.general.id)
    assert isinstance(channel, discord.TextChannel)
    with pytest.raises(discord.NotFound):
        await channel.guild.fetch_emojis()
    assert [c.path for c in discord_fake.unknown_routes] == [f"/guilds/{scenario.guild.id}/emojis"]


async def test_history_and_fetch(discord_fake: FakeDiscord, bot: FakeTestBot) -> None:
    scenario = discord_fake.scenario
    assert scenario is not None
    for text in ("하나", "둘", "셋"):
        await discord_fake.say(scenario.thread, scenario.members[2], text)
    thread = bot.get_channel(scenario.thread.id)
    assert isinstance(thread, discord.Thread)
    history = [m.content async for m in thread.history(limit=10)]
    assert history == ["셋", "둘", "하나"]
    member = await thread.guild.fetch_member(scenario.members[2].id)
    assert member.display_name == "박서연"
    fetched = await bot.fetch_channel(scenario.nsfw_channel.id)
    assert isinstance(fetched, discord.TextChannel) and fetched.is_nsfw()


async def test_sharded_bot_logs_in_via_gateway_bot(discord_fake: FakeDiscord) -> None:
    intents = discord.Intents.default()
    intents.message_content = True
    client = commands.AutoShardedBot(command_prefix="!", intents=intents, guild_ready_timeout=0.05)
    async with running_client(client, discord_fake):
        assert client.shard_count == 1
        assert [c.route for c in discord_fake.calls if c.route == "/gateway/bot"]
        scenario = discord_fake.scenario
        assert scenario is not None
        assert client.get_guild(scenario.guild.id) is not None
    await asyncio.sleep(0)


async def test_webhook_edit_in_thread_is_rate_limited_then_retried(
    discord_fake: FakeDiscord, bot: FakeTestBot
) -> None:
    scenario = discord_fake.scenario
    assert scenario is not None
    discord_fake.rate_limits.edit_window = 0.3
    parent = bot.get_channel(scenario.general.id)
    assert isinstance(parent, discord.TextChannel)
    thread = parent.get_thread(scenario.thread.id)
    assert thread is not None
    webhook = await parent.create_webhook(name="민지")
    message = await webhook.send("민지: ...", thread=thread, wait=True)
    for step in range(7):
        await message.edit(content=f"민지: {'.' * step}")
    stored = discord_fake.messages[message.id]
    assert stored.edit_count == 7
    assert [c.route for c in discord_fake.rate_limited] == [
        "/webhooks/{webhook_id}/{token}/messages/{message_id}"
    ] * len(discord_fake.rate_limited)
    assert discord_fake.rate_limited


async def test_webhook_edit_without_thread_id_is_unknown_message(
    discord_fake: FakeDiscord, bot: FakeTestBot
) -> None:
    scenario = discord_fake.scenario
    assert scenario is not None
    parent = bot.get_channel(scenario.general.id)
    assert isinstance(parent, discord.TextChannel)
    thread = parent.get_thread(scenario.thread.id)
    assert thread is not None
    webhook = await parent.create_webhook(name="민지")
    message = await webhook.send("스레드 안의 말", thread=thread, wait=True)
    with pytest.raises(discord.NotFound):
        await webhook.edit_message(message.id, content="스레드 없이 수정")
    await webhook.edit_message(message.id, content="스레드와 함께 수정", thread=thread)
    assert discord_fake.messages[message.id].content == "스레드와 함께 수정"


async def test_channel_added_after_login_then_used(
    discord_fake: FakeDiscord, bot: FakeTestBot
) -> None:
    scenario = discord_fake.scenario
    assert scenario is not None
    channel = discord_fake.add_channel(scenario.guild, "새-채널")
    await discord_fake.say(channel, scenario.members[0], "안녕 새 채널")
    reply = await discord_fake.wait_for_message(channel)
    assert reply.content == "안녕하세요, 김지수님!"
    text_channel = bot.get_channel(channel.id)
    assert isinstance(text_channel, discord.TextChannel)
    created = await text_channel.create_thread(
        name="새 이야기", type=discord.ChannelType.public_thread
    )
    await created.send("스레드 첫 메시지")
    thread = discord_fake.channels[created.id]
    assert thread.parent_id == channel.id
    assert [m.content for m in thread.messages] == ["스레드 첫 메시지"]


async def test_many_channels_and_members(discord_fake: FakeDiscord) -> None:
    scenario = discord_fake.scenario
    assert scenario is not None
    guild = scenario.guild
    channels = [discord_fake.add_channel(guild, f"방-{i}") for i in range(50)]
    members = [discord_fake.add_member(guild, f"user{i}", nick=f"손님{i}") for i in range(200)]
    client = FakeTestBot()
    async with running_client(client, discord_fake):
        assert len(client.get_guild(guild.id).members) == len(guild.members)  # type: ignore[union-attr]
        for index, channel in enumerate(channels):
            await discord_fake.say(channel, members[index * 4], "안녕하세요")
        replies = await asyncio.gather(
            *(discord_fake.wait_for_message(channel) for channel in channels)
        )
    assert [r.content for r in replies] == [f"안녕하세요, 손님{i * 4}님!" for i in range(50)]


async def test_original_response_edit_fetch_and_ephemeral_followup(
    discord_fake: FakeDiscord, bot: FakeTestBot
) -> None:
    scenario = discord_fake.scenario
    assert scenario is not None
    record = await discord_fake.slash(scenario.members[0], "rp edit")
    followup = await discord_fake.wait_for_followup(record)
    assert record.content == "수정된 응답"
    assert record.original is not None and record.original.versions[0]["content"] == "처음 응답"
    assert followup.content == "원본: 수정된 응답"
    assert followup.ephemeral and followup not in scenario.general.messages


async def test_webhook_from_url_send_without_wait(
    discord_fake: FakeDiscord, bot: FakeTestBot
) -> None:
    scenario = discord_fake.scenario
    assert scenario is not None
    parent = bot.get_channel(scenario.general.id)
    assert isinstance(parent, discord.TextChannel)
    created = await parent.create_webhook(name="시나트라")
    webhook = discord.Webhook.from_url(created.url, client=bot)
    await webhook.send("웹훅 URL로 보낸 말", username="서연")
    stored = await discord_fake.wait_for_message(scenario.general)
    assert (stored.username, stored.content) == ("서연", "웹훅 URL로 보낸 말")
    assert [w.name for w in await parent.webhooks()] == ["시나트라"]


# ---------------------------------------------------------------- permission overwrites


async def test_role_overwrite_denies_sending_in_that_channel_only(
    discord_fake: FakeDiscord, bot: FakeTestBot
) -> None:
    scenario = discord_fake.scenario
    assert scenario is not None
    quiet = discord_fake.add_role(scenario.guild, "조용히")
    member = discord_fake.add_member(scenario.guild, "mina", nick="미나", roles=[quiet])
    discord_fake.set_overwrite(scenario.general, quiet, deny=SEND_MESSAGES)
    general = bot.get_channel(scenario.general.id)
    assert isinstance(general, discord.TextChannel)
    role = discord.Object(quiet.id)
    await discord_fake.wait_until(lambda: general.overwrites_for(role).send_messages is False)

    here = await parsed(discord_fake, bot, await discord_fake.slash(member, "rp secret"))
    elsewhere = await parsed(
        discord_fake,
        bot,
        await discord_fake.slash(member, "rp secret", channel=scenario.nsfw_channel),
    )
    assert here.permissions.send_messages is False
    assert here.permissions.view_channel and here.permissions.attach_files
    assert elsewhere.permissions.send_messages is True
    assert here.app_permissions.send_messages  # the bot's role has no overwrite here
    # discord.py's own computation from the cached overwrite agrees with the payload.
    cached = general.guild.get_member(member.id)
    assert cached is not None and general.permissions_for(cached).send_messages is False

    with pytest.raises(PermissionError, match="SEND_MESSAGES"):
        await discord_fake.say(scenario.general, member, "말할 수 있을까?")
    await discord_fake.say(scenario.nsfw_channel, member, "여기서는 돼요")

    discord_fake.remove_overwrite(scenario.general, quiet)
    await discord_fake.wait_until(lambda: general.overwrites_for(role).is_empty())
    again = await parsed(discord_fake, bot, await discord_fake.slash(member, "rp secret"))
    assert again.permissions.send_messages is True


async def test_member_overwrite_beats_role_overwrites(
    discord_fake: FakeDiscord, bot: FakeTestBot
) -> None:
    scenario = discord_fake.scenario
    assert scenario is not None
    guild = scenario.guild
    quiet = discord_fake.add_role(guild, "조용히")
    speaker = discord_fake.add_role(guild, "발언자")
    both = discord_fake.add_member(guild, "both", roles=[quiet, speaker])
    forgiven = discord_fake.add_member(guild, "forgiven", roles=[quiet])
    discord_fake.set_overwrite(scenario.general, quiet, deny=SEND_MESSAGES | ATTACH_FILES)
    # Role overwrites combine: all denies first, then all allows.
    discord_fake.set_overwrite(scenario.general, speaker, allow=SEND_MESSAGES)
    discord_fake.set_overwrite(scenario.general, forgiven, allow=SEND_MESSAGES)
    # @everyone comes first, so a role's allow overrides it.
    discord_fake.set_overwrite(scenario.nsfw_channel, guild.everyone_role, deny=VIEW_CHANNEL)
    discord_fake.set_overwrite(scenario.nsfw_channel, speaker, allow=VIEW_CHANNEL)

    assert guild.permissions_in(scenario.general, both) & SEND_MESSAGES
    assert not guild.permissions_in(scenario.general, both) & ATTACH_FILES
    assert guild.permissions_in(scenario.nsfw_channel, both) & VIEW_CHANNEL
    assert guild.permissions_in(scenario.nsfw_channel, forgiven) == 0  # no VIEW_CHANNEL
    assert guild.permissions_in(scenario.nsfw_channel, scenario.owner) & VIEW_CHANNEL

    record = await discord_fake.slash(forgiven, "rp secret")
    seen = await parsed(discord_fake, bot, record)
    assert seen.permissions.send_messages is True
    assert seen.permissions.attach_files is False
    with pytest.raises(PermissionError, match="ATTACH_FILES"):
        await discord_fake.say(
            scenario.general, forgiven, "카드", attachments=[("a.png", PNG_BYTES, "image/png")]
        )
    with pytest.raises(PermissionError, match="VIEW_CHANNEL"):
        await discord_fake.slash(forgiven, "rp secret", channel=scenario.nsfw_channel)

    nsfw = bot.get_channel(scenario.nsfw_channel.id)
    assert isinstance(nsfw, discord.TextChannel)
    await discord_fake.wait_until(lambda: len(nsfw.overwrites) == 2)
    cached_both = nsfw.guild.get_member(both.id)
    assert cached_both is not None and nsfw.permissions_for(cached_both).view_channel
    owner_view = await parsed(
        discord_fake,
        bot,
        await discord_fake.slash(scenario.owner, "rp secret", channel=scenario.nsfw_channel),
    )
    assert owner_view.permissions.administrator and owner_view.permissions.view_channel
    # @everyone's overwrite hides the channel from the bot too.
    assert owner_view.app_permissions.value == 0


async def test_thread_takes_its_parents_overwrites(
    discord_fake: FakeDiscord, bot: FakeTestBot
) -> None:
    scenario = discord_fake.scenario
    assert scenario is not None
    member = scenario.members[0]
    everyone = scenario.guild.everyone_role
    discord_fake.set_overwrite(scenario.general, everyone, deny=SEND_MESSAGES_IN_THREADS)
    with pytest.raises(ValueError, match="parent"):
        discord_fake.set_overwrite(scenario.thread, everyone, deny=SEND_MESSAGES)

    record = await discord_fake.slash(member, "rp secret", channel=scenario.thread)
    seen = await parsed(discord_fake, bot, record)
    assert seen.permissions.send_messages_in_threads is False
    assert seen.permissions.send_messages is True
    assert seen.app_permissions.send_messages_in_threads is False
    thread = bot.get_channel(scenario.thread.id)
    assert isinstance(thread, discord.Thread)
    cached = thread.guild.get_member(member.id)
    assert cached is not None
    await discord_fake.wait_until(
        lambda: thread.permissions_for(cached).send_messages_in_threads is False
    )

    with pytest.raises(PermissionError, match="SEND_MESSAGES_IN_THREADS"):
        await discord_fake.say(scenario.thread, member, "스레드에 말하기")
    await discord_fake.say(scenario.general, member, "채널에는 말할 수 있어요")
    # The bot cannot post in the thread either: Discord answers 403 Missing Permissions.
    with pytest.raises(discord.Forbidden):
        await thread.send("봇도 못 써요")


async def test_bot_overwrite_shows_in_app_permissions_and_blocks_its_messages(
    discord_fake: FakeDiscord, bot: FakeTestBot
) -> None:
    scenario = discord_fake.scenario
    assert scenario is not None
    bot_member = scenario.guild.members[discord_fake.bot_user.id]
    discord_fake.set_overwrite(scenario.nsfw_channel, bot_member, deny=SEND_MESSAGES)
    record = await discord_fake.slash(
        scenario.members[1], "rp secret", channel=scenario.nsfw_channel
    )
    seen = await parsed(discord_fake, bot, record)
    assert seen.app_permissions.send_messages is False
    assert seen.permissions.send_messages is True
    assert record.content == "비밀 메시지입니다"  # interaction responses need no channel rights
    channel = bot.get_channel(scenario.nsfw_channel.id)
    assert isinstance(channel, discord.TextChannel)
    with pytest.raises(discord.Forbidden):
        await channel.send("보낼 수 없는 말")
    general = bot.get_channel(scenario.general.id)
    assert isinstance(general, discord.TextChannel)
    await general.send("여기는 괜찮아요")


async def test_commands_need_use_application_commands(discord_fake: FakeDiscord) -> None:
    scenario = discord_fake.scenario
    assert scenario is not None
    discord_fake.global_commands["ping"] = {"id": "1", "name": "ping", "options": []}
    member = scenario.members[0]
    discord_fake.set_overwrite(scenario.general, member, deny=USE_APPLICATION_COMMANDS)
    with pytest.raises(PermissionError, match="USE_APPLICATION_COMMANDS"):
        await discord_fake.slash(member, "ping")


# ---------------------------------------------------------------- DMs


async def test_dm_slash_command_reaches_global_command_and_bot_dms_back(
    discord_fake: FakeDiscord, bot: FakeTestBot
) -> None:
    scenario = discord_fake.scenario
    assert scenario is not None
    user = scenario.members[0].user
    dm = discord_fake.open_dm(scenario.members[0])
    assert discord_fake.open_dm(user) is dm and dm.guild_id is None

    record = await discord_fake.slash(user, "whoami", channel=dm)
    seen = await parsed(discord_fake, bot, record)
    assert record.content == f"{user.id} @ DM"
    assert record.guild_id is None and record.member is None and record.user is user
    assert seen.guild is None and seen.guild_id is None
    assert seen.user.id == user.id and not isinstance(seen.user, discord.Member)
    assert isinstance(seen.channel, discord.DMChannel)
    assert seen.channel.recipient is not None and seen.channel.recipient.id == user.id
    assert seen.context.dm_channel and not seen.context.guild
    assert seen.permissions.value == 0
    assert seen.app_permissions.embed_links and seen.app_permissions.attach_files

    sent = await discord_fake.wait_for_message(dm, lambda m: m.content == "DM으로 인사드려요")
    assert sent.author is discord_fake.bot_user and sent.guild_id is None
    assert "guild_id" not in sent.payload()
    assert [c.json for c in discord_fake.calls if c.route == "/users/@me/channels"] == [
        {"recipient_id": user.id}
    ]
    assert discord_fake.unknown_routes == []


async def test_dm_messages_both_ways(discord_fake: FakeDiscord, bot: FakeTestBot) -> None:
    scenario = discord_fake.scenario
    assert scenario is not None
    user = scenario.members[0].user
    dm = discord_fake.open_dm(user)
    received = asyncio.ensure_future(
        bot.wait_for("message", check=lambda m: m.content == "안녕 DM이야")
    )
    said = await discord_fake.say(dm, user, "안녕 DM이야")
    message = await asyncio.wait_for(received, 5)
    assert message.guild is None and isinstance(message.channel, discord.DMChannel)
    assert isinstance(message.author, discord.User) and message.author.id == user.id
    assert "guild_id" not in said.payload(with_member=True)
    assert "member" not in said.payload(with_member=True)
    reply = await discord_fake.wait_for_message(dm)
    assert reply.content == "안녕하세요, 김지수님!"
    assert reply.reference is not None and "guild_id" not in reply.reference
    with pytest.raises(ValueError, match="recipient"):
        await discord_fake.say(dm, scenario.members[1], "남의 DM")

    fetched = await bot.fetch_channel(dm.id)
    assert isinstance(fetched, discord.DMChannel)
    sent = await fetched.send("DM 보내기")
    await sent.edit(content="DM 고치기")
    assert [m.content async for m in fetched.history(limit=2)] == ["DM 고치기", reply.content]
    await sent.delete()
    assert discord_fake.messages[sent.id].deleted

    other = await bot.fetch_user(scenario.members[2].id)
    await other.send("처음 보내는 DM")
    other_dm = discord_fake.open_dm(scenario.members[2])
    assert [m.content for m in other_dm.messages] == ["처음 보내는 DM"]
    with pytest.raises(discord.NotFound):
        await bot.http.start_private_message(12345)
    with pytest.raises(discord.HTTPException):
        await bot.http.create_webhook(dm.id, name="DM 웹훅")


async def test_dm_interactions_defer_ephemeral_buttons_and_modals(
    discord_fake: FakeDiscord, bot: FakeTestBot
) -> None:
    scenario = discord_fake.scenario
    assert scenario is not None
    user = scenario.members[2].user
    dm = discord_fake.open_dm(user)

    deferred = await discord_fake.slash(user, "rp start", channel=dm, character="서연")
    followup = await discord_fake.wait_for_followup(deferred)
    assert followup.content == "서연와(과)의 롤플레이를 시작합니다"
    assert followup in dm.messages and followup.guild_id is None

    secret = await discord_fake.slash(user, "rp secret", channel=dm)
    await discord_fake.wait_for_response(secret)
    assert secret.ephemeral and secret.original not in dm.messages

    edited = await discord_fake.slash(user, "rp edit", channel=dm)
    second = await discord_fake.wait_for_followup(edited)
    assert edited.content == "수정된 응답" and second.content == "원본: 수정된 응답"
    assert second.ephemeral

    choices = await discord_fake.autocomplete(user, "rp start", channel=dm, focused="character")
    await discord_fake.wait_for_response(choices)
    assert [c["value"] for c in choices.choices or []] == ["민지", "민수", "서연"]

    buttons = await discord_fake.slash(user, "rp button", channel=dm)
    await discord_fake.wait_for_response(buttons)
    assert buttons.original is not None
    pressed = await discord_fake.press(user, buttons.original, "rp:confirm")
    await discord_fake.wait_for_response(pressed)
    assert buttons.original.content == "확인했습니다"
    pressed_seen = next(i for i in bot.interactions if i.id == pressed.id)
    assert pressed_seen.guild is None and pressed_seen.message is not None

    opened = await discord_fake.slash(user, "rp form", channel=dm)
    await discord_fake.wait_for_response(opened)
    submitted = await discord_fake.submit_modal(user, opened, {"character_name": "민지"})
    await discord_fake.wait_for_response(submitted)
    assert submitted.content == "민지 캐릭터를 만들었습니다"
    assert submitted.channel_id == dm.id
    assert discord_fake.unknown_routes == []


async def test_guild_only_command_is_refused_in_dm(
    discord_fake: FakeDiscord, bot: FakeTestBot
) -> None:
    scenario = discord_fake.scenario
    assert scenario is not None
    synced = discord_fake.global_commands["server"]
    assert synced["contexts"] == [0] and synced["dm_permission"] is False
    member = scenario.members[0]
    dm = discord_fake.open_dm(member)
    with pytest.raises(LookupError, match="not available in DMs"):
        await discord_fake.slash(member, "server", channel=dm)
    with pytest.raises(LookupError, match="not available in DMs"):
        await discord_fake.slash(member.user, "server", channel=dm)
    record = await discord_fake.slash(member, "server")
    await discord_fake.wait_for_response(record)
    assert record.content == "서버에서만 됩니다"


async def test_command_availability_follows_contexts_and_scope(discord_fake: FakeDiscord) -> None:
    scenario = discord_fake.scenario
    assert scenario is not None
    user = scenario.members[0].user
    dm = discord_fake.open_dm(user)
    discord_fake.global_commands.update(
        {
            "legacy": {"id": "1", "name": "legacy", "dm_permission": False},
            "dmonly": {"id": "2", "name": "dmonly", "contexts": [1]},
        }
    )
    discord_fake.guild_commands[scenario.guild.id] = {"local": {"id": "3", "name": "local"}}
    with pytest.raises(LookupError, match="not available in DMs"):
        await discord_fake.slash(user, "legacy", channel=dm)
    with pytest.raises(LookupError, match="guild command"):
        await discord_fake.slash(user, "local", channel=dm)
    with pytest.raises(LookupError, match="not available in servers"):
        await discord_fake.slash(user, "dmonly")
    assert (await discord_fake.slash(user, "dmonly", channel=dm)).guild_id is None
    assert (await discord_fake.slash(user, "local")).guild_id == scenario.guild.id


# ---------------------------------------------------------------- Discord's documented limits


async def refused(bot: FakeTestBot, method: str, path: str, **kwargs: object) -> HTTPException:
    """What discord.py raises for a raw request the fake refuses."""
    with pytest.raises(HTTPException) as caught:
        await bot.http.request(Route(method, path), **kwargs)
    return caught.value


def form_error(error: HTTPException, path: str) -> str:
    """The messages Discord gives for one field (discord.py flattens ``errors`` to dotted paths)."""
    assert (error.status, error.code) == (400, 50035), error.text
    prefix = f"In {path}: "
    found = [
        line.removeprefix(prefix) for line in error.text.splitlines() if line.startswith(prefix)
    ]
    assert found, f"no error for {path} in {error.text!r}"
    return found[0]


def embed(**fields: object) -> dict[str, object]:
    return {"type": "rich", **fields}


EMBED_CASES = [
    ([embed(description="가" * 4097)], "embeds.0.description", "Must be 4096 or fewer"),
    ([embed(title="가" * 257)], "embeds.0.title", "Must be 256 or fewer"),
    (
        [embed(fields=[{"name": "이름", "value": "값" * 1025}])],
        "embeds.0.fields.0.value",
        "Must be 1024 or fewer",
    ),
    (
        [embed(fields=[{"name": "이" * 257, "value": "값"}])],
        "embeds.0.fields.0.name",
        "Must be 256 or fewer",
    ),
    (
        [embed(fields=[{"name": str(n), "value": "값"} for n in range(26)])],
        "embeds.0.fields",
        "Must be 25 or fewer",
    ),
    ([embed(footer={"text": "발" * 2049})], "embeds.0.footer.text", "Must be 2048 or fewer"),
    ([embed(author={"name": "작" * 257})], "embeds.0.author.name", "Must be 256 or fewer"),
    ([embed(description=str(n)) for n in range(11)], "embeds", "Must be 10 or fewer"),
    (
        [embed(description="가" * 4000), embed(description="나" * 2001)],
        "embeds",
        "Embed size exceeds maximum size of 6000",
    ),
]


@pytest.mark.parametrize(("embeds", "path", "message"), EMBED_CASES)
async def test_embed_over_a_limit_is_refused_with_the_field_named(
    discord_fake: FakeDiscord, bot: FakeTestBot, embeds: list[object], path: str, message: str
) -> None:
    scenario = discord_fake.scenario
    assert scenario is not None
    url = f"/channels/{scenario.general.id}/messages"
    error = await refused(bot, "POST", url, json={"embeds": embeds})
    assert form_error(error, path).startswith(message)
    assert scenario.general.messages == []


async def test_embeds_at_their_limits_are_accepted(
    discord_fake: FakeDiscord, bot: FakeTestBot
) -> None:
    scenario = discord_fake.scenario
    assert scenario is not None
    channel = bot.get_channel(scenario.general.id)
    assert isinstance(channel, discord.TextChannel)
    full = discord.Embed(title="가" * 256, description="나" * 4096)
    full.add_field(name="다" * 256, value="라" * 1024)
    full.set_footer(text="마" * 368)  # 256 + 4096 + 256 + 1024 + 368 = 6000
    await channel.send(embed=full)
    assert len(scenario.general.messages) == 1


async def test_content_over_2000_is_refused(discord_fake: FakeDiscord, bot: FakeTestBot) -> None:
    scenario = discord_fake.scenario
    assert scenario is not None
    channel = bot.get_channel(scenario.general.id)
    assert isinstance(channel, discord.TextChannel)
    with pytest.raises(HTTPException) as caught:
        await channel.send("가" * 2001)
    assert form_error(caught.value, "content") == "Must be 2000 or fewer in length."


def button(custom_id: str, label: str = "버튼") -> dict[str, object]:
    return {"type": 2, "style": 1, "custom_id": custom_id, "label": label}


def row(*buttons: dict[str, object]) -> dict[str, object]:
    return {"type": 1, "components": list(buttons)}


COMPONENT_CASES = [
    ([row(button(f"b{n}")) for n in range(6)], "components", "Must be 5 or fewer"),
    ([row(*(button(f"b{n}") for n in range(6)))], "components.0.components", "Must be 5 or fewer"),
    ([row(button("x" * 101))], "components.0.components.0.custom_id", "Must be between 1 and 100"),
    ([row(button("same"), button("same"))], "components.0.components.1.custom_id", "Component"),
    ([row(button("ok", "라" * 81))], "components.0.components.0.label", "Must be 80 or fewer"),
]


@pytest.mark.parametrize(("components", "path", "message"), COMPONENT_CASES)
async def test_components_over_a_limit_are_refused_with_the_field_named(
    discord_fake: FakeDiscord, bot: FakeTestBot, components: list[object], path: str, message: str
) -> None:
    scenario = discord_fake.scenario
    assert scenario is not None
    url = f"/channels/{scenario.general.id}/messages"
    error = await refused(bot, "POST", url, json={"content": "고르세요", "components": components})
    assert form_error(error, path).startswith(message)


@pytest.mark.parametrize("kind", ["users", "roles"])
async def test_allowed_mentions_parse_and_list_together_are_refused(
    discord_fake: FakeDiscord, bot: FakeTestBot, kind: str
) -> None:
    scenario = discord_fake.scenario
    assert scenario is not None
    url = f"/channels/{scenario.general.id}/messages"
    allowed = {"parse": [kind], kind: [str(scenario.members[0].id)]}
    error = await refused(bot, "POST", url, json={"content": "안녕", "allowed_mentions": allowed})
    assert "mutually exclusive" in form_error(error, "allowed_mentions")


@pytest.mark.parametrize(
    ("username", "message"),
    [
        ("Discord 도우미", 'Username cannot contain "discord"'),
        ("우리 CLYDE", 'Username cannot contain "clyde"'),
        ("가" * 81, "Must be between 1 and 80 in length."),
        ("", "Must be between 1 and 80 in length."),
    ],
)
async def test_webhook_username_breaking_the_rules_is_refused(
    discord_fake: FakeDiscord, bot: FakeTestBot, username: str, message: str
) -> None:
    scenario = discord_fake.scenario
    assert scenario is not None
    parent = bot.get_channel(scenario.general.id)
    assert isinstance(parent, discord.TextChannel)
    webhook = await parent.create_webhook(name="시나트라")
    if username:  # discord.py leaves an empty username out: only the raw request sends one
        with pytest.raises(HTTPException) as caught:
            await webhook.send("안녕", username=username, wait=True)
        assert form_error(caught.value, "username") == message
    path = f"/webhooks/{webhook.id}/{webhook.token}"
    raw = await refused(bot, "POST", path, json={"content": "안녕", "username": username})
    assert form_error(raw, "username") == message
    assert scenario.general.messages == []


async def test_webhook_names_breaking_the_rules_are_refused(
    discord_fake: FakeDiscord, bot: FakeTestBot
) -> None:
    scenario = discord_fake.scenario
    assert scenario is not None
    parent = bot.get_channel(scenario.general.id)
    assert isinstance(parent, discord.TextChannel)
    with pytest.raises(HTTPException) as caught:
        await parent.create_webhook(name="discord 봇")
    assert form_error(caught.value, "name") == 'Username cannot contain "discord"'
    webhook = await parent.create_webhook(name="시나트라")
    with pytest.raises(HTTPException) as caught:
        await webhook.edit(name="Clyde")
    assert form_error(caught.value, "name") == 'Username cannot contain "clyde"'
    assert [w.name for w in await parent.webhooks()] == ["시나트라"]


@pytest.mark.parametrize("value", ["yes", "2", "", "truthy"])
async def test_query_booleans_other_than_true_false_1_0_are_refused(
    discord_fake: FakeDiscord, bot: FakeTestBot, value: str
) -> None:
    scenario = discord_fake.scenario
    assert scenario is not None
    parent = bot.get_channel(scenario.general.id)
    assert isinstance(parent, discord.TextChannel)
    webhook = await parent.create_webhook(name="시나트라")
    path = f"/webhooks/{webhook.id}/{webhook.token}"
    error = await refused(bot, "POST", path, json={"content": "안녕"}, params={"wait": value})
    assert form_error(error, "wait") == "Must be either true or false."
    for accepted in ("TRUE", "False", "1", "0"):
        await bot.http.request(
            Route("POST", path), json={"content": "안녕"}, params={"wait": accepted}
        )
    assert len(scenario.general.messages) == 4


async def test_blank_messages_are_refused_but_zero_width_text_is_not(
    discord_fake: FakeDiscord, bot: FakeTestBot
) -> None:
    scenario = discord_fake.scenario
    assert scenario is not None
    parent = bot.get_channel(scenario.general.id)
    assert isinstance(parent, discord.TextChannel)
    for blank in ("", "  \n\t "):
        with pytest.raises(HTTPException) as caught:
            await parent.send(blank)
        assert (caught.value.status, caught.value.code) == (400, 50006)
    webhook = await parent.create_webhook(name="시나트라")
    with pytest.raises(HTTPException) as caught:
        await webhook.send(" \n ", wait=True)
    assert caught.value.code == 50006
    sent = await webhook.send("민지: 안녕", wait=True)
    with pytest.raises(HTTPException) as caught:
        await sent.edit(content="   ")
    assert caught.value.code == 50006
    assert discord_fake.messages[sent.id].content == "민지: 안녕"
    # Discord shows a zero-width space as an empty-looking message: it is accepted.
    await parent.send("\u200b")
    await sent.edit(content="", embed=discord.Embed(description="임베드만"))


def text_input(custom_id: str = "name", **fields: object) -> dict[str, object]:
    return {"type": 4, "custom_id": custom_id, "style": 1, "label": "이름", **fields}


def modal(*rows: dict[str, object], **fields: object) -> dict[str, object]:
    components = list(rows) or [row(text_input())]
    return {"custom_id": "form", "title": "캐릭터", "components": components, **fields}


MODAL_CASES = [
    (modal(title="가" * 46), "data.title", "Must be between 1 and 45"),
    (modal(custom_id="x" * 101), "data.custom_id", "Must be between 1 and 100"),
    (modal(*(row(text_input(f"i{n}")) for n in range(6))), "data.components", "Must be between 1"),
    (modal(components=[]), "data.components", "Must be between 1 and 5"),
    (
        modal(row(text_input("a"), text_input("b"))),
        "data.components.0.components",
        "Must be between 1 and 1",
    ),
    (
        modal(row(text_input(max_length=100, value="가" * 101))),
        "data.components.0.components.0.value",
        "Must be 100 or fewer",
    ),
    (
        modal(row(text_input(style=2, value="가" * 4001))),
        "data.components.0.components.0.value",
        "Must be 4000 or fewer",
    ),
    (
        modal(row(text_input(max_length=4001))),
        "data.components.0.components.0.max_length",
        "int value should be less than or equal to 4000",
    ),
    (modal(row(text_input(label="가" * 46))), "data.components.0.components.0.label", "Must be"),
    (
        modal(row(text_input("x" * 101))),
        "data.components.0.components.0.custom_id",
        "Must be between 1 and 100",
    ),
    (
        modal({"type": 18, "label": "가" * 46, "component": text_input(label=None)}),
        "data.components.0.label",
        "Must be between 1 and 45",
    ),
    (
        modal({"type": 18, "label": "설명", "component": text_input(value="가" * 4001)}),
        "data.components.0.component.value",
        "Must be 4000 or fewer",
    ),
]


@pytest.mark.parametrize(("data", "path", "message"), MODAL_CASES)
async def test_modal_over_a_limit_is_refused_and_leaves_the_interaction_open(
    discord_fake: FakeDiscord, bot: FakeTestBot, data: dict[str, object], path: str, message: str
) -> None:
    scenario = discord_fake.scenario
    assert scenario is not None
    record = await discord_fake.slash(scenario.members[0], "quiet")
    url = f"/interactions/{record.id}/{record.token}/callback"
    error = await refused(bot, "POST", url, json={"type": 9, "data": data})
    assert form_error(error, path).startswith(message)
    assert not record.responded
    await bot.http.request(Route("POST", url), json={"type": 9, "data": modal()})
    assert record.modal is not None and record.modal["custom_id"] == "form"


async def test_interaction_responses_and_followups_are_checked_like_messages(
    discord_fake: FakeDiscord, bot: FakeTestBot
) -> None:
    scenario = discord_fake.scenario
    assert scenario is not None
    record = await discord_fake.slash(scenario.members[0], "quiet")
    url = f"/interactions/{record.id}/{record.token}/callback"
    long_embed = {"embeds": [embed(description="가" * 4097)]}
    error = await refused(bot, "POST", url, json={"type": 4, "data": long_embed})
    assert form_error(error, "data.embeds.0.description").startswith("Must be 4096")
    blank = await refused(bot, "POST", url, json={"type": 4, "data": {"content": " "}})
    assert blank.code == 50006
    await bot.http.request(Route("POST", url), json={"type": 5, "data": {}})
    followup = f"/webhooks/{discord_fake.application_id}/{record.token}"
    error = await refused(bot, "POST", followup, json=long_embed)
    assert form_error(error, "embeds.0.description").startswith("Must be 4096")
    await bot.http.request(Route("POST", followup), json={"content": "됐어요"})
    assert record.original is not None and record.original.content == "됐어요"


# ---------------------------------------------------------------- hosting faults

MESSAGE_ROUTE = "/channels/{channel_id}/messages/{message_id}"


def general_channel(fake: FakeDiscord, bot: FakeTestBot) -> tuple[Scenario, discord.TextChannel]:
    """The default scenario and discord.py's view of its #일반."""
    assert fake.scenario is not None
    channel = bot.get_channel(fake.scenario.general.id)
    assert isinstance(channel, discord.TextChannel)
    return fake.scenario, channel


async def test_injected_503_fails_the_edit_at_once_and_is_recorded(
    discord_fake: FakeDiscord, bot: FakeTestBot
) -> None:
    _, channel = general_channel(discord_fake, bot)
    sent = await channel.send("스트리밍 중")
    discord_fake.fail_requests("PATCH", MESSAGE_ROUTE, times=1)
    with pytest.raises(discord.DiscordServerError) as raised:
        await sent.edit(content="서버 오류 중 수정")
    assert raised.value.status == 503
    assert raised.value.text == "503: Service Unavailable"
    assert discord_fake.messages[sent.id].content == "스트리밍 중"
    assert [(c.method, c.route, c.status) for c in discord_fake.failed] == [
        ("PATCH", MESSAGE_ROUTE, 503)
    ]
    await sent.edit(content="다시 수정")
    assert discord_fake.messages[sent.id].content == "다시 수정"


async def test_injected_500_is_retried_by_discord_py(
    discord_fake: FakeDiscord, bot: FakeTestBot
) -> None:
    _, channel = general_channel(discord_fake, bot)
    sent = await channel.send("첫 줄")
    discord_fake.fail_requests("PATCH", MESSAGE_ROUTE, times=1, status=500)
    await sent.edit(content="재시도 뒤 수정")  # discord.py sleeps 1 s, then retries
    assert discord_fake.messages[sent.id].content == "재시도 뒤 수정"
    edits = [c.status for c in discord_fake.calls if c.route == MESSAGE_ROUTE]
    assert edits == [500, 200]


async def test_injected_503_on_a_webhook_edit_is_retried_by_discord_py(
    discord_fake: FakeDiscord, bot: FakeTestBot
) -> None:
    _, channel = general_channel(discord_fake, bot)
    webhook = await channel.create_webhook(name="민지")
    message = await webhook.send("민지: 음...", wait=True)
    route = "/webhooks/{webhook_id}/{token}/messages/{message_id}"
    discord_fake.fail_requests("PATCH", route, times=1)
    await message.edit(content="민지: 다시 말할게")  # the webhook adapter retries every 5xx
    assert discord_fake.messages[message.id].content == "민지: 다시 말할게"
    assert [c.status for c in discord_fake.calls if c.route == route] == [503, 200]


async def test_route_fails_until_cleared_and_other_routes_keep_working(
    discord_fake: FakeDiscord, bot: FakeTestBot
) -> None:
    scenario, channel = general_channel(discord_fake, bot)
    sent = await channel.send("장애 전")
    discord_fake.fail_requests("POST", "/channels/{channel_id}/messages", times=None)
    for _ in range(3):
        with pytest.raises(discord.DiscordServerError):
            await channel.send("장애 중")
    await sent.edit(content="수정은 됩니다")
    discord_fake.clear_failures()
    after = await channel.send("장애 후")
    assert [m.content for m in discord_fake.messages_in(scenario.general)] == [
        "수정은 됩니다",
        "장애 후",
    ]
    assert len(discord_fake.failed) == 3
    assert discord_fake.messages[after.id].content == "장애 후"
    with pytest.raises(ValueError):
        discord_fake.fail_requests(status=429)


async def test_applied_failure_stores_the_message_the_caller_was_told_failed(
    discord_fake: FakeDiscord, bot: FakeTestBot
) -> None:
    scenario, channel = general_channel(discord_fake, bot)
    discord_fake.fail_requests("POST", "/channels/{channel_id}/messages", applied=True)
    with pytest.raises(discord.DiscordServerError):
        await channel.send("유령 메시지")
    stored = discord_fake.messages_in(scenario.general)  # type: ignore[union-attr]
    assert [m.content for m in stored] == ["유령 메시지"]
    assert discord_fake.failed[0].status == 503


async def test_deleted_webhook_answers_unknown_webhook_and_sends_webhooks_update(
    discord_fake: FakeDiscord, bot: FakeTestBot
) -> None:
    _, channel = general_channel(discord_fake, bot)
    webhook = await channel.create_webhook(name="민지")
    message = await webhook.send("민지: 안녕", wait=True)
    updated = asyncio.create_task(bot.wait_for("webhooks_update", timeout=10))
    discord_fake.delete_webhook(discord_fake.webhooks[webhook.id])
    assert (await updated).id == channel.id
    with pytest.raises(discord.NotFound) as raised:
        await webhook.send("삭제된 웹훅으로", wait=True)
    assert raised.value.code == 10015 and raised.value.text == "Unknown Webhook"
    with pytest.raises(discord.NotFound) as raised:
        await message.edit(content="삭제된 웹훅의 메시지 수정")
    assert raised.value.code == 10015
    assert discord_fake.messages[message.id].content == "민지: 안녕"


async def test_deleting_a_channels_webhooks_removes_them_all(
    discord_fake: FakeDiscord, bot: FakeTestBot
) -> None:
    scenario, channel = general_channel(discord_fake, bot)
    first = await channel.create_webhook(name="민지")
    second = await channel.create_webhook(name="서연")
    updated = asyncio.create_task(bot.wait_for("webhooks_update", timeout=10))
    gone = discord_fake.delete_channel_webhooks(scenario.general)  # type: ignore[union-attr]
    assert {w.id for w in gone} == {first.id, second.id}
    assert (await updated).id == channel.id
    assert await channel.webhooks() == []
    for webhook in (first, second):
        with pytest.raises(discord.NotFound) as raised:
            await webhook.send("아무도 없나요", wait=True)
        assert raised.value.code == 10015


async def test_deleted_channel_answers_unknown_channel_and_is_dispatched(
    discord_fake: FakeDiscord, bot: FakeTestBot
) -> None:
    scenario, channel = general_channel(discord_fake, bot)
    webhook = await channel.create_webhook(name="민지")
    deleted = asyncio.create_task(bot.wait_for("guild_channel_delete", timeout=10))
    discord_fake.delete_channel(scenario.general)
    assert (await deleted).id == scenario.general.id
    assert bot.get_channel(scenario.general.id) is None
    assert bot.get_channel(scenario.thread.id) is None  # its threads went with it
    with pytest.raises(discord.NotFound) as raised:
        await channel.send("사라진 채널에")
    assert raised.value.code == 10003 and raised.value.text == "Unknown Channel"
    with pytest.raises(discord.NotFound) as raised:
        await webhook.send("사라진 채널의 웹훅", wait=True)
    assert raised.value.code == 10015
    with pytest.raises(LookupError):
        await discord_fake.say(scenario.general, scenario.members[0], "안녕")


async def test_deleted_thread_answers_unknown_channel_and_sends_thread_delete(
    discord_fake: FakeDiscord, bot: FakeTestBot
) -> None:
    scenario = discord_fake.scenario
    assert scenario is not None
    thread = bot.get_channel(scenario.thread.id)
    assert isinstance(thread, discord.Thread)
    deleted = asyncio.create_task(bot.wait_for("raw_thread_delete", timeout=10))
    discord_fake.delete_channel(scenario.thread)
    assert (await deleted).thread_id == scenario.thread.id
    assert bot.get_channel(scenario.thread.id) is None
    assert bot.get_channel(scenario.general.id) is not None
    with pytest.raises(discord.NotFound) as raised:
        await thread.send("사라진 스레드에")
    assert raised.value.code == 10003


async def test_deleted_message_edit_and_delete_answer_unknown_message(
    discord_fake: FakeDiscord, bot: FakeTestBot
) -> None:
    _, channel = general_channel(discord_fake, bot)
    sent = await channel.send("곧 지워질 말")
    webhook = await channel.create_webhook(name="민지")
    spoken = await webhook.send("민지: 곧 지워져요", wait=True)
    await discord_fake.delete(discord_fake.messages[sent.id])
    await discord_fake.delete(discord_fake.messages[spoken.id])
    for call in (sent.edit(content="수정"), sent.delete(), spoken.edit(content="수정")):
        with pytest.raises(discord.NotFound) as raised:
            await call
        assert raised.value.code == 10008 and raised.value.text == "Unknown Message"


async def test_duplicated_message_create_reaches_the_bot_twice(
    discord_fake: FakeDiscord, bot: FakeTestBot
) -> None:
    scenario = discord_fake.scenario
    assert scenario is not None
    assert bot.ws is not None
    sequence = bot.ws.sequence or 0
    said = await discord_fake.say(
        scenario.general, scenario.members[0], "두 번 오는 말", duplicate=True
    )
    await discord_fake.wait_until(lambda: len(bot.handled) == 2)
    assert bot.handled == [said.id, said.id]
    assert bot.ws.sequence == sequence + 2
    data = await discord_fake.redeliver_last("MESSAGE_CREATE", channel=scenario.general)
    assert data["id"] == str(said.id) and data["content"] == "두 번 오는 말"
    await discord_fake.wait_until(lambda: len(bot.handled) == 3)
    assert bot.handled == [said.id] * 3
    assert [m.content for m in discord_fake.messages_in(scenario.general)] == ["두 번 오는 말"]
    with pytest.raises(LookupError):
        await discord_fake.redeliver_last("MESSAGE_CREATE", channel=scenario.nsfw_channel)


class QuickReidentifyBot(FakeTestBot):
    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """discord.py waits 5 s before every IDENTIFY after the first; tests need not."""


async def test_invalidated_session_identifies_afresh_and_loses_missed_events(
    discord_fake: FakeDiscord,
) -> None:
    scenario = discord_fake.scenario
    assert scenario is not None
    bot = QuickReidentifyBot()
    async with running_client(bot, discord_fake):
        first = await discord_fake.say(scenario.general, scenario.members[0], "안녕 끊기 전")
        reply = await discord_fake.wait_for_message(scenario.general)
        async with discord_fake.gateway_outage():
            await discord_fake.invalidate_session()
            missed = [
                await discord_fake.say(scenario.general, scenario.members[1], f"놓친 말 {n}")
                for n in (1, 2, 3)
            ]
        await discord_fake.wait_until(
            lambda: discord_fake.identify_count == 2 and discord_fake.connected
        )
        await bot.wait_until_ready()
        after = await discord_fake.say(scenario.general, scenario.members[0], "안녕 다시 왔어요")
        await discord_fake.wait_for_message(scenario.general)
        assert bot.handled == [first.id, after.id]
        assert (discord_fake.invalid_session_count, discord_fake.resume_count) == (1, 0)
        channel = bot.get_channel(scenario.general.id)
        assert isinstance(channel, discord.TextChannel)
        # The bot catches up from history: `after` yields the oldest messages after the id.
        caught_up = [m.id async for m in channel.history(after=discord.Object(reply.id), limit=2)]
        assert caught_up == [missed[0].id, missed[1].id]
        raw = await bot.http.logs_from(channel.id, 2, after=reply.id)
        assert [m["content"] for m in raw] == ["놓친 말 2", "놓친 말 1"]  # newest first
        older = await bot.http.logs_from(channel.id, 2, before=after.id)
        assert [m["content"] for m in older] == ["놓친 말 3", "놓친 말 2"]


async def test_messages_said_during_an_outage_are_replayed_on_resume(
    discord_fake: FakeDiscord, bot: FakeTestBot
) -> None:
    scenario = discord_fake.scenario
    assert scenario is not None
    async with discord_fake.gateway_outage():
        await discord_fake.drop_connection()
        missed = await discord_fake.say(scenario.general, scenario.members[0], "안녕 끊긴 동안")
        assert not discord_fake.connected
    await discord_fake.wait_for_message(scenario.general, after=missed)
    assert bot.handled == [missed.id]
    assert (discord_fake.resume_count, discord_fake.identify_count) == (1, 1)


async def test_history_after_pages_oldest_first_across_many_messages(
    discord_fake: FakeDiscord, bot: FakeTestBot
) -> None:
    scenario = discord_fake.scenario
    assert scenario is not None
    said = [
        await discord_fake.say(scenario.nsfw_channel, scenario.members[1], f"기록 {n}")
        for n in range(130)
    ]
    await discord_fake.delete(said[5])
    channel = bot.get_channel(scenario.nsfw_channel.id)
    assert isinstance(channel, discord.TextChannel)
    forward = [m.id async for m in channel.history(after=discord.Object(said[0].id), limit=None)]
    assert forward == [m.id for m in said[1:] if m is not said[5]]
    backward = [m.id async for m in channel.history(limit=None)]
    assert backward == list(reversed([m.id for m in said if m is not said[5]]))
