"""Automatic memory: the turns a scene's prompt no longer holds, folded into its summary.

Scenes run for hundreds of turns and the context holds a few dozen: each trim drops the oldest
turns from the prompt. After a stored reply whose prompt starts past turns the summary does not
cover yet, a job for that scene folds them in: the summary prompt (`PromptBuilder.
build_summary`) holds the summary so far and the dropped turns, and the model writes the new
summary, within the scene's `summary_tokens`. The session stores the summary with the id of the
newest turn folded in, so a restart loses nothing and the next stored reply resumes the work.

Jobs use the players' engine through the scheduler's background lane: at most one per scene,
started only while no player's turn waits, and giving their slot back the moment a player's
turn needs it (they are retried after). Nothing half-done is stored: a summary is written only
whole, only over the summary it was folded from, and only while no turn it folded changed.

Summaries are paid for by replies, so what the engine does in the background follows what
players do in the foreground: each stored reply lets its scene ask for `SUMMARIES_PER_REPLY`
summaries more, banked up to `SUMMARY_BANK`, and a server's scenes run at most
`SUMMARY_JOBS_PER_SERVER` summary jobs at once. A scene whose prompt dropped hundreds of turns
at once (an imported chat, a resumed one) is folded a few chunks per reply, never dozens of
requests for one message; until it has caught up its prompt simply holds less of the past.

The same request notes what each player who spoke in the folded turns said about themselves:
a short section after the summary, one line per fact (`prompt.player_facts`), kept for each
character of the cast (`PlayerFacts`) once the summary is stored, and left out where a
channel's moderators turned facts off. It costs no request and no token of its own: the
summary is asked to be a little shorter.

An undo, edit, delete or swipe of a turn the summary covers makes it stale: the next job
rewrites it, folding the scene again from its start, chunk by chunk. A summary written by hand
(`RoleplayCore.set_memory`) stays as written; folding continues from it. It is also kept
apart: a change to a turn it covers leaves the summary as it is, and a rewrite starts again
from it (and the turns after it), not from the scene's start.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

from synatra_bot.engine.base import SamplingParams
from synatra_bot.errors import EngineError, PromptTooLarge, StorageUnavailable, TurnCancelled
from synatra_bot.prompt.builder import BuiltPrompt, SummaryPrompt
from synatra_bot.prompt.history import HistoryMessage, clean_name
from synatra_bot.prompt.player_facts import (
    FACT_ANSWER_SHARE,
    facts_request,
    split_facts,
)
from synatra_bot.prompt.summary import (
    MIN_SUMMARY_ROOM,
    SUMMARY_CHARS_PER_TOKEN,
    SUMMARY_INSTRUCTIONS,
    SUMMARY_REQUEST,
)
from synatra_bot.roleplay.config import ChannelConfig
from synatra_bot.roleplay.core import CACHE_LIMIT, MIN_TURN_TOKENS, ActiveRoleplay, RoleplayCore
from synatra_bot.roleplay.scheduler import PREEMPTED, Scheduler, TurnOutcome
from synatra_bot.storage import repository as repo
from synatra_bot.storage.records import MessageRecord, SessionRecord

log = logging.getLogger(__name__)

#: A summary keeps to the facts: sampled cooler than the scene's replies.
SUMMARY_TEMPERATURE = 0.3
SUMMARY_TOP_P = 0.9
#: Rounds in a row that store nothing (taken back by players, a turn changed meanwhile) before
#: a job gives up; the next stored reply starts another.
MAX_IDLE_ROUNDS = 8
#: Summary requests each stored reply adds to its scene's allowance ...
SUMMARIES_PER_REPLY = 2
#: ... which holds at most this many (replies whose prompts dropped nothing bank theirs).
SUMMARY_BANK = 4
#: Summary jobs of one server (all DM scenes together count as one) running at once.
SUMMARY_JOBS_PER_SERVER = 2
#: A summary within this many tokens of its limit that does not end a sentence was cut off.
CUT_OFF_SLACK = 8
#: Where a summary may be cut: after a sentence's closing mark (and its quotes), or a line.
_SENTENCE_END = re.compile(r"[.!?。！？…~]+[\"'”’」』)\]]*(?=\s|$)|\n")


def fit_summary(text: str, limit: int, count: Callable[[str], int]) -> str:
    """`text` within `limit` tokens (`count` is the real tokenizer's): as it is when it fits
    and was not cut off at the limit, else up to its last sentence end that fits (at a
    character when not even its first sentence does)."""
    text = text.strip()
    tokens = count(text)
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    complete = bool(ends) and ends[-1] == len(text)
    if tokens <= limit and (complete or tokens < limit - CUT_OFF_SLACK):
        return text
    low, high = 0, len(ends)
    while low < high:  # how many sentence ends fit (a longer prefix never takes fewer tokens)
        middle = (low + high) // 2
        if count(text[: ends[middle]].strip()) <= limit:
            low = middle + 1
        else:
            high = middle
    if low > 0:
        return text[: ends[low - 1]].strip()
    low, high = 0, len(text)
    while low < high:
        middle = (low + high + 1) // 2
        if count(text[:middle].rstrip()) <= limit:
            low = middle
        else:
            high = middle - 1
    return text[:low].rstrip()


@dataclass(eq=False)
class _Job:
    """One scene's summary job: what it folds up to, and whether a turn it folds changed."""

    session_id: int
    channel_id: int
    #: The server whose allowance of jobs it takes (None: a DM scene).
    guild_id: int | None
    config: ChannelConfig
    cast: tuple[str, ...]
    #: The cast's characters: each of them learns what the players said about themselves.
    cast_ids: tuple[int, ...]
    #: The first turn of the newest prompt: the job folds every turn before it.
    target: int
    #: The newest turn the round under way may fold (None between rounds).
    folding_until: int | None = None
    #: A turn the round under way folds changed: it stores nothing.
    dirty: bool = False


class MemoryKeeper:
    """Keeps every scene's summary up to date with what its prompts dropped."""

    def __init__(self, core: RoleplayCore, scheduler: Scheduler) -> None:
        self.core = core
        self.scheduler = scheduler
        self._jobs: dict[int, _Job] = {}
        #: Session -> the prompt start its summary was found to cover all turns before.
        self._covered: dict[int, int] = {}
        #: Session -> summary requests it may still make (see `SUMMARIES_PER_REPLY`).
        self._allowance: dict[int, int] = {}
        # Storing a summary and marking one stale take turns, so a turn that changes while a
        # summary is stored is never lost.
        self._writing = asyncio.Lock()
        core.memory = self

    @staticmethod
    def job_key(session_id: int) -> tuple[str, int]:
        """The scheduler's key of a scene's summary job."""
        return ("memory", session_id)

    def updating(self, session_id: int) -> bool:
        return session_id in self._jobs

    # --- what the core tells it ---------------------------------------------------------------

    def reply_stored(self, active: ActiveRoleplay, built: BuiltPrompt) -> None:
        """A reply was stored from `built`: fold what its prompt dropped, in the background."""
        session = active.session
        start = built.history_start_id
        if start is None or not session.summary_auto:
            return
        self._earn(session.id)
        cast = tuple(c.name for c in active.cast)
        cast_ids = tuple(c.id for c in active.cast)
        job = self._jobs.get(session.id)
        if job is not None:  # the running job takes the newer start on its next round
            job.target = max(job.target, start)
            job.config, job.cast, job.cast_ids = active.config, cast, cast_ids
            return
        if not session.summary_stale and self._covered.get(session.id) == start:
            return
        guild_jobs = sum(1 for other in self._jobs.values() if other.guild_id == session.guild_id)
        if guild_jobs >= SUMMARY_JOBS_PER_SERVER:
            return  # the allowance stays banked: a later reply starts the job
        job = _Job(
            session.id, session.channel_id, session.guild_id, active.config, cast, cast_ids, start
        )
        if self.scheduler.spawn(self.job_key(session.id), functools.partial(self._run, job)):
            self._jobs[session.id] = job

    def _earn(self, session_id: int) -> None:
        if session_id not in self._allowance and len(self._allowance) >= CACHE_LIMIT:
            self._allowance.clear()  # forgotten allowances only make scenes wait a reply
        banked = self._allowance.get(session_id, 0)
        self._allowance[session_id] = min(SUMMARY_BANK, banked + SUMMARIES_PER_REPLY)

    def _spend(self, session_id: int) -> bool:
        """Take one summary request from the scene's allowance; False when none is left."""
        left = self._allowance.get(session_id, 0)
        if left <= 0:
            return False
        self._allowance[session_id] = left - 1
        return True

    async def history_changed(self, session_id: int, oldest_id: int) -> None:
        """Turns of the session from `oldest_id` on changed: the summary is stale when it
        covers them, and a job folding them stores nothing."""
        job = self._jobs.get(session_id)
        if job is not None and job.folding_until is not None and oldest_id <= job.folding_until:
            job.dirty = True
        async with self._writing:
            stale = await repo.mark_summary_stale(
                self.core.sessions, session_id=session_id, changed_id=oldest_id
            )
        if stale:
            self._covered.pop(session_id, None)

    def auto_changed(self, session_id: int) -> None:
        """Automatic memory was turned on or off: look again on the next reply."""
        self._covered.pop(session_id, None)
        job = self._jobs.get(session_id)
        if job is not None:
            job.dirty = True

    # --- the job --------------------------------------------------------------------------------

    async def _run(self, job: _Job) -> None:
        try:
            idle = 0
            while idle < MAX_IDLE_ROUNDS:
                progress = await self._round(job)
                if progress is None:
                    return
                idle = 0 if progress else idle + 1
        except TurnCancelled:
            return  # shutting down while it waited: nothing was stored
        except StorageUnavailable:
            return  # nothing can be stored: logged where that was found
        except (PromptTooLarge, EngineError) as error:
            if not self.scheduler.closing:
                log.warning("the memory of scene %s was not updated: %s", job.session_id, error)
        except Exception:
            log.exception("the memory of scene %s was not updated", job.session_id)
        finally:
            job.folding_until = None
            self._jobs.pop(job.session_id, None)

    async def _round(self, job: _Job) -> bool | None:
        """Fold the next chunk: True when a summary was stored, False when this round stored
        nothing but another may, None when the job is done."""
        job.dirty = False
        job.folding_until = target = job.target  # what it may read, until it knows better
        sessions = self.core.sessions
        session = await repo.get_session(sessions, session_id=job.session_id)
        if session is None or session.ended_at is not None or not session.summary_auto:
            return None
        stale = session.summary_stale
        # A stale summary is folded again from its base: the one written by hand, or nothing.
        if stale:
            previous, after = session.summary_written or "", session.summary_written_until_id
        else:
            previous, after = session.summary, session.summary_until_id
        records = await repo.history_between(
            sessions,
            session_id=session.id,
            after_id=after,
            before_id=target,
            limit=job.config.context_size // MIN_TURN_TOKENS,
        )
        if not records:
            if stale:  # nothing it covered is left past its base: the base is the summary
                return await self._store(job, session, previous, after)
            self._remember_covered(session.id, target)
            return None
        config = job.config
        players = _players(records) if config.player_facts and config.fact_tokens else {}
        instructions, request = _facts_asked(config.summary_tokens, players)
        prompt = self.core.builder.build_summary(
            messages=[_dialogue(record) for record in records],
            previous=previous,
            context_size=config.context_size,
            max_new_tokens=config.summary_tokens,
            cast=job.cast,
            instructions=instructions,
            request=request,
        )
        folded = records[: prompt.included]
        newest = folded[-1].id
        if not self._spend(session.id):
            return None  # the scene's next reply goes on from here
        job.folding_until = newest
        text, retry = await self._generate(job, prompt)
        if text is None:
            return False if retry else None
        count = self.core.builder.count_text
        cut_off = count(text) >= config.summary_tokens - CUT_OFF_SLACK
        text, facts = split_facts(text, list(players), cut_off=cut_off)
        summary = fit_summary(text, config.summary_tokens, count)
        if not summary:
            log.warning("the memory of scene %s came back empty", session.id)
            return None
        stored = await self._store(job, session, summary, newest)
        if stored and facts:
            await self._remember(job, folded, players, facts)
        return stored

    async def _remember(
        self,
        job: _Job,
        folded: list[MessageRecord],
        players: dict[str, int],
        facts: dict[str, list[str]],
    ) -> None:
        """Keep what the fold learnt about its players, for each character of the cast."""
        for name, texts in facts.items():
            author = players[name]
            turn = next((r.id for r in reversed(folded) if r.author_id == author), None)
            if turn is None:
                continue  # none of their lines fitted the fold: nothing came from them
            for character_id in job.cast_ids:
                for text in texts:
                    await self.core.facts.remember_fact(
                        job.guild_id, author, character_id, text, "summary", turn
                    )

    async def _generate(self, job: _Job, prompt: SummaryPrompt) -> tuple[str | None, bool]:
        """The summary the model wrote, or None and whether to try again (a player's turn
        took the slot back) or not (timed out, shutting down)."""
        sampling = job.config.sampling
        params = SamplingParams(
            temperature=SUMMARY_TEMPERATURE,
            top_p=SUMMARY_TOP_P,
            top_k=sampling.top_k,
            repetition_penalty=sampling.repetition_penalty,
            max_new_tokens=job.config.summary_tokens,
        )
        async with self.scheduler.background(self.job_key(job.session_id)) as slot:
            async for _delta in slot.stream(prompt.input_ids, params):
                pass
        if slot.outcome is TurnOutcome.FINISHED:
            return slot.text, False
        if slot.outcome is TurnOutcome.TIMED_OUT:
            log.warning("the memory of scene %s timed out", job.session_id)
        return None, slot.cancel_reason == PREEMPTED

    async def _store(
        self, job: _Job, session: SessionRecord, summary: str, until_id: int | None
    ) -> bool:
        """Store `summary` over the one it was folded from, unless a turn it folded changed."""
        async with self._writing:
            if job.dirty:
                return False
            stored = await repo.store_summary(
                self.core.sessions,
                session_id=session.id,
                summary=summary,
                until_id=until_id,
                expect_summary=session.summary,
                expect_until_id=session.summary_until_id,
                expect_stale=session.summary_stale,
            )
        if stored:
            self.core.forget(job.channel_id)  # the next prompt sees it
        return stored

    def _remember_covered(self, session_id: int, start: int) -> None:
        if len(self._covered) >= CACHE_LIMIT:
            self._covered.clear()
        self._covered[session_id] = start


def _dialogue(record: MessageRecord) -> HistoryMessage:
    """A stored turn as a line of the summary prompt's dialogue."""
    return HistoryMessage(
        role="assistant" if record.role == "assistant" else "user",
        name=record.display_name or ("캐릭터" if record.role == "assistant" else "user"),
        content=record.content,
        message_id=record.id,
        author_id=record.author_id,
    )


def _players(records: list[MessageRecord]) -> dict[str, int]:
    """The players who speak in `records`, by the name the summary prompt gives them (a name
    two players share names neither: a fact under it could be either's)."""
    seen: dict[str, set[int]] = {}
    for record in records:
        if record.role == "user" and record.author_id is not None:
            seen.setdefault(clean_name(record.display_name or "user"), set()).add(record.author_id)
    return {name: next(iter(ids)) for name, ids in seen.items() if len(ids) == 1}


def _facts_asked(summary_tokens: int, players: dict[str, int]) -> tuple[str, str]:
    """The summary prompt's instructions and request, asking for facts about `players` too
    when there are any: the answer stays within `summary_tokens`, the summary asked to be
    short enough to leave the facts a `FACT_ANSWER_SHARE`th of it."""
    if not players:
        return SUMMARY_INSTRUCTIONS, SUMMARY_REQUEST
    tokens = summary_tokens - summary_tokens // FACT_ANSWER_SHARE
    chars = max(MIN_SUMMARY_ROOM, int(tokens * SUMMARY_CHARS_PER_TOKEN))
    instructions = SUMMARY_INSTRUCTIONS.replace("{{limit}}", str(chars))
    return instructions, facts_request(list(players))
