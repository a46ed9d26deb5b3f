"""The restart drill: the real bot process is killed with SIGKILL at random moments during 20
turns in 3 channels and started again each time. Afterwards nothing on screen is unfinished,
every stored reply is what the channel shows, no player line is lost, doubled or left without
its answer, and every scene goes on. Its figures are in docs/reliability.md."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import re
import signal
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from tests.bot_harness import has_buttons, stop_button
from tests.bot_process import bot_env, bot_process, start_scene

TURNS = 20
SEED = 2712
CURSOR = "▌"
#: Where a kill lands: just after a player's line, while its reply streams, or after it ended.
KILL_POINTS = ("sent", "streaming", "finished")
FINISHED_LOG = re.compile(r"finished (\d+) replies left unfinished")


@dataclass
class DrillFigures:
    kills: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KILL_POINTS, 0))
    starts: int = 0
    finished_at_start: int = 0
    lines_lost: int = 0
    lines_doubled: int = 0
    #: Lines whose own answer a kill took, answered together with the player's next line.
    lines_answered_with_the_next: int = 0
    replies_doubled: int = 0


def _rows(database: Path, query: str) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(database)) as connection:
        return connection.execute(query).fetchall()


def _reply_after(channel, said):
    return next((m for m in channel.messages if m.webhook_id is not None and m.id > said.id), None)


def _answered(channel, said) -> bool:
    reply = _reply_after(channel, said)
    return reply is not None and not reply.deleted and has_buttons(reply)


def _speaking(channel, said) -> bool:
    """Its reply shows words (or has already ended)."""
    reply = _reply_after(channel, said)
    return reply is not None and ("옛날" in reply.content or has_buttons(reply))


async def test_sigkill_at_random_moments_loses_no_line_and_leaves_nothing_unfinished(
    discord_fake, tokenizer_dir, tmp_path
):
    fake, s = discord_fake, discord_fake.scenario
    rng = random.Random(SEED)
    database, prompts = tmp_path / "drill.db", tmp_path / "prompts.log"
    env = bot_env(fake, database, tokenizer_dir, prompts)
    channels = [s.general, fake.add_channel(s.guild, "방-1"), fake.add_channel(s.guild, "방-2")]
    figures = DrillFigures()
    logs: list[Path] = []

    @contextlib.asynccontextmanager
    async def running():
        log = tmp_path / f"bot{len(logs)}.log"
        logs.append(log)
        figures.starts += 1
        async with bot_process(fake, env, log) as process:
            yield process

    said_lines = []
    async with contextlib.AsyncExitStack() as stack:
        process = await stack.enter_async_context(running())
        await start_scene(fake, database, channels)

        for turn in range(TURNS):
            channel = channels[turn % len(channels)]
            member = s.members[turn % len(s.members)]
            asks_long = rng.random() < 0.5
            text = f"{turn + 1}번째 줄이야. " + (
                "길게 이야기해 줘" if asks_long else "짧게 답해 줘"
            )
            kill = rng.choice((None, None, *KILL_POINTS))
            said = await fake.say(channel, member, text)
            said_lines.append((channel, said))
            answered = functools.partial(_answered, channel, said)
            if kill is None:
                await fake.wait_until(answered, timeout=30)
                continue
            if kill == "sent":
                await asyncio.sleep(rng.uniform(0, 0.3))
            elif kill == "streaming":
                await fake.wait_until(functools.partial(_reply_after, channel, said), timeout=30)
                if asks_long:
                    await fake.wait_until(functools.partial(_speaking, channel, said), timeout=30)
            else:
                await fake.wait_until(answered, timeout=30)
            figures.kills[kill] += 1
            process.kill()
            await process.wait()
            await stack.aclose()
            process = await stack.enter_async_context(running())

        # Every scene goes on.
        for index, channel in enumerate(channels):
            said = await fake.say(channel, s.members[0], f"{index + 1}번 방, 아직 거기 있지?")
            said_lines.append((channel, said))
            await fake.wait_until(functools.partial(_answered, channel, said), timeout=30)
        # Lines of the drill still waiting for their reply are answered too.
        await fake.wait_until(
            lambda: all(
                not m.content.endswith(CURSOR) and stop_button(m) is None
                for channel in channels
                for m in channel.visible_messages
            ),
            timeout=60,
        )
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=20) == 0

    for log in logs:
        figures.finished_at_start += sum(
            int(m.group(1)) for m in FINISHED_LOG.finditer(log.read_text(errors="replace"))
        )

    # Nothing on screen is unfinished.
    for channel in channels:
        for message in channel.visible_messages:
            assert not message.content.endswith(CURSOR), message.content
            assert stop_button(message) is None
    # Every stored reply is what the channel shows.
    by_id = {m.id: m for channel in channels for m in channel.messages}
    stored_replies = _rows(
        database,
        "SELECT content, discord_message_ids FROM messages "
        "WHERE role = 'assistant' AND chosen AND NOT deleted ORDER BY id",
    )
    for content, ids in stored_replies:
        shown = [by_id[int(i)] for i in re.findall(r"\d+", ids)]
        assert shown and all(not m.deleted for m in shown), content
        assert "\n".join(m.content for m in shown).strip() == content.strip()
    # No player line was lost or doubled.
    stored_lines = [
        content
        for (content,) in _rows(
            database, "SELECT content FROM messages WHERE role = 'user' AND NOT deleted"
        )
    ]
    for _, said in said_lines:
        count = stored_lines.count(said.content)
        figures.lines_lost += count == 0
        figures.lines_doubled += count > 1
    # Every line is answered once: by its own reply (one cut off by a kill is given again after
    # the restart), or, where the player spoke again first, with their next line.
    rows = _rows(
        database,
        "SELECT session_id, role FROM messages WHERE chosen AND NOT deleted ORDER BY session_id, id",
    )
    for session in {session for session, _ in rows}:
        roles = "".join("u" if role == "user" else "a" for s_id, role in rows if s_id == session)
        assert roles.startswith("a") and roles.endswith("a"), roles  # greeting ... last answer
        for answers in re.findall(r"u(a*)", roles):
            figures.lines_answered_with_the_next += answers == ""
            figures.replies_doubled += len(answers) > 1
    print(f"restart drill: {figures}")
    assert sum(figures.kills.values()) >= 5
    assert figures.lines_lost == 0 and figures.lines_doubled == 0
    assert figures.replies_doubled == 0
