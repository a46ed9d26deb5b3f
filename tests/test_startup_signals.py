"""A host stopping the bot while it starts (a deploy replacing it, Ctrl-C): the real bot process
exits 0, closing what it had opened, with one line saying so."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
from pathlib import Path

import pytest

from tests.bot_process import bot_env, spawn_bot


async def _logged(log: Path, text: str, process: asyncio.subprocess.Process) -> None:
    """Wait until the process has written `text` to its log (or has ended)."""
    deadline = asyncio.get_running_loop().time() + 60
    while text not in log.read_text(encoding="utf-8", errors="replace"):
        assert process.returncode is None, log.read_text(encoding="utf-8", errors="replace")
        assert asyncio.get_running_loop().time() < deadline, f"{text!r} never logged"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_while_the_model_loads_exits_0_after_closing_what_was_opened(
    discord_fake, tokenizer_dir, tmp_path, sig
):
    fake = discord_fake
    database, log = tmp_path / "start.db", tmp_path / "bot.log"
    env = {
        **bot_env(fake, database, tokenizer_dir, tmp_path / "prompts.log"),
        "FAULT_SLOW_START": "1",  # the engine's start lasts until the bot stops it
    }
    with log.open("wb") as output:
        process = await spawn_bot(fake, env, output)
        try:
            await _logged(log, "engine: loading", process)
            process.send_signal(sig)
            code = await asyncio.wait_for(process.wait(), timeout=30)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()

    text = log.read_text(encoding="utf-8", errors="replace")
    assert code == 0, text
    assert "Traceback" not in text, text
    done = f"stopped by {sig.name} during start-up"
    assert text.count(done) == 1, text
    # The engine was closed before the line, and the database was migrated and left whole.
    assert text.index("engine: closed") < text.index(done)
    assert fake.identify_count == 0  # it never reached the gateway
    with contextlib.closing(sqlite3.connect(database)) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert connection.execute("SELECT count(*) FROM messages").fetchone() == (0,)
