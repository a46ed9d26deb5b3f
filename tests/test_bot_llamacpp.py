"""The bot with ENGINE=llamacpp end to end: the real bot process starts llama.cpp's own server
with a tiny GGUF made at test time, plays a scene through the fake Discord, lives through the
server being killed mid-reply, and stops the server when it stops."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import urllib.request
from pathlib import Path

import pytest

from tests import llama_cpp
from tests.bot_harness import has_buttons
from tests.bot_process import bot_env, bot_process, start_scene
from tests.llama_cpp import alive, gone

pytestmark = pytest.mark.slow

STARTED = re.compile(r"llama-server started \(pid (\d+)\) on (\S+)")
#: The notes a reply cut by a lost server ends with (Korean: the fake's members speak it).
LOST_NOTES = ("생성 서버와의 연결이 끊겼어요", "생성 서버가 답장을 일찍 끝냈어요")


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not llama_cpp.is_built():
        pytest.fail(f"llama.cpp is not built: {llama_cpp.BUILD_HELP}")
    return llama_cpp.make_gguf(tiny_model_dir, tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def server_pids(log: Path) -> list[int]:
    return [int(pid) for pid, _ in STARTED.findall(log.read_text(errors="replace"))]


def server_url(log: Path) -> str:
    return str(STARTED.findall(log.read_text(errors="replace"))[-1][1])


def slots(url: str) -> list[dict]:
    with urllib.request.urlopen(f"{url}/slots", timeout=10) as response:
        return list(json.loads(response.read()))


async def wait_generating(url: str, after_task: int) -> None:
    """Until llama-server is writing a reply for a task after `after_task`."""

    def generating() -> bool:
        return any(slot["is_processing"] and slot["id_task"] > after_task for slot in slots(url))

    for _ in range(2400):
        if await asyncio.to_thread(generating):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("no reply reached the server")


async def test_a_scene_plays_on_llama_cpp_survives_its_death_and_stops_it(
    discord_fake, tokenizer_dir, tiny_gguf, tmp_path
):
    fake, s = discord_fake, discord_fake.scenario
    database, log = tmp_path / "llama.db", tmp_path / "bot.log"
    env = bot_env(fake, database, tokenizer_dir, tmp_path / "prompts.log")
    env |= {
        "FAULT_ENGINE": "settings",
        "MODEL_GGUF": str(tiny_gguf),
        "LLAMA_SERVER": str(llama_cpp.server_binary()),
        "LLAMA_PARALLEL": "1",
        "LLAMA_ARGS": "--threads 2",
        "MAX_NEW_TOKENS": "300",
    }
    env.pop("ENGINE", None)  # naming the GGUF is enough
    async with bot_process(fake, env, log) as process:
        [first_server] = server_pids(log)
        await start_scene(fake, database, [s.general], description="{{char}}는 활발한 대학생이다.")
        said = await fake.say(s.general, s.members[0], "안녕! 오늘 바다 보러 갈래?")
        reply = await fake.wait_for_message(
            s.general, lambda m: m.webhook_id is not None, after=said
        )
        await fake.wait_until(lambda: has_buttons(reply), timeout=240)
        assert not any(note in reply.content for note in LOST_NOTES)

        # The server dies while a reply streams: the reply ends with the engine's note.
        last_task = max(slot["id_task"] for slot in slots(server_url(log)))
        asked = await fake.say(s.general, s.members[0], "길게 이야기해 줘")
        cut = await fake.wait_for_message(
            s.general, lambda m: m.webhook_id is not None, after=asked
        )
        await wait_generating(server_url(log), last_task)
        os.kill(first_server, signal.SIGKILL)
        await fake.wait_until(lambda: any(n in cut.content for n in LOST_NOTES), timeout=60)

        # The bot started it again; the next turn is answered.
        await fake.wait_until(lambda: len(server_pids(log)) == 2, timeout=240)
        second_server = server_pids(log)[1]
        again = await fake.say(s.general, s.members[0], "다시 해 볼까?")
        answer = await fake.wait_for_message(
            s.general, lambda m: m.webhook_id is not None and m.id > cut.id, after=again
        )
        await fake.wait_until(lambda: has_buttons(answer), timeout=240)
        assert not any(note in answer.content for note in LOST_NOTES)
        assert alive(second_server)

        process.send_signal(signal.SIGTERM)
        assert await process.wait() == 0
    assert await gone(second_server)
    assert "llama-server stopped" in log.read_text(errors="replace")
