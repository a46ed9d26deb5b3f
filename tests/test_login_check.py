"""A bot that cannot log in says so in seconds, before its model loads: one line in Korean and
English, exit status 2, no traceback. The real bot process runs against the fake Discord with
an engine whose start never ends (a model still loading), so a check that came after the model
would leave the process hanging and these tests failing."""

from __future__ import annotations

import asyncio
import types
from pathlib import Path

from tests.bot_process import bot_env, spawn_bot

#: Where nothing listens: a closed local port refuses at once, the same on every machine.
CLOSED = types.SimpleNamespace(
    api_base="http://127.0.0.1:1/api/v10", gateway_url="ws://127.0.0.1:1/gateway"
)


async def _exit_of(target, env: dict[str, str], log: Path) -> tuple[int, str]:
    with log.open("wb") as output:
        process = await spawn_bot(target, env, output)
        try:
            code = await asyncio.wait_for(process.wait(), timeout=60)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    return code, log.read_text(encoding="utf-8", errors="replace")


def _slow_model_env(fake, tmp_path: Path, tokenizer_dir: Path) -> dict[str, str]:
    return {
        **bot_env(fake, tmp_path / "bot.db", tokenizer_dir, tmp_path / "prompts.log"),
        "FAULT_SLOW_START": "1",  # the engine's start lasts until the bot stops it
    }


async def test_a_refused_token_is_one_line_before_the_model_loads(
    discord_fake, tokenizer_dir, tmp_path
):
    env = {**_slow_model_env(discord_fake, tmp_path, tokenizer_dir), "DISCORD_TOKEN": "틀린-토큰"}
    code, text = await _exit_of(discord_fake, env, tmp_path / "bot.log")

    assert code == 2, text
    assert "Traceback" not in text, text
    assert "engine: loading" not in text, text
    [error] = [line for line in text.splitlines() if " ERROR " in line]
    assert error.endswith(
        "Discord가 DISCORD_TOKEN을 거부했습니다: 개발자 포털에서 토큰을 다시 발급하세요 · "
        "DISCORD_TOKEN was refused by Discord: reset it in the developer portal"
    )
    assert [call.status for call in discord_fake.calls if call.path == "/users/@me"] == [401]
    assert discord_fake.identify_count == 0


async def test_an_unreachable_discord_is_one_line_before_the_model_loads(
    discord_fake, tokenizer_dir, tmp_path
):
    env = _slow_model_env(discord_fake, tmp_path, tokenizer_dir)
    code, text = await _exit_of(CLOSED, env, tmp_path / "bot.log")

    assert code == 2, text
    assert "Traceback" not in text, text
    assert "engine: loading" not in text, text
    [error] = [line for line in text.splitlines() if " ERROR " in line]
    assert "Discord에 연결할 수 없습니다: 이 컴퓨터의 네트워크를 확인하세요 · " in error
    assert "Discord cannot be reached (" in error and "127.0.0.1:1" in error
    assert error.endswith("): check this machine's network")
