"""The bot with ENGINE=vllm end to end: the real bot process starts `vllm serve` from a vLLM
venv (the stand-in of tests/vllm_stand_in.py: vLLM itself needs a GPU), plays a scene through
the fake Discord, lives through the server being killed mid-reply, and stops the server when it
stops."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import urllib.request
from pathlib import Path

import pytest

from tests import vllm_stand_in
from tests.bot_harness import has_buttons
from tests.bot_process import bot_env, bot_process, start_scene
from tests.llama_cpp import alive, gone

pytestmark = pytest.mark.slow

STARTED = re.compile(r"vllm started \(pid (\d+)\) on (\S+)")
#: The notes a reply cut by a lost server ends with (Korean: the fake's members speak it).
LOST_NOTES = ("생성 서버와의 연결이 끊겼어요", "생성 서버가 답장을 일찍 끝냈어요")


def servers(log: Path) -> list[tuple[int, str]]:
    return [(int(pid), url) for pid, url in STARTED.findall(log.read_text(errors="replace"))]


def stand_in_state(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/stand-in/state", timeout=10) as response:
        return dict(json.loads(response.read()))


async def wait_generating(url: str, after: int) -> None:
    """Until the server streams a reply to a request after its first `after`."""

    def generating() -> bool:
        now = stand_in_state(url)
        return len(now["bodies"]) > after and now["running"] > 0

    for _ in range(2400):
        if await asyncio.to_thread(generating):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("no reply reached the server")


async def test_a_scene_plays_on_vllm_survives_its_death_and_stops_it(
    discord_fake, tokenizer_dir, tmp_path
):
    fake, s = discord_fake, discord_fake.scenario
    database, log = tmp_path / "vllm.db", tmp_path / "bot.log"
    vllm, _ = vllm_stand_in.install(tmp_path / "vllm-venv")
    env = bot_env(fake, database, tokenizer_dir, tmp_path / "prompts.log")
    env |= {
        "FAULT_ENGINE": "settings",
        "ENGINE": "vllm",
        "VLLM_COMMAND": str(vllm),
        "VLLM_ARGS": "--gpu-memory-utilization 0.85",
        "ENGINE_API_KEY": "sk-vllm-e2e-key",
        "MAX_NEW_TOKENS": "300",
    }
    async with bot_process(fake, env, log) as process:
        [(first_server, url)] = servers(log)
        started = stand_in_state(url)
        assert started["argv"][:2] == ["serve", str(tokenizer_dir)]
        assert started["argv"][-2:] == ["--gpu-memory-utilization", "0.85"]
        assert started["key_from"] == "VLLM_API_KEY"
        await start_scene(fake, database, [s.general], description="{{char}}는 활발한 대학생이다.")
        said = await fake.say(s.general, s.members[0], "안녕! 오늘 바다 보러 갈래?")
        reply = await fake.wait_for_message(
            s.general, lambda m: m.webhook_id is not None, after=said
        )
        await fake.wait_until(lambda: has_buttons(reply), timeout=240)
        assert "잘 기억해 둘게" in reply.content
        [body] = stand_in_state(url)["bodies"]
        assert body["model"] == "synatra" and all(isinstance(i, int) for i in body["prompt"])

        # The server dies while a reply streams: the reply ends with the engine's note.
        asked = await fake.say(s.general, s.members[0], "길게 이야기해 줘")
        cut = await fake.wait_for_message(
            s.general, lambda m: m.webhook_id is not None, after=asked
        )
        await wait_generating(url, after=1)
        first_helper = stand_in_state(url)["helper_pid"]
        os.kill(first_server, signal.SIGKILL)
        await fake.wait_until(lambda: any(n in cut.content for n in LOST_NOTES), timeout=60)
        assert await gone(first_helper)

        # The bot started it again; the next turn is answered.
        await fake.wait_until(lambda: len(servers(log)) == 2, timeout=240)
        second_server, second_url = servers(log)[1]
        again = await fake.say(s.general, s.members[0], "다시 해 볼까?")
        answer = await fake.wait_for_message(
            s.general, lambda m: m.webhook_id is not None and m.id > cut.id, after=again
        )
        await fake.wait_until(lambda: has_buttons(answer), timeout=240)
        assert "잘 기억해 둘게" in answer.content
        assert alive(second_server)
        second_helper = stand_in_state(second_url)["helper_pid"]

        process.send_signal(signal.SIGTERM)
        assert await process.wait() == 0
    assert await gone(second_server) and await gone(second_helper)
    printed = log.read_text(errors="replace")
    assert "vllm stopped" in printed
    assert "sk-vllm-e2e-key" not in printed
