"""The prompt inspector's report: what each block costs and what was left out."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from synatra_bot.prompt.pins import PinNote
from synatra_bot.prompt.player_facts import FactNote
from synatra_bot.prompt.recall import RecallNote

LoreStatus = Literal["fired", "skipped", "timed_out", "unscanned"]
#: The report's words: key -> (English, Korean).
_WORDS: dict[str, tuple[str, str]] = {
    "tokens": (
        "tokens {total}/{budget} (context {context}, max new {max_new})",
        "토큰 {total}/{budget} (컨텍스트 {context}, 새 토큰 최대 {max_new})",
    ),
    "examples": ("examples: {kept} kept, {dropped} dropped", "예시: {kept}개 넣음, {dropped}개 뺌"),
    "messages": (
        "messages: {kept} kept, {dropped} dropped",
        "메시지: {kept}개 넣음, {dropped}개 뺌",
    ),
    "trimmed": (" (trimmed now)", " (이번에 잘림)"),
    "lorebook": ("lorebook", "로어북"),
    "lorebook_status": ("lorebook {status}", "로어북 {status}"),
    "card_entries": (
        "card lorebook: {count} {status} (order {orders})",
        "카드 로어북: {count} {status} (순서 {orders})",
    ),
    "entry": ("1 entry", "1개 항목"),
    "entries": ("{n} entries", "{n}개 항목"),
    "memory": ("memory: {tokens} tokens", "기억: {tokens} 토큰"),
    "scripts": ("card scripts: {names}", "카드 스크립트: {names}"),
    "scripts_failed": ("; failed: {names}", "; 실패: {names}"),
    "none": ("none", "없음"),
    "recalled": ("recalled: {n} old turn(s)", "떠올린 옛 턴: {n}개"),
    "recalled_turn": ("  #{id} {name} ({why}): {text}", "  #{id} {name} ({why}): {text}"),
    "recall_matched": ("matched {terms}; score {score}", "일치: {terms}, 점수 {score}"),
    "recall_similar": ("similarity {similarity}", "의미 유사도 {similarity}"),
    "facts": (
        "what {character} knows of {player}: {n} fact(s)",
        "{character}의 기억 ({player}): 사실 {n}개",
    ),
    "fact": ("  #{id} ({source}): {text}", "  #{id} ({source}): {text}"),
    "pins": (
        "pins: {n} in the prompt, {tokens} tokens{left}",
        "고정 기억: 프롬프트에 {n}개, {tokens} 토큰{left}",
    ),
    "pins_left": ("; {n} older left out (over budget)", ", 예산 초과로 오래된 {n}개 빠짐"),
    "pin": ("  📌{id} {text}", "  📌{id} {text}"),
    "memory_until": (", up to message #{id}", ", 메시지 #{id}까지"),
    "stale": ("stale", "다시 쓰는 중"),
    "auto_off": ("automatic memory off", "자동 기억 꺼짐"),
    "personas_left_out": ("personas left out: {names}", "빠진 페르소나: {names}"),
    "left_out": (
        "{book} lorebook over the limits: {entries} entries and {keys} keys left out",
        "{book} 로어북 한도 초과: 항목 {entries}개, 키 {keys}개 빠짐",
    ),
    "status.fired": ("fired", "발동"),
    "status.skipped": ("left out", "빠짐"),
    "status.timed_out": ("timed out (key disabled)", "시간 초과 (키 꺼짐)"),
    "status.unscanned": ("not scanned (time budget spent)", "검사 못 함 (시간 예산 소진)"),
    "reason.budget": ("over budget", "예산 초과"),
    "reason.probability": ("chance not met", "확률 미달"),
    "reason.group": ("another entry of its group", "같은 그룹의 다른 항목"),
    "reason.delay": ("delayed", "지연"),
    "reason.cooldown": ("cooling down", "재사용 대기"),
}
_STATUSES: tuple[LoreStatus, ...] = ("fired", "skipped", "timed_out", "unscanned")
_NAMES_SHOWN = {"fired": 15, "skipped": 10, "timed_out": 10, "unscanned": 10}


def _say(key: str, korean: bool, **params: object) -> str:
    english, korean_text = _WORDS[key]
    return (korean_text if korean else english).format(**params)


@dataclass(frozen=True)
class BlockReport:
    name: str
    tokens: int


@dataclass(frozen=True)
class LoreNote:
    """A lorebook entry the build considered: its label, book ("channel", "card", or in a
    scene with several characters "card:<name>"), insertion order and what became of it."""

    label: str
    book: str
    order: int
    status: LoreStatus
    #: Where a fired entry went ("system block", "before message 3", "depth 2 (user)"...).
    where: str = ""
    #: Why a skipped entry is not in the prompt: "budget", "probability", "group", "delay",
    #: "cooldown".
    reason: str = ""


@dataclass(frozen=True)
class LoreLeftOut:
    """What loading a book left out to stay within the lorebook limits."""

    book: str
    entries: int
    keys: int


@dataclass
class PromptReport:
    budget: int
    context_size: int
    max_new_tokens: int
    total_tokens: int = 0
    blocks: list[BlockReport] = field(default_factory=list)
    kept_examples: int = 0
    dropped_examples: int = 0
    kept_messages: int = 0
    dropped_messages: int = 0
    trimmed_this_turn: bool = False
    history_start_id: int | None = None
    lorebook: list[LoreNote] = field(default_factory=list)
    lorebook_left_out: list[LoreLeftOut] = field(default_factory=list)
    #: Players whose persona did not fit beside the character sheet and the newest message.
    personas_left_out: list[str] = field(default_factory=list)
    #: The summary's own tokens in the system block ("### 지난 이야기"; 0: no summary).
    summary_tokens: int = 0
    #: The newest message the summary covers (it covers the scene from its start up to it;
    #: None: none yet, or a summary written by hand over nothing dropped).
    summary_until_id: int | None = None
    #: Dropped history is folded into the summary automatically.
    summary_auto: bool = True
    #: A message the summary covers changed since it was written (it is being rewritten).
    summary_stale: bool = False
    #: Old turns the newest message recalled into the prompt, in story order, with why.
    recall: list[RecallNote] = field(default_factory=list)
    #: What the answering character knows about the player speaking, in the prompt: the
    #: character, the player and the facts.
    facts_of: tuple[str, str] | None = None
    player_facts: list[FactNote] = field(default_factory=list)
    #: The player the facts are about (theirs alone to read), and the facts block's text.
    facts_about: int | None = None
    facts_text: str = ""
    #: Pinned lines in the prompt (oldest first), their block's tokens, and the older pins
    #: the budget left out.
    pins: list[PinNote] = field(default_factory=list)
    pin_tokens: int = 0
    pins_left_out: int = 0
    #: Card scripts that changed the history as this prompt sees it, and those that failed
    #: ("name: why"; a failed one left the text as it was).
    scripts_ran: list[str] = field(default_factory=list)
    scripts_failed: list[str] = field(default_factory=list)

    def _labels(self, status: LoreStatus) -> list[str]:
        return [note.label for note in self.lorebook if note.status == status]

    @property
    def lorebook_fired(self) -> list[str]:
        return self._labels("fired")

    @property
    def lorebook_skipped(self) -> list[str]:
        return self._labels("skipped")

    @property
    def lorebook_timed_out(self) -> list[str]:
        return self._labels("timed_out")

    @property
    def lorebook_unscanned(self) -> list[str]:
        return self._labels("unscanned")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def to_text(
        self, *, hide_card_entry_names: bool = False, hide_facts: bool = False, korean: bool = False
    ) -> str:
        """A short summary (well under Discord's 2000 characters), in Korean with `korean`.

        With `hide_card_entry_names` the card's lorebook entries are counted, with their
        insertion order, but not named (their names and keys can give a private card away).
        With `hide_facts` the facts about the player are counted, not shown (they are theirs).
        """
        lines = [
            _say(
                "tokens",
                korean,
                total=self.total_tokens,
                budget=self.budget,
                context=self.context_size,
                max_new=self.max_new_tokens,
            ),
            _blocks_line(self.blocks),
            _say("examples", korean, kept=self.kept_examples, dropped=self.dropped_examples),
            _say("messages", korean, kept=self.kept_messages, dropped=self.dropped_messages)
            + (_say("trimmed", korean) if self.trimmed_this_turn else ""),
        ]
        for status in _STATUSES:
            words = _say(f"status.{status}", korean)
            notes = [note for note in self.lorebook if note.status == status]
            hidden = [n for n in notes if hide_card_entry_names and is_card_book(n.book)]
            named = [n for n in notes if not (hide_card_entry_names and is_card_book(n.book))]
            if named:
                heading = (
                    _say("lorebook", korean)
                    if status == "fired"
                    else _say("lorebook_status", korean, status=words)
                )
                lines.append(f"{heading}: {_names(named, _NAMES_SHOWN[status], korean)}")
            if hidden:
                count = (
                    _say("entry", korean)
                    if len(hidden) == 1
                    else _say("entries", korean, n=len(hidden))
                )
                lines.append(
                    _say("card_entries", korean, count=count, status=words, orders=_orders(hidden))
                )
        if self.summary_tokens or self.summary_until_id is not None:
            lines.append(_memory_line(self, korean))
        lines += _pin_lines(self, korean)
        lines += _recall_lines(self.recall, korean)
        lines += _fact_lines(self, korean, shown=0 if hide_facts else 5)
        if self.personas_left_out:
            names = _short(", ".join(self.personas_left_out), 200)
            lines.append(_say("personas_left_out", korean, names=names))
        for left in self.lorebook_left_out:
            lines.append(
                _say("left_out", korean, book=left.book, entries=left.entries, keys=left.keys)
            )
        if self.scripts_ran or self.scripts_failed:
            lines.append(_scripts_line(self, korean))
        return "\n".join(lines)


def _scripts_line(report: PromptReport, korean: bool) -> str:
    """Which card scripts changed the prompt's history, and which failed."""
    ran = _short(", ".join(report.scripts_ran), 200) or _say("none", korean)
    line = _say("scripts", korean, names=ran)
    if report.scripts_failed:
        line += _say("scripts_failed", korean, names=_short(", ".join(report.scripts_failed), 200))
    return line


def _memory_line(report: PromptReport, korean: bool) -> str:
    """What the summary takes and covers: "memory: 120 tokens, up to message #345"."""
    line = _say("memory", korean, tokens=report.summary_tokens)
    if report.summary_until_id is not None:
        line += _say("memory_until", korean, id=report.summary_until_id)
    notes = []
    if report.summary_stale:
        notes.append(_say("stale", korean))
    if not report.summary_auto:
        notes.append(_say("auto_off", korean))
    return line + (f" ({', '.join(notes)})" if notes else "")


def _pin_lines(report: PromptReport, korean: bool, shown: int = 5) -> list[str]:
    """The pins in the prompt: how many and their tokens, then the newest ones' starts."""
    if not report.pins and not report.pins_left_out:
        return []
    left = _say("pins_left", korean, n=report.pins_left_out) if report.pins_left_out else ""
    lines = [_say("pins", korean, n=len(report.pins), tokens=report.pin_tokens, left=left)]
    for note in report.pins[-shown:]:
        lines.append(_say("pin", korean, id=note.pin_id, text=_short(note.text, 60)))
    if len(report.pins) > shown:
        lines.append(f"  (+{len(report.pins) - shown})")
    return lines


def _recall_lines(notes: list[RecallNote], korean: bool, shown: int = 5) -> list[str]:
    """Each recalled turn: its id, speaker, the terms that matched it, and its start."""
    if not notes:
        return []
    lines = [_say("recalled", korean, n=len(notes))]
    for note in notes[:shown]:
        why = []
        if note.matched:
            terms = ", ".join(note.matched[:6])
            why.append(_say("recall_matched", korean, terms=terms, score=f"{note.score:.1f}"))
        if note.similarity is not None:
            why.append(_say("recall_similar", korean, similarity=f"{note.similarity:.2f}"))
        lines.append(
            _say(
                "recalled_turn",
                korean,
                id=note.message_id,
                name=_short(note.name, 20),
                why=("; " if not korean else ", ").join(why),
                text=_short(note.text, 60),
            )
        )
    if len(notes) > shown:
        lines.append(f"  (+{len(notes) - shown})")
    return lines


def _fact_lines(report: PromptReport, korean: bool, shown: int = 5) -> list[str]:
    """Which facts about the player speaking went in: their ids, sources and starts."""
    if not report.player_facts or report.facts_of is None:
        return []
    character, player = report.facts_of
    lines = [
        _say(
            "facts",
            korean,
            character=_short(character, 20),
            player=_short(player, 20),
            n=len(report.player_facts),
        )
    ]
    for note in report.player_facts[:shown]:
        lines.append(
            _say("fact", korean, id=note.fact_id, source=note.source, text=_short(note.text, 60))
        )
    if shown and len(report.player_facts) > shown:
        lines.append(f"  (+{len(report.player_facts) - shown})")
    return lines


def is_card_book(book: str) -> bool:
    """Whether entries of `book` come from a character card (their names can be private)."""
    return book == "card" or book.startswith("card:")


def _blocks_line(blocks: list[BlockReport]) -> str:
    """Each kind of block once, in order of first appearance, with its total and, when a scene
    has several (lore or personas along the history), how many."""
    totals: dict[str, list[int]] = {}
    for block in blocks:
        total = totals.setdefault(block.name, [0, 0])
        total[0] += block.tokens
        total[1] += 1
    return " | ".join(
        f"{name} {tokens}" + (f" (x{count})" if count > 1 else "")
        for name, (tokens, count) in totals.items()
    )


def _names(notes: list[LoreNote], limit: int, korean: bool) -> str:
    """Labels with where each went ("시계탑 @ depth 2 (user)") or why it was left out."""
    shown = ", ".join(
        _short(note.label)
        + (f" @ {note.where}" if note.where else "")
        + (f" ({_reason(note.reason, korean)})" if note.reason else "")
        for note in notes[:limit]
    )
    return shown + (f" (+{len(notes) - limit})" if len(notes) > limit else "")


def _reason(reason: str, korean: bool) -> str:
    return _say(f"reason.{reason}", korean) if f"reason.{reason}" in _WORDS else reason


def _orders(notes: list[LoreNote], limit: int = 15) -> str:
    shown = ", ".join(str(note.order) for note in notes[:limit])
    return shown + (", …" if len(notes) > limit else "")


def _short(name: str, limit: int = 40) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"
