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

from tests.discord_fake import EPHEMERAL_FLAG, FakeDiscord
from tests.discord_fake.fixtures import discord_fake, running_client

__all__ = ["discord_fake"]

PNG_BYTES = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


class RoleplayGroup(app_commands.Group):
    """롤플레이 명령."""

    admin = app_commands.Group(name="admin", description="운영 명령")
    reset = app_commands.Group(name="reset", description="초기화", parent=admin)

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

    async def setup_hook(self) -> None:
        self.tree.add_command(RoleplayGroup(name="rp", description="롤플레이"))
        await self.tree.sync()

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
    allowed = await discord_fake.slash(scenario.moderator, "rp admin reset all", confirm=True)
    denied = await discord_fake.slash(scenario.members[0], "rp admin reset all", confirm=True)
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
