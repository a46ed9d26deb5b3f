"""What players can make the bot hold or show: the remote engine's errors in the channel, avatar
images (decoded under a pixel limit, shrunk, stored as PNG) and characters per member. The bot
is the real discord.py client against the fake Discord."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import sqlite3
import struct

import pytest
from alembic import command

from synatra_bot.app import running_bot
from synatra_bot.errors import ImageRejected, LimitReached
from synatra_bot.prompt import avatars
from synatra_bot.prompt.cards import parse_card
from synatra_bot.roleplay.characters import CharacterService
from synatra_bot.roleplay.types import Actor
from synatra_bot.settings import settings_from_env
from synatra_bot.storage import repository as repo
from synatra_bot.storage.database import create_engine, create_sessionmaker
from synatra_bot.storage.migrate import alembic_config, upgrade_database
from tests.bot_harness import BotHarness, has_buttons
from tests.discord_fake.fixtures import running_client
from tests.engine_helpers import fault_server_args, free_port, running_process
from tests.prompt_helpers import b64_json, png_chunk, png_with_text, v2_card

PASSWORD = "hunter2-engine-password"
IMAGE_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}
TOO_MANY_PIXELS = "이미지 픽셀이 너무 많아요"
NOT_AN_IMAGE = "읽을 수 있는 PNG, JPEG, WebP, GIF 이미지가 아니에요"
AT_THE_LIMIT = "캐릭터 {limit}개를 이미 모두 만들었어요"
MODERATOR_ONLY = "서버 관리 권한이 있는 관리자만"


def everything_shown(channel) -> list[str]:
    """Every version of every message in `channel` (streamed edits included)."""
    return [v.get("content") or "" for m in channel.messages for v in m.versions]


def image_bytes(fmt: str, size: tuple[int, int] = (1200, 800)) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", size, (40, 120, 220)).save(out, format=fmt)
    return out.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A valid-looking PNG of a few bytes whose IHDR declares `width` x `height` pixels."""
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + png_chunk(b"IEND", b"")
    )


def decoded(data: bytes):
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    image.load()
    return image


async def export_png(harness: BotHarness, member, character_id: int):
    record = await harness.slash(member, "character export", character=str(character_id))
    message = await harness.fake.wait_until(
        lambda: next((m for m in [*record.followups, record.original] if m), None)
    )
    [attachment] = message.attachments
    return parse_card(attachment.data, filename=attachment.filename)


# --- the remote engine's errors ----------------------------------------------------------------


async def test_a_dead_or_refusing_engine_shows_players_no_url_credentials_or_answer(
    discord_fake, tokenizer, tokenizer_dir, tmp_path, caplog
):
    caplog.set_level(logging.WARNING, logger="synatra_bot.engine")
    port = free_port()
    settings = settings_from_env(
        {
            "DISCORD_TOKEN": discord_fake.token,
            "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'remote.db'}",
            "ENGINE": "openai",
            "ENGINE_URL": f"http://synatra:{PASSWORD}@127.0.0.1:{port}/badrequest",
            "MODEL_ID": str(tokenizer_dir),
            "ENGINE_TIMEOUT_S": "1",
        }
    )
    clean_url = f"http://127.0.0.1:{port}/badrequest/v1/completions"
    with contextlib.ExitStack() as server:
        async with (
            running_bot(settings, tokenizer=tokenizer, guild_ready_timeout=0.05) as bot,
            running_client(bot, discord_fake),
        ):
            harness = BotHarness(discord_fake, bot, None)
            s = harness.scenario
            character_id = await harness.character(s.moderator)
            await harness.start_roleplay(s.moderator, s.general, character_id)

            # Nothing listens: retried, then a short localised note.
            down = await harness.reply_to(s.general, s.members[0], "엔진 꺼져 있니?")
            assert "⚠️" in down.content and "생성 서버에 연결할 수 없어요" in down.content
            assert "4번 시도 후 포기했어요" in down.content and not has_buttons(down)

            # The server is up but rejects the request with a reason in its answer.
            log = tmp_path / "fault.log"
            await asyncio.to_thread(
                server.enter_context,
                running_process(fault_server_args(port), f"http://127.0.0.1:{port}/stats", log),
            )
            refused = await harness.reply_to(s.general, s.members[1], "이번엔?")
            assert "⚠️" in refused.content and "생성 서버가 요청을 거절했어요" in refused.content

            shown = "\n".join(everything_shown(s.general))
    for leak in (PASSWORD, "synatra:", f"127.0.0.1:{port}", "http://", "max_tokens"):
        assert leak not in shown, leak
    assert PASSWORD not in caplog.text
    assert f"gave up after 4 attempts at {clean_url}" in caplog.text
    assert f"{clean_url} rejected the request (400): max_tokens is too large" in caplog.text


# --- avatars -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", IMAGE_TYPES)
async def test_avatars_of_every_format_are_stored_as_small_pngs_and_export_as_png_cards(
    harness, fmt
):
    s = harness.scenario
    owner = s.members[0]
    character = await harness.character(owner, "서윤", personality="차분함")
    record = await harness.slash(
        owner,
        "character avatar",
        character=str(character),
        image=(f"a.{fmt.lower()}", image_bytes(fmt), IMAGE_TYPES[fmt]),
    )
    assert "아바타를 바꿨어요" in await harness.final_text(record)
    stored = await repo.get_character(harness.sessions, character_id=character)
    image = decoded(stored.avatar)
    assert (image.format, image.size) == ("PNG", (512, 341))

    card = await export_png(harness, owner, character)
    assert card.name == "서윤" and card.personality == "차분함"
    assert decoded(card.avatar).size == (512, 341)


@pytest.mark.parametrize(
    ("data", "refusal"),
    [
        (png_declaring(30000, 30000), TOO_MANY_PIXELS),
        (b"this is not an image at all, whatever its content type says", NOT_AN_IMAGE),
        (png_declaring(64, 64)[:40], NOT_AN_IMAGE),  # a PNG cut off in its image data
    ],
    ids=["pixel bomb", "not an image", "truncated"],
)
async def test_unusable_avatars_are_refused_with_a_message_and_nothing_is_stored(
    harness, data, refusal
):
    s = harness.scenario
    owner = s.moderator
    character = await harness.character(owner, "서윤")
    record = await harness.slash(
        owner, "character avatar", character=str(character), image=("a.png", data, "image/png")
    )
    assert refusal in await harness.final_text(record)
    stored = await repo.get_character(harness.sessions, character_id=character)
    assert stored.avatar is None
    # The character still speaks: its webhook is made without a garbage avatar.
    await harness.start_roleplay(owner, s.general, character)
    reply = await harness.reply_to(s.general, s.members[0], "안녕?")
    assert has_buttons(reply)


def test_an_animation_is_decoded_only_as_far_as_its_first_frame():
    from PIL import Image

    frames = [Image.new("P", (300, 200), i) for i in range(200)]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:])
    first = decoded(avatars.normalise_avatar(out.getvalue()))
    assert (first.format, first.size, getattr(first, "n_frames", 1)) == ("PNG", (300, 200), 1)

    # A 16x16 GIF whose first frame claims 8000x8000 pixels is refused before decoding.
    bomb = b"GIF89a" + struct.pack("<HHBBB", 16, 16, 0, 0, 0)
    bomb += b"," + struct.pack("<HHHHB", 0, 0, 8000, 8000, 0) + bytes([2, 2, 0x4C, 1, 0]) + b";"
    with pytest.raises(ImageRejected) as caught:
        avatars.normalise_avatar(bomb)
    assert caught.value.key == "error.image_pixels"


def test_an_avatar_too_large_even_as_a_small_png_is_refused():
    import os

    from PIL import Image

    noise = io.BytesIO()
    Image.frombytes("RGBA", (512, 512), os.urandom(512 * 512 * 4)).save(noise, format="PNG")
    with pytest.raises(ImageRejected) as caught:
        avatars.normalise_avatar(noise.getvalue())
    assert caught.value.key == "error.image_too_large"


async def test_a_png_cards_image_is_imported_as_a_small_png_avatar(harness):
    s = harness.scenario
    owner = s.members[0]
    data = png_with_text({"chara": b64_json(v2_card())}, image=image_bytes("PNG", (2000, 1000)))
    record = await harness.slash(owner, "character import", file=("minji.png", data, "image/png"))
    assert "가져왔어요" in await harness.final_text(record)
    [stored] = await repo.visible_characters(
        harness.sessions, guild_id=s.guild.id, user_id=owner.user.id
    )
    assert stored.description == "{{char}}는 서울에 사는 대학생이다."
    assert decoded(stored.avatar).size == (512, 256)
    card = await export_png(harness, owner, stored.id)
    assert card.name == "민지" and decoded(card.avatar).size == (512, 256)


async def test_a_png_card_whose_image_cannot_be_decoded_imports_without_an_avatar(harness):
    s = harness.scenario
    owner = s.members[0]
    image = image_bytes("PNG", (64, 64))
    idat = image.index(b"IDAT") - 4
    (length,) = struct.unpack(">I", image[idat : idat + 4])
    broken = image[: idat + 8] + b"\xff" * length + image[idat + 8 + length :]
    data = png_with_text({"chara": b64_json(v2_card())}, image=broken)
    record = await harness.slash(owner, "character import", file=("minji.png", data, "image/png"))
    text = await harness.final_text(record)
    assert "가져왔어요" in text and "아바타 없이" in text
    [stored] = await repo.visible_characters(
        harness.sessions, guild_id=s.guild.id, user_id=owner.user.id
    )
    assert stored.name == "민지" and stored.avatar is None


# --- characters per member -------------------------------------------------------------------


def json_card(name: str) -> tuple[str, bytes, str]:
    return (f"{name}.json", json.dumps(v2_card(name=name)).encode(), "application/json")


async def owned(harness: BotHarness, member, guild_id: int | None) -> list[str]:
    found = await repo.visible_characters(
        harness.sessions, guild_id=guild_id, user_id=member.user.id, limit=1000
    )
    return [c.name for c in found if c.owner_id == member.user.id and c.guild_id == guild_id]


async def test_members_are_held_to_the_servers_character_limit_which_moderators_set(harness):
    s = harness.scenario
    member = s.members[0]
    for n in range(49):
        await harness.character(member, f"캐릭터{n}")

    fiftieth = await harness.slash(member, "character import", file=json_card("쉰째"))
    assert "가져왔어요" in await harness.final_text(fiftieth)
    over = await harness.slash(member, "character import", file=json_card("넘침"))
    assert AT_THE_LIMIT.format(limit=50) in await harness.final_text(over)
    assert len(await owned(harness, member, s.guild.id)) == 50
    assert "넘침" not in await owned(harness, member, s.guild.id)
    # Another member is counted on their own.
    other = await harness.slash(s.members[1], "character import", file=json_card("다른 사람"))
    assert "가져왔어요" in await harness.final_text(other)

    refused = await harness.slash(member, "config characters", limit=500)
    assert MODERATOR_ONLY in await harness.final_text(refused)
    raised = await harness.slash(s.moderator, "config characters", limit=51)
    assert "character_limit=51" in await harness.final_text(raised)
    shown = await harness.slash(s.moderator, "config show")
    assert "`character_limit` 51/member" in await harness.final_text(shown)
    again = await harness.slash(member, "character import", file=json_card("넘침"))
    assert "가져왔어요" in await harness.final_text(again)

    lowered = await harness.slash(s.moderator, "config characters", limit=10)
    await harness.final_text(lowered)
    form = await harness.slash(member, "character import", file=json_card("하나 더"))
    assert AT_THE_LIMIT.format(limit=10) in await harness.final_text(form)
    assert len(await owned(harness, member, s.guild.id)) == 51  # nothing already made is lost


async def test_characters_made_outside_servers_have_the_default_limit(harness):
    s = harness.scenario
    member = s.members[0]
    await harness.slash(s.moderator, "config characters", limit=500)
    for n in range(50):
        await repo.create_character(
            harness.sessions, owner_id=member.user.id, guild_id=None, name=f"DM{n}"
        )
    dm = harness.fake.open_dm(member)
    record = await harness.slash(member, "character import", channel=dm, file=json_card("DM50"))
    assert AT_THE_LIMIT.format(limit=50) in await harness.final_text(record)
    assert len(await owned(harness, member, None)) == 50
    # The server's own limit (500) counts only the member's characters there.
    here = await harness.slash(member, "character import", file=json_card("서버"))
    assert "가져왔어요" in await harness.final_text(here)


async def test_concurrent_creates_never_pass_the_limit(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'limit.db'}"
    await upgrade_database(url)
    engine = create_engine(url)
    try:
        sessions = create_sessionmaker(engine)
        await repo.update_guild_settings(sessions, guild_id=7, character_limit=3)
        service = CharacterService(sessions, max_card_bytes=1 << 20)
        actor = Actor(user_id=1, display_name="준", guild_id=7)
        cards = [json_card(f"동시{n}")[1] for n in range(8)]
        results = await asyncio.gather(
            *(service.import_file(actor, data, filename="c.json") for data in cards),
            return_exceptions=True,
        )
        assert sum(not isinstance(r, BaseException) for r in results) == 3
        assert all(isinstance(r, LimitReached) for r in results if isinstance(r, BaseException))
        found = await repo.visible_characters(sessions, guild_id=7, user_id=1, limit=100)
        assert len(found) == 3
    finally:
        await engine.dispose()


def test_the_character_limit_migration_keeps_existing_settings(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
    path = tmp_path / "old.db"
    command.upgrade(alembic_config(url), "0001")
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO guild_settings (guild_id, approval_required, temperature, created_at,"
            " updated_at) VALUES (42, 1, 0.7, '2026-01-01', '2026-01-01')"
        )
    command.upgrade(alembic_config(url), "head")
    with sqlite3.connect(path) as conn:
        row = conn.execute(
            "SELECT approval_required, temperature, character_limit FROM guild_settings"
        ).fetchall()
    assert row == [(1, 0.7, None)]
    command.downgrade(alembic_config(url), "0001")
    with sqlite3.connect(path) as conn:
        kept = conn.execute("SELECT guild_id, approval_required FROM guild_settings").fetchall()
        columns = [c[1] for c in conn.execute("PRAGMA table_info(guild_settings)")]
    assert kept == [(42, 1)] and "character_limit" not in columns
