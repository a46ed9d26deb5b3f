"""How long the largest chat imports the bot accepts hold its event loop.

    python -m benchmarks.imports [--repeat 3]

Each shape is a SillyTavern chat file at the limits `/rp import` accepts (8 MiB, 20,000 rows,
100 swipes a message, 64,000 characters a message), imported through the same `Archive` and
database code the bot uses (SQLite, migrations applied), in a process that has torch and
transformers loaded and frozen out of the collector as the bot does at start. A sampler on the
event loop sleeps 5 ms again and again; its lateness is the loop lag every other server would
feel. The baseline row samples the same loop with nothing imported, in the same run, so a busy
machine shows in both.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

SAMPLE_S = 0.005
MIB = 1024 * 1024


@dataclass
class Result:
    shape: str
    megabytes: float
    rows: int
    seconds: float
    lags_ms: list[float] = field(default_factory=list)
    gc_pauses_ms: list[float] = field(default_factory=list)

    def row(self) -> str:
        lags = sorted(self.lags_ms) or [0.0]
        p50 = lags[len(lags) // 2]
        p99 = lags[min(len(lags) - 1, round(0.99 * (len(lags) - 1)))]
        return (
            f"| {self.shape} | {self.megabytes:.1f} | {self.rows} | {self.seconds:.2f} "
            f"| {p50:.1f} | {p99:.1f} | {lags[-1]:.1f} | {max(self.gc_pauses_ms, default=0):.1f} |"
        )


def chat_file(rows: Iterator[dict[str, object]]) -> bytes:
    header = {"user_name": "민수", "character_name": "하늘", "create_date": "2024-06-05@14h56m50s"}
    lines = (json.dumps(row, ensure_ascii=False) for row in (header, *rows))
    return "\n".join(lines).encode()


def shapes() -> Iterator[tuple[str, bytes, int]]:
    """(name, file, rows it stores) for the largest files of three kinds the import accepts."""
    from synatra_bot.prompt.st_chat import MAX_CHAT_BYTES, MAX_CHAT_ROWS, MAX_MESSAGE_CHARS

    count = MAX_CHAT_ROWS - 1
    many = chat_file(
        {
            "name": "민수" if n % 2 else "하늘",
            "is_user": n % 2 == 1,
            "mes": f"{'가나다라마바사 ' * 16}{n}",
        }
        for n in range(count)
    )
    yield "20,000 short messages", many, count

    swipes = [f"{'이야기 ' * 150}{k}" for k in range(100)]
    message = {"name": "하늘", "is_user": False, "mes": swipes[0], "swipes": swipes, "swipe_id": 0}
    lines = (MAX_CHAT_BYTES - 1024) // (len(json.dumps(message, ensure_ascii=False).encode()) + 1)
    swiped = chat_file(message for _ in range(lines))
    yield f"{lines} messages x 100 swipes", swiped, lines * 100

    big = [f"{'a' * (MAX_MESSAGE_CHARS - 10)}{k}" for k in range(100)]
    one = chat_file(iter([{"name": "하늘", "is_user": False, "mes": big[0], "swipes": big}]))
    yield "1 message, 100 swipes of 64,000 characters", one, 100


async def sample(lags: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        began = time.perf_counter()
        await asyncio.sleep(SAMPLE_S)
        lags.append((time.perf_counter() - began - SAMPLE_S) * 1000)


async def run(repeat: int) -> list[Result]:
    import torch  # noqa: F401  (the bot's heap: what the collector would walk)
    import transformers  # noqa: F401

    from synatra_bot.app import build_core, open_storage
    from synatra_bot.engine.scripted import ScriptedEngine
    from synatra_bot.prompt.cards import CharacterCard
    from synatra_bot.roleplay.archive import Archive
    from synatra_bot.roleplay.types import Actor, Place
    from synatra_bot.settings import load_settings
    from synatra_bot.tokenizer import load_tokenizer
    from tests.model_fixtures import write_tokenizer

    folder = Path(tempfile.mkdtemp(prefix="synatra-import-bench-"))
    tokenizer_dir = write_tokenizer(folder / "tokenizer")
    os.environ.update(
        DISCORD_TOKEN="benchmark",
        MODEL_ID=str(tokenizer_dir),
        DATABASE_URL=f"sqlite+aiosqlite:///{folder / 'bot.sqlite3'}",
    )
    settings = load_settings(env_file=None, require_token=False)
    tokenizer = load_tokenizer(str(tokenizer_dir))
    engine = ScriptedEngine(lambda prompt: "네.", tokenizer=tokenizer)
    files = list(shapes())
    results: list[Result] = []
    pauses: list[float] = []
    started: list[float] = []

    def timed(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[:] = [time.perf_counter()]
        elif started:
            pauses.append((time.perf_counter() - started[0]) * 1000)

    async with open_storage(settings) as storage:
        archive = Archive(build_core(settings, storage, engine, tokenizer))
        gc.collect()
        gc.freeze()
        gc.callbacks.append(timed)
        try:
            user = 1000
            for _ in range(repeat):
                baseline = Result("baseline: nothing imported", 0.0, 0, 2.0)
                stop = asyncio.Event()
                sampler = asyncio.create_task(sample(baseline.lags_ms, stop))
                pauses.clear()
                await asyncio.sleep(baseline.seconds)
                stop.set()
                await sampler
                baseline.gc_pauses_ms = list(pauses)
                results.append(baseline)
                for name, data, rows in files:
                    user += 1
                    actor = Actor(user_id=user, display_name="민수", guild_id=1)
                    card = CharacterCard(name="하늘", description="관찰자.", first_message="안녕.")
                    character = await storage.characters.create(actor, card)
                    result = Result(name, len(data) / MIB, rows, 0.0)
                    stop = asyncio.Event()
                    sampler = asyncio.create_task(sample(result.lags_ms, stop))
                    pauses.clear()
                    began = time.perf_counter()
                    await archive.import_chat(
                        actor,
                        Place(channel_id=user, guild_id=1),
                        data=data,
                        filename="chat.jsonl",
                        character_id=character.id,
                    )
                    result.seconds = time.perf_counter() - began
                    stop.set()
                    await sampler
                    result.gc_pauses_ms = list(pauses)
                    results.append(result)
        finally:
            gc.callbacks.remove(timed)
            gc.unfreeze()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    results = asyncio.run(run(args.repeat))
    print("| import | MiB | rows | s | loop lag p50 ms | p99 ms | max ms | longest GC ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for result in results:
        print(result.row())


if __name__ == "__main__":
    main()
