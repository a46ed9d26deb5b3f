"""ChatML prompt assembly within the token budget, with token-level injection safety.

Ids are assembled here rather than by tokenising the rendered text: role markers come from
their fixed ids and every piece of content is encoded with special tokens split, so no text
can ever produce <s>, </s>, <|im_start|> or <|im_end|>. Each content piece is encoded exactly
as the tokenizer would encode it inside the rendered ChatML text (after a "\\n"), so for text
without forged markers `tokenizer(built.text).input_ids == built.input_ids`.

`build_async` is for callers on an event loop: a lorebook scan that could take a while (regex
keys, many keys over long text) runs in a worker thread of the builder's own; everything else,
caches included, stays on the caller's thread.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from synatra_bot.errors import PromptTooLarge
from synatra_bot.prompt.cards import CharacterCard, SpeechLevel
from synatra_bot.prompt.lorebook import (
    Lorebook,
    LoreEntry,
    LoreHit,
    LoreScan,
    lorebook_from_character_book,
    scan_books,
    scan_needs_worker,
    select_entries,
)
from synatra_bot.prompt.macros import substitute_macros
from synatra_bot.prompt.report import BlockReport, LoreLeftOut, LoreNote, LoreStatus, PromptReport
from synatra_bot.tokenizer import (
    BOS_ID,
    FORBIDDEN_CONTENT_IDS,
    IM_END,
    IM_END_ID,
    IM_START,
    IM_START_ID,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Role = Literal["user", "assistant"]

DEFAULT_INSTRUCTION_PRESET = (
    "당신은 {{char}}입니다. {{user}}와 함께 끝나지 않는 롤플레이를 이어 가세요. "
    "{{char}}의 대사, 행동, 생각만 쓰고 {{user}}의 말이나 행동을 대신 정하지 마세요. "
    "캐릭터의 성격, 말투, 설정을 일관되게 지키고, 장면을 생생하고 구체적으로 묘사하세요. "
    "같은 표현을 반복하지 말고 이야기를 능동적으로 앞으로 진행하세요. 자연스러운 한국어로 답하세요."
)
SPEECH_LEVEL_INSTRUCTIONS = {
    SpeechLevel.FORMAL: "{{char}}는 {{user}}에게 항상 존댓말을 쓴다.",
    SpeechLevel.INFORMAL: "{{char}}는 {{user}}에게 항상 반말을 쓴다.",
}
MAX_CONTEXT_SIZE = 32768
MAX_NAME_CHARS = 64
#: System texts kept rendered (one per character, speaker and lore in play).
SYSTEM_CACHE_SIZE = 256
#: Worker threads for lorebook scans: regex matching runs outside the GIL, so this bounds the
#: cores hostile books can keep busy (a scan takes at most about lorebook.SCAN_BUDGET_S).
SCAN_WORKERS = 4
K = TypeVar("K")
V = TypeVar("V")
_EXAMPLE_SPLIT = re.compile(r"^\s*<START>\s*$", re.IGNORECASE | re.MULTILINE)
_EXAMPLE_SPEAKER = re.compile(
    r"^\s*(?P<who>\{\{\s*(?:char|user)\s*\}\}|<(?:bot|user)>)\s*:\s?(?P<text>.*)$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class HistoryMessage:
    role: Role
    name: str
    content: str
    token_count: int | None = None
    message_id: int | None = None


@dataclass
class PromptOptions:
    context_size: int = 4096
    max_new_tokens: int = 300
    margin: int = 16
    author_note: str = ""
    author_note_depth: int = 4
    instruction_preset: str = DEFAULT_INSTRUCTION_PRESET
    summary: str = ""
    #: After an overflow the history is cut back to this share of its room, so that the
    #: following turns keep an identical prompt start (an engine's cached prefix stays valid).
    trim_watermark: float = 0.7
    #: Oldest message id the previous prompt of this roleplay kept (BuiltPrompt.history_start_id).
    history_start_id: int | None = None
    lorebook_budget: int = 512
    add_bos: bool = True

    def __post_init__(self) -> None:
        if not 256 <= self.context_size <= MAX_CONTEXT_SIZE:
            raise ValueError(f"context_size must be 256..{MAX_CONTEXT_SIZE}")
        if self.max_new_tokens < 1 or self.margin < 0 or self.budget < 64:
            raise ValueError("max_new_tokens and margin leave no room for a prompt")
        if not 0.1 <= self.trim_watermark <= 1.0:
            raise ValueError("trim_watermark must be between 0.1 and 1.0")

    @property
    def budget(self) -> int:
        return self.context_size - self.max_new_tokens - self.margin


@dataclass
class BuiltPrompt:
    #: A tuple: it lives as long as the reply streams, and the garbage collector stops tracking
    #: a tuple of ints, where it would traverse a list of thousands of ids in every pass.
    input_ids: tuple[int, ...]
    text: str
    token_count: int
    budget: int
    report: PromptReport
    #: message_id -> token count for history messages that came without one (to persist).
    new_token_counts: dict[int, int] = field(default_factory=dict)

    @property
    def history_start_id(self) -> int | None:
        """Pass back as PromptOptions.history_start_id on the session's next turn."""
        return self.report.history_start_id


@dataclass(frozen=True)
class _Piece:
    """A rendered ChatML message: its ids and text."""

    ids: tuple[int, ...]
    text: str


def clean_name(name: str, fallback: str = "User") -> str:
    """A speaker name on one line, bounded in length."""
    cleaned = " ".join(name.split())[:MAX_NAME_CHARS]
    return cleaned or fallback


def _content_encoder(tokenizer: PreTrainedTokenizerBase) -> Any | None:
    """A copy of a fast tokenizer's Rust backend that spells special tokens out as text.

    It gives the same ids as `tokenizer(text, add_special_tokens=False,
    split_special_tokens=True)` at half the cost (no Python wrapping per call); the tests check
    both on the hostile corpus. None for a tokenizer without such a backend: the builder then
    calls the tokenizer itself.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "encode_special_tokens"):
        return None
    encoder = type(backend).from_str(backend.to_str())
    encoder.encode_special_tokens = True
    encoder.no_truncation()
    encoder.no_padding()
    return encoder


class _Lru(Generic[K, V]):
    """A bounded map that forgets the least recently used entry first."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[K, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> V:
        self._items[key] = value
        if len(self._items) > self._size:
            self._items.popitem(last=False)
        return value


class PromptBuilder:
    """Renders Synatra's ChatML prompt. One per tokenizer; holds bounded per-instance caches."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, *, cache_size: int = 8192) -> None:
        self._tokenizer = tokenizer
        self._content_encoder = _content_encoder(tokenizer)
        self._cache: _Lru[str, tuple[int, ...]] = _Lru(cache_size)
        self._pieces: _Lru[tuple[str, str], _Piece] = _Lru(cache_size)
        self._systems: _Lru[tuple[Any, ...], str] = _Lru(SYSTEM_CACHE_SIZE)
        self._card_books: _Lru[int, tuple[object, Lorebook]] = _Lru(SYSTEM_CACHE_SIZE)
        # Threads start on the first scan that needs one.
        self._scan_pool = ThreadPoolExecutor(SCAN_WORKERS, thread_name_prefix="lorebook-scan")
        self._newline = tuple(self._encode_raw("\n"))
        self._headers = {
            role: tuple(self._encode_raw(role + "\n")) for role in ("system", "user", "assistant")
        }

    # -- encoding -------------------------------------------------------------------------

    def _encode_raw(self, text: str) -> list[int]:
        ids: list[int]
        if self._content_encoder is not None:
            ids = self._content_encoder.encode(text, add_special_tokens=False).ids
        else:
            ids = self._tokenizer(text, add_special_tokens=False, split_special_tokens=True)[
                "input_ids"
            ]
        if FORBIDDEN_CONTENT_IDS.intersection(ids):
            ids = [i for i in ids if i not in FORBIDDEN_CONTENT_IDS]
        return ids

    def encode_content(self, text: str) -> tuple[int, ...]:
        """Ids of `text` as it is tokenised after a newline inside ChatML (cached, bounded)."""
        cached = self._cache.get(text)
        if cached is not None:
            return cached
        ids = self._encode_raw("\n" + text)
        prefix = len(self._newline)
        body = tuple(ids[prefix:]) if tuple(ids[:prefix]) == self._newline else tuple(ids)
        return self._cache.put(text, body)

    def _piece(self, role: str, body: str) -> _Piece:
        """The rendered message (cached, bounded: the same history is assembled every turn)."""
        piece = self._pieces.get((role, body))
        if piece is not None:
            return piece
        ids = (IM_START_ID, *self._headers[role], *self.encode_content(body), IM_END_ID)
        piece = _Piece(ids + self._newline, f"{IM_START}{role}\n{body}{IM_END}\n")
        return self._pieces.put((role, body), piece)

    def _message_body(self, message: HistoryMessage) -> str:
        content = message.content.strip()
        if message.role == "user":
            return f"{clean_name(message.name)}: {content}"
        return content

    def count_message(self, message: HistoryMessage) -> int:
        """Tokens the message takes in the prompt (the count to store with the message)."""
        header = self._headers[message.role]
        return (
            len(header)
            + len(self.encode_content(self._message_body(message)))
            + 2
            + len(self._newline)
        )

    def count_text(self, text: str) -> int:
        return len(self.encode_content(text))

    # -- blocks ---------------------------------------------------------------------------

    def _system_text(
        self,
        card: CharacterCard,
        *,
        user_name: str,
        persona: str,
        lore: Sequence[str],
        options: PromptOptions,
    ) -> str:
        """The system message's text (cached, bounded: it changes with the speaker or the lore,
        not with every turn, and substituting the macros is a good part of a build)."""
        key = (
            card.name,
            card.system_prompt,
            card.description,
            card.personality,
            card.scenario,
            card.speech_level,
            user_name,
            persona,
            tuple(lore),
            options.instruction_preset,
            options.summary,
        )
        cached = self._systems.get(key)
        if cached is not None:
            return cached

        def sub(text: str) -> str:
            return substitute_macros(text, char=card.name, user=user_name).strip()

        preset = options.instruction_preset
        if card.system_prompt.strip():
            preset = card.system_prompt.replace("{{original}}", preset)
        sections = [sub(preset)]
        if card.description.strip():
            sections.append(f"### {card.name}\n{sub(card.description)}")
        if card.personality.strip():
            sections.append(f"### 성격\n{sub(card.personality)}")
        if card.scenario.strip():
            sections.append(f"### 상황\n{sub(card.scenario)}")
        if card.speech_level is not None:
            sections.append(sub(SPEECH_LEVEL_INSTRUCTIONS[card.speech_level]))
        if persona.strip():
            sections.append(f"### {user_name}\n{sub(persona)}")
        if lore:
            sections.append("### 세계 정보\n" + "\n".join(lore))
        if options.summary.strip():
            sections.append(f"### 지난 이야기\n{options.summary.strip()}")
        return self._systems.put(key, "\n\n".join(s for s in sections if s))

    def _card_lorebook(self, card: CharacterCard) -> Lorebook:
        """The card's own lorebook, parsed once per `character_book` object (an edited card is
        a new object; the cache holds the object, so its id is not reused meanwhile)."""
        book = card.character_book
        cached = self._card_books.get(id(book))
        if cached is not None and cached[0] is book:
            return cached[1]
        return self._card_books.put(id(book), (book, lorebook_from_character_book(book)))[1]

    def _example_dialogues(self, card: CharacterCard, user_name: str) -> list[list[_Piece]]:
        dialogues: list[list[_Piece]] = []
        for block in _EXAMPLE_SPLIT.split(card.example_messages):
            turns: list[tuple[str, list[str]]] = []
            for line in block.splitlines():
                speaker = _EXAMPLE_SPEAKER.match(line)
                if speaker is not None:
                    who = speaker.group("who").lower()
                    role = "user" if "user" in who else "assistant"
                    turns.append((role, [speaker.group("text")]))
                elif turns:
                    turns[-1][1].append(line)
                elif line.strip():
                    turns.append(("assistant", [line]))
            pieces = []
            for role, lines in turns:
                text = substitute_macros("\n".join(lines), char=card.name, user=user_name).strip()
                if not text:
                    continue
                body = f"{clean_name(user_name)}: {text}" if role == "user" else text
                pieces.append(self._piece(role, body))
            if pieces:
                dialogues.append(pieces)
        return dialogues

    # -- assembly -------------------------------------------------------------------------

    def build(
        self,
        *,
        card: CharacterCard,
        history: Sequence[HistoryMessage],
        user_name: str,
        persona: str = "",
        channel_lorebook: Lorebook | None = None,
        options: PromptOptions,
        continue_last: bool = False,
    ) -> BuiltPrompt:
        """Assemble the prompt for the assistant's next message after `history` (oldest first).

        With `continue_last` the newest message must be the assistant's: it is left open (no
        <|im_end|>) at the very end, so the model continues its text.
        """
        open_message, history = _split_open(history, continue_last)
        books = self._lorebooks(card, channel_lorebook)
        lore = scan_books(books, _scanned_texts(history, books))
        return self._build_checked(
            card, history, user_name, persona, books, lore, options, open_message
        )

    async def build_async(
        self,
        *,
        card: CharacterCard,
        history: Sequence[HistoryMessage],
        user_name: str,
        persona: str = "",
        channel_lorebook: Lorebook | None = None,
        options: PromptOptions,
        continue_last: bool = False,
    ) -> BuiltPrompt:
        """`build` for a caller on an event loop, which goes on serving during a slow scan."""
        open_message, history = _split_open(history, continue_last)
        books = self._lorebooks(card, channel_lorebook)
        texts = _scanned_texts(history, books)
        if scan_needs_worker(books.values(), texts):
            scan = functools.partial(scan_books, books, texts)
            lore = await asyncio.get_running_loop().run_in_executor(self._scan_pool, scan)
        else:
            lore = scan_books(books, texts)
        return self._build_checked(
            card, history, user_name, persona, books, lore, options, open_message
        )

    def _lorebooks(
        self, card: CharacterCard, channel_lorebook: Lorebook | None
    ) -> dict[str, Lorebook]:
        """The books in play (with entries) by name, the moderators' first: a scan that runs out
        of time leaves the later books unscanned, so a card's book cannot starve the channel's."""
        books = {}
        if channel_lorebook is not None and channel_lorebook.entries:
            books["channel"] = channel_lorebook
        card_book = self._card_lorebook(card) if card.character_book else None
        if card_book is not None and card_book.entries:
            books["card"] = card_book
        return books

    def _build_checked(
        self,
        card: CharacterCard,
        history: Sequence[HistoryMessage],
        user_name: str,
        persona: str,
        books: dict[str, Lorebook],
        lore: LoreScan,
        options: PromptOptions,
        open_message: HistoryMessage | None,
    ) -> BuiltPrompt:
        args = (card, history, user_name, persona, books, lore, options, open_message)
        built = self._build(*args, trust_stored_counts=True)
        if built.token_count > built.budget:
            # A stored count was stale (e.g. another tokenizer): count everything afresh.
            built = self._build(*args, trust_stored_counts=False)
        return built

    def _build(
        self,
        card: CharacterCard,
        history: Sequence[HistoryMessage],
        user_name: str,
        persona: str,
        books: dict[str, Lorebook],
        lore: LoreScan,
        options: PromptOptions,
        open_message: HistoryMessage | None,
        *,
        trust_stored_counts: bool,
    ) -> BuiltPrompt:
        budget = options.budget
        user_name = clean_name(user_name)
        report = PromptReport(
            budget=budget, context_size=options.context_size, max_new_tokens=options.max_new_tokens
        )
        new_counts: dict[int, int] = {}

        def count(message: HistoryMessage) -> int:
            if trust_stored_counts and message.token_count is not None:
                return message.token_count
            tokens = self.count_message(message)
            if message.token_count is None and message.message_id is not None:
                new_counts[message.message_id] = tokens
            return tokens

        def sub(text: str) -> str:
            return substitute_macros(text, char=card.name, user=user_name).strip()

        tail: list[tuple[str, _Piece]] = []
        post = sub(card.post_history_instructions)
        if post:
            tail.append(("post_history", self._piece("system", post)))
        if open_message is None:
            prefix_ids = (IM_START_ID, *self._headers["assistant"])
            tail.append(("assistant_prefix", _Piece(prefix_ids, f"{IM_START}assistant\n")))
        else:
            body = self._message_body(open_message)
            prefix_ids = (IM_START_ID, *self._headers["assistant"], *self.encode_content(body))
            tail.append(("continued_message", _Piece(prefix_ids, f"{IM_START}assistant\n{body}")))
            if open_message.token_count is None and open_message.message_id is not None:
                new_counts[open_message.message_id] = self.count_message(open_message)
        note = sub(options.author_note)
        note_piece = self._piece("system", note) if note else None

        fixed = sum(len(p.ids) for _, p in tail) + (1 if options.add_bos else 0)
        fixed += len(note_piece.ids) if note_piece else 0
        newest = count(history[-1]) if history else 0
        bare_system = self._piece(
            "system",
            self._system_text(card, user_name=user_name, persona=persona, lore=(), options=options),
        )
        if fixed + len(bare_system.ids) + newest > budget:
            sheet = fixed + len(bare_system.ids) + newest
            raise PromptTooLarge(
                f"the character sheet and the newest message take {sheet} tokens, "
                f"but only {budget} fit",
                sheet_tokens=sheet,
                budget=budget,
            )

        lore_system = None
        if books:
            lore_system = self._with_lore(
                card,
                user_name,
                persona,
                books,
                lore,
                options,
                report,
                room=budget - fixed - newest,
                base=bare_system,
            )
        system = lore_system or bare_system
        fixed += len(system.ids)
        room = budget - fixed

        # History, newest first, until the previous start, the room, or the oldest message.
        counts: list[int] = []
        used = 0
        overflow = False
        anchor = options.history_start_id
        start = len(history)
        for index in range(len(history) - 1, -1, -1):
            message = history[index]
            if (
                anchor is not None
                and index < len(history) - 1
                and message.message_id is not None
                and message.message_id < anchor
            ):
                break
            tokens = newest if index == len(history) - 1 else count(message)
            if used + tokens > room and index < len(history) - 1:
                overflow = True
                break
            used += tokens
            counts.append(tokens)
            start = index
        if overflow:
            target = int(room * options.trim_watermark)
            used = counts[0]
            keep = 1
            while keep < len(counts) and used + counts[keep] <= target:
                used += counts[keep]
                keep += 1
            start = len(history) - keep
            report.trimmed_this_turn = True

        dialogues = self._example_dialogues(card, user_name) if card.example_messages else []
        kept_dialogues: list[list[_Piece]] = []
        if start == 0:
            free = room - used
            for dialogue in dialogues:
                size = sum(len(p.ids) for p in dialogue)
                if size > free:
                    break
                free -= size
                kept_dialogues.append(dialogue)
        report.kept_examples = len(kept_dialogues)
        report.dropped_examples = len(dialogues) - len(kept_dialogues)

        kept = history[start:]
        report.kept_messages = len(kept)
        report.dropped_messages = start
        report.history_start_id = kept[0].message_id if kept else None

        # Assemble.
        ids: list[int] = [BOS_ID] if options.add_bos else []
        texts: list[str] = []
        blocks: list[BlockReport] = []
        if options.add_bos:
            blocks.append(BlockReport("bos", 1))

        def add(name: str, pieces: Sequence[_Piece]) -> None:
            before = len(ids)
            for piece in pieces:
                ids.extend(piece.ids)
                texts.append(piece.text)
            blocks.append(BlockReport(name, len(ids) - before))

        add("system", [system])
        if kept_dialogues:
            add("examples", [p for dialogue in kept_dialogues for p in dialogue])
        depth = max(0, options.author_note_depth)
        split = max(0, len(kept) - depth)
        history_pieces = [self._piece(m.role, self._message_body(m)) for m in kept]
        add("history", history_pieces[:split])
        if note_piece is not None:
            add("author_note", [note_piece])
        if split < len(history_pieces):
            add("recent_history", history_pieces[split:])
        for name, piece in tail:
            add(name, [piece])
        report.blocks = blocks
        report.total_tokens = len(ids)
        return BuiltPrompt(
            input_ids=tuple(ids),
            text="".join(texts),
            token_count=len(ids),
            budget=budget,
            report=report,
            new_token_counts=new_counts,
        )

    def _with_lore(
        self,
        card: CharacterCard,
        user_name: str,
        persona: str,
        books: dict[str, Lorebook],
        lore: LoreScan,
        options: PromptOptions,
        report: PromptReport,
        *,
        room: int,
        base: _Piece,
    ) -> _Piece | None:
        """The system block with the lorebook entries that fire and fit, or None if none do.

        `base` is the system block without lore.
        """
        report.lorebook_left_out = [
            LoreLeftOut(name, book.left_out_entries, book.left_out_keys)
            for name, book in books.items()
            if book.left_out_entries or book.left_out_keys
        ]
        limits = [options.lorebook_budget, room - len(base.ids)]
        limits += [book.token_budget for book in books.values() if book.token_budget]
        fired, skipped = select_entries(
            lore.matched,
            token_budget=max(0, min(limits)),
            count_tokens=lambda text: self.count_text(text) + 1,
            render=lambda text: substitute_macros(text, char=card.name, user=user_name),
        )
        while True:
            lore_texts = [f.content for f in fired]
            system = self._piece(
                "system",
                self._system_text(
                    card, user_name=user_name, persona=persona, lore=lore_texts, options=options
                ),
            )
            if not fired or len(system.ids) <= room:
                break
            last = fired.pop()
            skipped.append(LoreHit(last.entry, last.book))
        report.lorebook = [
            *(_note(f.entry, f.book, "fired") for f in fired),
            *(_note(h.entry, h.book, "skipped") for h in skipped),
            *(_note(h.entry, h.book, "timed_out") for h in lore.timed_out),
            *(_note(h.entry, h.book, "unscanned") for h in lore.unscanned),
        ]
        return system if fired else None


def _split_open(
    history: Sequence[HistoryMessage], continue_last: bool
) -> tuple[HistoryMessage | None, Sequence[HistoryMessage]]:
    """The message left open for `continue_last` (the assistant's newest) and the rest."""
    if not continue_last:
        return None, history
    if not history or history[-1].role != "assistant":
        raise ValueError("continue_last needs the assistant's message as the newest")
    return history[-1], history[:-1]


def _scanned_texts(history: Sequence[HistoryMessage], books: dict[str, Lorebook]) -> list[str]:
    """The newest messages as deep as the deepest book scans."""
    depth = max((book.scan_depth for book in books.values()), default=0)
    return [m.content for m in history[-depth:]] if depth else []


def _note(entry: LoreEntry, book: str, status: LoreStatus) -> LoreNote:
    label = entry.name or (entry.keys[0] if entry.keys else "(constant)")
    return LoreNote(label, book, entry.insertion_order, status)
