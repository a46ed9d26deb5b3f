"""ChatML prompt assembly within the token budget, with token-level injection safety.

Ids are assembled here rather than by tokenising the rendered text: role markers come from
their fixed ids and every piece of content is encoded with special tokens split, so no text
can ever produce <s>, </s>, <|im_start|> or <|im_end|>. Each content piece is encoded exactly
as the tokenizer would encode it inside the rendered ChatML text (after a "\\n"), so for text
without forged markers `tokenizer(built.text).input_ids == built.input_ids`.

The prompt is laid out so that an engine's cached prefix stays valid: until a trim, each
turn's prompt starts with the whole previous prompt, whoever speaks and whatever lore fires. A
call that names no players is a scene of one player: `user_name`, with `persona`.

- The system block holds only what the scene does not change turn by turn: the preset (for a
  cast of one, the card's own system_prompt if it has one), the cast's sheets, the scene's
  starter as `{{user}}`, constant lore, the summary and the pins (`prompt.pins`).
- The example dialogues follow it, and leave with the oldest message (dropping them is a trim).
- A player's persona is a system message just before their first message in the window (at
  the end of the history while they have none there).
- Lore that fires is a system message just before the player message where it first fired,
  and stays there while that message is in the window; constant lore is in the system block,
  before or after the character sheets as its position says. Lore placed at a depth (with its
  role) or in the author's note is judged afresh each turn, as SillyTavern does: its sticky,
  cooldown and delay (counted in messages) decide whether it is there, and it moves with the
  end of the history as the author's note does.
- What depends on who speaks now comes last: the group turn note, the speaker's post-history
  instructions and, in a group, the answer opened with the speaker's name. The author's note
  keeps its depth.

`build_summary` assembles the prompt that folds dropped history into a scene's summary (its
own small layout: instructions, the summary so far, the dialogue), with the same safety.

`build_async` is for callers on an event loop: a lorebook scan that could take a while (regex
keys, many keys over long text) runs in a worker thread of the builder's own; everything else,
caches included, stays on the caller's thread.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from synatra_bot.errors import PromptTooLarge
from synatra_bot.prompt.cards import CharacterCard, SpeechLevel, macro_name
from synatra_bot.prompt.examples import example_blocks, example_turns

# HistoryMessage is named here too: what the builder takes, for callers building prompts.
from synatra_bot.prompt.history import HistoryMessage as HistoryMessage
from synatra_bot.prompt.history import Role
from synatra_bot.prompt.history import clean_name as clean_name
from synatra_bot.prompt.lorebook import (
    SCAN_BUDGET_S,
    FiredEntry,
    Lorebook,
    LoreEntry,
    LoreHit,
    LorePosition,
    LoreScan,
    deepest_scan,
    fires_at_step,
    lorebook_from_character_book,
    recursion_steps,
    scan_books,
    scans_need_worker,
    select_entries,
)
from synatra_bot.prompt.lru import Lru
from synatra_bot.prompt.macros import MacroContext, substitute_macros
from synatra_bot.prompt.pins import PinBlock, memory_sections
from synatra_bot.prompt.player_facts import FactsBlock
from synatra_bot.prompt.recall import RecallBlock
from synatra_bot.prompt.report import BlockReport, LoreLeftOut, LoreNote, LoreStatus, PromptReport
from synatra_bot.prompt.summary import (
    MIN_SUMMARY_ROOM,
    SUMMARY_CHARS_PER_TOKEN,
    SUMMARY_DIALOGUE_HEADING,
    SUMMARY_INSTRUCTIONS,
    SUMMARY_NONE,
    SUMMARY_PREVIOUS_HEADING,
    SUMMARY_REQUEST,
)
from synatra_bot.tokenizer import (
    BOS_ID,
    FORBIDDEN_CONTENT_IDS,
    IM_END,
    IM_END_ID,
    IM_START,
    IM_START_ID,
    content_encoder,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


DEFAULT_INSTRUCTION_PRESET = (
    "당신은 {{char}}입니다. {{user}}와 함께 끝나지 않는 롤플레이를 이어 가세요. "
    "{{char}}의 대사, 행동, 생각만 쓰고 {{user}}의 말이나 행동을 대신 정하지 마세요. "
    "캐릭터의 성격, 말투, 설정을 일관되게 지키고, 장면을 생생하고 구체적으로 묘사하세요. "
    "같은 표현을 반복하지 말고 이야기를 능동적으로 앞으로 진행하세요. 자연스러운 한국어로 답하세요."
)
#: The system block's preset when the cast has several characters: `{{char}}` stands for the
#: cast's names, `{{user}}` for the scene's starter.
DEFAULT_GROUP_PRESET = (
    "당신은 여러 캐릭터가 함께 나오는 그룹 롤플레이에서 캐릭터들을 연기합니다. "
    "등장인물: {{char}}. 이 장면을 시작한 플레이어는 {{user}}입니다. "
    "매 차례 이름이 주어진 캐릭터 한 명이 되어 그 캐릭터의 대사, 행동, 생각만 쓰세요. "
    "플레이어들이 맡은 인물의 말이나 행동은 절대 대신 정하지 마세요. "
    "캐릭터마다 성격, 말투, 설정을 일관되게 지키고, 장면을 생생하고 구체적으로 묘사하세요. "
    "같은 표현을 반복하지 말고 이야기를 능동적으로 앞으로 진행하세요. 자연스러운 한국어로 답하세요."
)
#: The note before the answer in a group: `{{char}}` is the speaker, `{{user}}` the player
#: answered now.
DEFAULT_GROUP_TURN_NOTE = (
    "지금은 {{char}}의 차례입니다. {{user}}에게 답하며 {{char}}의 대사와 행동만 쓰세요."
)
#: The note before a line the model writes for a player (`/rp suggest`): `{{user}}` is that
#: player.
DEFAULT_IMPERSONATION_NOTE = (
    "지금은 {{user}}의 차례입니다. {{user}}의 입장에서, {{user}}의 말투와 성격대로 "
    "{{user}}의 다음 말과 행동만 한두 문장으로 쓰세요. 캐릭터의 말이나 행동은 쓰지 마세요."
)
SPEECH_LEVEL_INSTRUCTIONS = {
    SpeechLevel.FORMAL: "{{char}}는 {{user}}에게 항상 존댓말을 쓴다.",
    SpeechLevel.INFORMAL: "{{char}}는 {{user}}에게 항상 반말을 쓴다.",
}
LORE_HEADING = "### 세계 정보"
MAX_CONTEXT_SIZE = 32768
#: System texts kept rendered (one per cast, scene starter and constant lore in play).
SYSTEM_CACHE_SIZE = 256
#: Worker threads for lorebook scans: regex matching runs outside the GIL, so this bounds the
#: cores hostile books can keep busy (a scan takes at most about lorebook.SCAN_BUDGET_S).
SCAN_WORKERS = 4
#: Stands in for the author of a persona given without `players` (no Discord id is 0).
PERSONA_ONLY_AUTHOR = 0


@dataclass(frozen=True)
class ScenePlayer:
    """A player in the scene. Their persona goes before their first message in the window."""

    author_id: int
    name: str
    persona: str = ""


@dataclass
class PromptOptions:
    context_size: int = 4096
    max_new_tokens: int = 300
    margin: int = 16
    author_note: str = ""
    author_note_depth: int = 4
    instruction_preset: str = DEFAULT_INSTRUCTION_PRESET
    #: The preset when the cast has several characters (a card's own system_prompt is not used).
    group_instruction_preset: str = DEFAULT_GROUP_PRESET
    #: The note naming the speaker at the end of a group prompt ("" leaves it out).
    group_turn_note: str = DEFAULT_GROUP_TURN_NOTE
    #: The note at the end of a prompt where the model writes the player's next line.
    impersonation_note: str = DEFAULT_IMPERSONATION_NOTE
    #: In place of the group's turn note, in any scene: a reply nobody asked for.
    unprompted_note: str = ""
    summary: str = ""
    #: Old turns the newest message recalls: one system message after the history.
    recall: RecallBlock | None = None
    #: What the answering character knows about the player speaking: after the recall block.
    player_facts: FactsBlock | None = None
    #: The scene's pinned lines: in the system block after the summary (`prompt.pins`).
    pins: PinBlock | None = None
    #: After an overflow the history is cut back to this share of its room, so that the
    #: following turns keep an identical prompt start (an engine's cached prefix stays valid).
    trim_watermark: float = 0.7
    #: Oldest message id the previous prompt of this roleplay kept (BuiltPrompt.history_start_id).
    history_start_id: int | None = None
    #: Tokens all lore together may take (None: a quarter of the prompt's budget).
    lorebook_budget: int | None = None
    #: Recursive scanning: how many times lore that fired is scanned for more keys of the
    #: books that ask for it (`Lorebook.recursive`); 0: never (lorebook.recursion_steps).
    lorebook_recursion: int = 0
    #: Messages of the scene older than the given history (a lorebook's `delay` counts the
    #: scene's messages).
    earlier_messages: int = 0
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

    @property
    def lore_budget(self) -> int:
        """Tokens all lore together may take."""
        if self.lorebook_budget is None:
            return self.budget // 4
        return max(0, self.lorebook_budget)


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
class SummaryPrompt:
    """A prompt that folds the oldest of the given messages into the previous summary."""

    input_ids: tuple[int, ...]
    text: str
    token_count: int
    budget: int
    #: How many of the given messages it holds: the oldest ones, in order.
    included: int
    #: The last message it holds was cut short to fit (it alone was too long).
    truncated: bool = False


@dataclass(frozen=True)
class _Piece:
    """A rendered ChatML message: its ids and text."""

    ids: tuple[int, ...]
    text: str


#: Positions judged afresh each turn, placed from the end of the history.
_FLOATING = frozenset({LorePosition.AT_DEPTH, LorePosition.AN_TOP, LorePosition.AN_BOTTOM})
#: A lorebook scan of one position: the book's name, the book (by id) and the scanned texts.
_ScanKey = tuple[str, int, tuple[str, ...], int]


@dataclass(frozen=True, eq=False)
class _ScanJob:
    """One book to scan over the texts one position of the window sees."""

    book_name: str
    book: Lorebook
    texts: tuple[str, ...]
    #: 0: the history's texts; 1 and up: the lore fired at the level before (recursion).
    level: int = 0
    key: _ScanKey = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", (self.book_name, id(self.book), self.texts, self.level))


@dataclass(frozen=True, eq=False)
class _Scene:
    """Who is in the scene and who answers now, as the layout needs them."""

    cast: tuple[CharacterCard, ...]
    speaker: CharacterCard
    players: tuple[ScenePlayer, ...]
    #: The player answered now (cleaned): per-turn material only.
    user_name: str
    #: What `{{user}}` stands for in the system block (cleaned).
    scene_user: str
    #: The books in play by name, the channel's first, then each card's in cast order.
    books: dict[str, Lorebook]
    #: What `{{char}}` stands for in each book's entries.
    book_chars: dict[str, str]
    #: The model writes the answered player's next line, not a character's.
    impersonating: bool = False
    #: What the time and chance macros read (None: they are left as written).
    macros: MacroContext | None = None

    @property
    def group(self) -> bool:
        return len(self.cast) > 1

    @property
    def cast_label(self) -> str:
        return _cast_label(self.cast)


@dataclass
class _Plan:
    """A build before lore is placed: the fixed blocks and the widest window that fits."""

    scene: _Scene
    history: Sequence[HistoryMessage]
    options: PromptOptions
    report: PromptReport
    new_counts: dict[int, int]
    system: _Piece
    constants: list[FiredEntry]
    #: Constant entries placed at a depth or in the author's note (within the lore cap).
    floating_constants: list[FiredEntry]
    constants_skipped: list[LoreHit]
    personas: list[tuple[ScenePlayer, _Piece]]
    examples: list[list[_Piece]]
    note: _Piece | None
    note_text: str
    #: The speaker's note at a depth (a card's `extensions.depth_prompt`): depth and message.
    character_note: tuple[int, _Piece] | None
    tail: list[tuple[str, _Piece]]
    room: int
    #: The token budget of all placed lore together, constant entries included.
    lore_cap: int
    #: Tokens of each message of the window by index (the oldest one with the examples).
    costs: dict[int, int]
    #: Tokens of the examples when they are in play (0: left out); they ride with the oldest
    #: message and go when it does.
    example_tokens: int
    start: int
    overflow: bool
    #: The lorebook scans each lore position of the window needs, oldest position first.
    positions: dict[int, list[_ScanJob]]


@dataclass
class _Layout:
    """Where lore and personas go: history index (len(history) for the end) -> what goes
    just before that message."""

    lore: dict[int, list[FiredEntry]]
    personas: dict[int, list[_Piece]]
    skipped: list[LoreHit]
    #: Lore `depth` messages from the end, by (depth, role).
    at_depth: dict[tuple[int, str], list[FiredEntry]] = field(default_factory=dict)
    #: Lore at the top and the bottom of the author's note.
    note_top: list[FiredEntry] = field(default_factory=list)
    note_bottom: list[FiredEntry] = field(default_factory=list)
    #: Why an entry that matched is not in the prompt, by (book, id(entry)), where it is not
    #: the budget: "probability", "group", "delay", "cooldown".
    reasons: dict[tuple[str, int], str] = field(default_factory=dict)

    def floating(self) -> list[FiredEntry]:
        """The entries placed from the end (at a depth, in the author's note)."""
        entries = [f for group in self.at_depth.values() for f in group]
        return [*entries, *self.note_top, *self.note_bottom]


class PromptBuilder:
    """Renders Synatra's ChatML prompt. One per tokenizer; holds bounded per-instance caches."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, *, cache_size: int = 8192) -> None:
        self._tokenizer = tokenizer
        self._content_encoder = content_encoder(tokenizer)
        self._cache: Lru[str, tuple[int, ...]] = Lru(cache_size)
        self._pieces: Lru[tuple[str, str], _Piece] = Lru(cache_size)
        self._systems: Lru[tuple[Any, ...], str] = Lru(SYSTEM_CACHE_SIZE)
        self._card_books: Lru[int, tuple[object, Lorebook]] = Lru(SYSTEM_CACHE_SIZE)
        # Scan results per book and scanned texts, so a turn scans only its new position. The
        # book is kept with its result, so its id is not reused meanwhile; the texts are the
        # history's own strings.
        self._scans: Lru[_ScanKey, tuple[Lorebook, LoreScan]] = Lru(cache_size)
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

    def _open_piece(self, body: str, role: Role = "assistant") -> _Piece:
        """A message left open for the model to write on (no <|im_end|>)."""
        ids = (IM_START_ID, *self._headers[role])
        if body:
            ids += self.encode_content(body)
        return _Piece(ids, f"{IM_START}{role}\n{body}")

    def _message_body(self, message: HistoryMessage, *, group: bool = False) -> str:
        content = message.content.strip()
        if message.role == "user":
            return f"{clean_name(message.name)}: {content}"
        if group or message.guest:
            # Every character's line carries its name, so the history reads the same whoever
            # answers next.
            return f"{clean_name(message.name, '캐릭터')}: {content}"
        return content

    def count_message(self, message: HistoryMessage, *, group: bool = False) -> int:
        """Tokens the message takes in the prompt (the count to store with the message); in a
        `group` scene (several characters) a character's message carries its name."""
        header = self._headers[message.role]
        return (
            len(header)
            + len(self.encode_content(self._message_body(message, group=group)))
            + 2
            + len(self._newline)
        )

    def count_text(self, text: str) -> int:
        return len(self.encode_content(text))

    # -- blocks ---------------------------------------------------------------------------

    def _system(self, scene: _Scene, lore: Sequence[FiredEntry], options: PromptOptions) -> _Piece:
        """The system block (its text cached, bounded: it changes only with the cast's cards,
        the scene's starter or constant lore, and substituting the macros is a good part of a
        build). A cast of one takes the card's own system_prompt, `{{original}}` standing for
        the preset; a group takes the group preset. Constant lore goes before the character
        sheets or after them, as each entry's position says."""
        before = tuple(f.content for f in lore if f.entry.position is LorePosition.BEFORE_CHAR)
        after = tuple(f.content for f in lore if f.entry.position is not LorePosition.BEFORE_CHAR)
        key = (
            tuple(
                (c.name, c.system_prompt, c.description, c.personality, c.scenario, c.speech_level)
                for c in scene.cast
            ),
            scene.scene_user,
            before,
            after,
            options.instruction_preset,
            options.group_instruction_preset,
            options.summary,
            options.pins,
            scene.macros,
        )
        text = self._systems.get(key)
        if text is None:
            user = scene.scene_user
            if scene.group:
                preset = options.group_instruction_preset
            else:
                preset = options.instruction_preset
                if scene.cast[0].system_prompt.strip():
                    preset = scene.cast[0].system_prompt.replace("{{original}}", preset)
            sections = [
                substitute_macros(
                    preset, char=scene.cast_label, user=user, context=scene.macros
                ).strip()
            ]
            if before:
                sections.append(f"{LORE_HEADING}\n" + "\n".join(before))
            sections += [
                _card_sheet(card, user, group=scene.group, context=scene.macros)
                for card in scene.cast
            ]
            if after:
                sections.append(f"{LORE_HEADING}\n" + "\n".join(after))
            sections += memory_sections(options.summary, options.pins)
            text = self._systems.put(key, "\n\n".join(s for s in sections if s))
        return self._piece("system", text)

    def card_lorebook(self, card: CharacterCard) -> Lorebook:
        """The card's own lorebook, parsed once per `character_book` object (an edited card is
        a new object; the cache holds the object, so its id is not reused meanwhile)."""
        book = card.character_book
        cached = self._card_books.get(id(book))
        if cached is not None and cached[0] is book:
            return cached[1]
        return self._card_books.put(id(book), (book, lorebook_from_character_book(book)))[1]

    def _examples(self, scene: _Scene) -> list[list[_Piece]]:
        """Every card's example dialogues, `{{user}}` as the scene's starter; in a group the
        character's lines carry its name, as a group's history does."""
        dialogues: list[list[_Piece]] = []
        for card in scene.cast:
            for block in example_blocks(card):
                pieces = [
                    self._piece(role, body)
                    for role, body in example_turns(
                        card, block, scene.scene_user, scene.group, scene.macros
                    )
                ]
                if pieces:
                    dialogues.append(pieces)
        return dialogues

    def _lore_tokens(self, text: str) -> int:
        """What an entry costs against the lore budgets: its tokens and a newline."""
        return self.count_text(text) + 1

    def _render_lore(self, scene: _Scene, hit: LoreHit) -> str:
        """An entry's text with `{{char}}` as its book's character and `{{user}}` as the
        scene's starter: the same whoever answers."""
        char = scene.book_chars.get(hit.book, scene.cast_label)
        return substitute_macros(
            hit.entry.content, char=char, user=scene.scene_user, context=scene.macros
        )

    def _lore_piece(self, entries: Sequence[FiredEntry], role: str = "system") -> _Piece:
        """Entries placed together: those meant before the character's description first."""
        ordered = sorted(entries, key=lambda e: e.entry.position is not LorePosition.BEFORE_CHAR)
        return self._piece(role, f"{LORE_HEADING}\n" + "\n".join(e.content for e in ordered))

    def _note_piece(
        self, plan: _Plan, top: Sequence[FiredEntry], bottom: Sequence[FiredEntry]
    ) -> _Piece | None:
        """The author's note with the lore placed at its top and bottom."""
        if not top and not bottom:
            return plan.note
        texts = [f.content for f in top]
        texts += [plan.note_text] if plan.note_text else []
        texts += [f.content for f in bottom]
        return self._piece("system", "\n".join(texts))

    def _personas(self, scene: _Scene) -> list[tuple[ScenePlayer, _Piece]]:
        """Each player's persona message, `{{user}}` as that player."""
        personas = []
        for player in scene.players:
            name = clean_name(player.name)
            text = substitute_macros(
                player.persona, char=scene.cast_label, user=name, context=scene.macros
            ).strip()
            if text:
                personas.append((player, self._piece("system", f"### {name}\n{text}")))
        return personas

    def _tail(
        self,
        scene: _Scene,
        options: PromptOptions,
        open_message: HistoryMessage | None,
        new_counts: dict[int, int],
    ) -> tuple[list[tuple[str, _Piece]], str]:
        """What depends on who answers now: the blocks after the history, and the author's
        note's text. Their macros name the speaker and the player answered now."""

        def per_turn(text: str) -> str:
            return substitute_macros(
                text, char=macro_name(scene.speaker), user=scene.user_name, context=scene.macros
            ).strip()

        after = {"recall": options.recall, "player_facts": options.player_facts}
        tail = [(name, self._piece("system", b.text)) for name, b in after.items() if b]
        if scene.impersonating:
            # The player's line, in their voice: the model goes on after their name.
            note = per_turn(options.impersonation_note)
            if note:
                tail.append(("impersonation_note", self._piece("system", note)))
            tail.append(("user_prefix", self._open_piece(f"{scene.user_name}:", "user")))
            return tail, per_turn(options.author_note)
        note = options.group_turn_note if scene.group else ""
        turn_note = per_turn(options.unprompted_note or note)
        if turn_note:
            tail.append(("turn_note", self._piece("system", turn_note)))
        post = per_turn(scene.speaker.post_history_instructions)
        if post:
            tail.append(("post_history", self._piece("system", post)))
        if open_message is None:
            # In a group the answer opens with the speaker's name, as their lines read.
            opening = f"{clean_name(scene.speaker.name, '캐릭터')}:" if scene.group else ""
            tail.append(("assistant_prefix", self._open_piece(opening)))
        else:
            body = self._message_body(open_message, group=scene.group)
            tail.append(("continued_message", self._open_piece(body)))
            if open_message.token_count is None and open_message.message_id is not None:
                tokens = self.count_message(open_message, group=scene.group)
                new_counts[open_message.message_id] = tokens
        return tail, per_turn(options.author_note)

    def _character_note(self, scene: _Scene) -> tuple[int, _Piece] | None:
        """The speaker's card's note at a depth (SillyTavern's `extensions.depth_prompt`:
        prompt, depth, role), its macros as the speaker and the player answered now."""
        raw = scene.speaker.extensions.get("depth_prompt")
        if not isinstance(raw, dict) or not isinstance(raw.get("prompt"), str):
            return None
        text = substitute_macros(
            raw["prompt"],
            char=macro_name(scene.speaker),
            user=scene.user_name,
            context=scene.macros,
        ).strip()
        if not text:
            return None
        depth = raw.get("depth")
        depth = depth if isinstance(depth, int) and not isinstance(depth, bool) else 4
        role = raw.get("role")
        role = role if role in ("system", "user", "assistant") else "system"
        return min(max(0, depth), MAX_CONTEXT_SIZE), self._piece(role, text)

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
        cast: Sequence[CharacterCard] | None = None,
        players: Sequence[ScenePlayer] = (),
        scene_user_name: str | None = None,
        impersonate: bool = False,
        macro_context: MacroContext | None = None,
    ) -> BuiltPrompt:
        """Assemble the prompt for `card`'s next message after `history` (oldest first).

        `card` answers now; `cast` is every character in the scene, in order (None: `[card]`).
        `players` are the scene's players with their personas, `user_name` the one answered
        now; without players, the scene's one player is `user_name` with `persona` (which is
        not used otherwise).
        `scene_user_name` is what `{{user}}` stands for in the system block (default
        `user_name`; pass the scene's starter, or the block changes with who speaks). With
        `continue_last` the newest message must be the assistant's: it is left open (no
        <|im_end|>) at the very end, so the model continues its text. With `impersonate` the
        prompt ends in the player `user_name`'s own message, left open: the model writes their
        next line (the layout before it is the same). `macro_context` is what the time, chance
        and chat macros read ({{time}}, {{pick}}...); without it they are left as written.
        """
        open_message, history = _split_open(history, continue_last)
        scene = self._scene(
            card,
            cast,
            players,
            user_name,
            persona,
            scene_user_name,
            channel_lorebook,
            impersonate=impersonate,
            macros=macro_context,
        )
        results: dict[_ScanKey, LoreScan] = {}
        plan = self._plan(scene, history, options, open_message, trust_stored_counts=True)
        left = self._scan_here(plan, results, SCAN_BUDGET_S)
        built = self._assemble(plan, results)
        if built.token_count > built.budget:
            # A stored count was stale (e.g. another tokenizer): count everything afresh.
            plan = self._plan(scene, history, options, open_message, trust_stored_counts=False)
            self._scan_here(plan, results, left)
            built = self._assemble(plan, results)
        return built

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
        cast: Sequence[CharacterCard] | None = None,
        players: Sequence[ScenePlayer] = (),
        scene_user_name: str | None = None,
        impersonate: bool = False,
        macro_context: MacroContext | None = None,
    ) -> BuiltPrompt:
        """`build` for a caller on an event loop, which goes on serving during a slow scan."""
        open_message, history = _split_open(history, continue_last)
        scene = self._scene(
            card,
            cast,
            players,
            user_name,
            persona,
            scene_user_name,
            channel_lorebook,
            impersonate=impersonate,
            macros=macro_context,
        )
        results: dict[_ScanKey, LoreScan] = {}
        plan = self._plan(scene, history, options, open_message, trust_stored_counts=True)
        left = await self._scan_off_loop(plan, results, SCAN_BUDGET_S)
        built = self._assemble(plan, results)
        if built.token_count > built.budget:
            plan = self._plan(scene, history, options, open_message, trust_stored_counts=False)
            await self._scan_off_loop(plan, results, left)
            built = self._assemble(plan, results)
        return built

    # -- summaries ------------------------------------------------------------------------

    def build_summary(
        self,
        *,
        messages: Sequence[HistoryMessage],
        previous: str = "",
        context_size: int,
        max_new_tokens: int,
        cast: Sequence[str] = (),
        margin: int = 16,
        add_bos: bool = True,
        instructions: str = SUMMARY_INSTRUCTIONS,
        request: str = SUMMARY_REQUEST,
    ) -> SummaryPrompt:
        """The prompt asking for `previous` with the oldest of `messages` folded in: as many of
        them as fit the context beside the instructions, the previous summary and
        `max_new_tokens` of answer (at least the first, cut short when it alone is too long).

        Built from ids as every prompt is: role markers from their fixed ids, every text
        (names, messages, the previous summary) encoded with special tokens split, so nothing
        in the history can forge a role. Raises PromptTooLarge when the previous summary
        leaves no room for dialogue.
        """
        budget = context_size - max_new_tokens - margin
        names = ", ".join(clean_name(name, "캐릭터") for name in cast) or "-"
        chars = max(MIN_SUMMARY_ROOM, int(max_new_tokens * SUMMARY_CHARS_PER_TOKEN))
        system_text = instructions.replace("{{char}}", names).replace("{{limit}}", str(chars))
        system = self._piece("system", system_text.strip())
        opening = self._open_piece("")
        head = f"{SUMMARY_PREVIOUS_HEADING}\n{previous.strip() or SUMMARY_NONE}\n\n"
        head += f"{SUMMARY_DIALOGUE_HEADING}\n"
        tail = f"\n\n{request}"
        fixed = (1 if add_bos else 0) + len(system.ids) + len(opening.ids)
        fixed += 2 + len(self._headers["user"]) + len(self._newline)
        fixed += len(self._encode_uncached(head + tail))
        room = budget - fixed
        if room < MIN_SUMMARY_ROOM:
            raise PromptTooLarge(
                f"the summary prompt needs {fixed} tokens before any dialogue, {budget} fit",
                sheet_tokens=fixed,
                budget=budget,
            )

        def line_cost(line: str) -> int:
            return len(self._encode_uncached(line)) + 1  # and its newline

        lines: list[str] = []
        used = 0
        for message in messages:
            line = f"{clean_name(message.name)}: {message.content.strip()}"
            cost = line_cost(line)
            if used + cost > room:
                break
            lines.append(line)
            used += cost
        truncated = False
        if not lines and messages:
            lines, truncated = [self._cut_line(messages[0], room, line_cost)], True

        def assemble(chosen: Sequence[str]) -> tuple[tuple[int, ...], str]:
            body = head + "\n".join(chosen) + tail
            user = (IM_START_ID, *self._headers["user"], *self._encode_uncached(body), IM_END_ID)
            ids = ((BOS_ID,) if add_bos else ()) + system.ids + user + self._newline + opening.ids
            text = f"{system.text}{IM_START}user\n{body}{IM_END}\n{opening.text}"
            return ids, text

        ids, text = assemble(lines)
        # Counted line by line, the dialogue can come out a token or two longer in one piece.
        while len(ids) > budget and len(lines) > 1:
            lines.pop()
            truncated = False
            ids, text = assemble(lines)
        for _ in range(4):
            if len(ids) <= budget or not messages:
                break
            room -= len(ids) - budget
            lines, truncated = [self._cut_line(messages[0], room, line_cost)], True
            ids, text = assemble(lines)
        if len(ids) > budget:
            raise PromptTooLarge(
                f"no dialogue fits the summary prompt beside {fixed} tokens",
                sheet_tokens=fixed,
                budget=budget,
            )
        return SummaryPrompt(
            input_ids=ids,
            text=text,
            token_count=len(ids),
            budget=budget,
            included=len(lines),
            truncated=truncated,
        )

    def _encode_uncached(self, text: str) -> tuple[int, ...]:
        """`encode_content` without its cache: a summary's pieces are seen once."""
        ids = self._encode_raw("\n" + text)
        prefix = len(self._newline)
        return tuple(ids[prefix:]) if tuple(ids[:prefix]) == self._newline else tuple(ids)

    @staticmethod
    def _cut_line(message: HistoryMessage, room: int, cost: Callable[[str], int]) -> str:
        """The message's line cut short (at a character) so that it costs at most `room`."""
        head = f"{clean_name(message.name)}: "
        content = message.content.strip()
        low, high = 0, len(content)
        while low < high:
            middle = (low + high + 1) // 2
            if cost(f"{head}{content[:middle]}…") <= room:
                low = middle
            else:
                high = middle - 1
        return f"{head}{content[:low]}…"

    def _scene(
        self,
        card: CharacterCard,
        cast: Sequence[CharacterCard] | None,
        players: Sequence[ScenePlayer],
        user_name: str,
        persona: str,
        scene_user_name: str | None,
        channel_lorebook: Lorebook | None,
        *,
        impersonate: bool = False,
        macros: MacroContext | None = None,
    ) -> _Scene:
        """Who is in the scene (without `players`, the one player is `user_name` with
        `persona`), and the books in play by name, the moderators' first: the scans of a build
        share one time budget, so a card's book that spends it cannot starve the channel's."""
        members = (card,) if cast is None else tuple(cast)
        if not any(member is card or member == card for member in members):
            raise ValueError("card (the character who answers) must be one of the cast")
        user = clean_name(user_name)
        if not players and persona.strip():
            players = (ScenePlayer(PERSONA_ONLY_AUTHOR, user_name, persona),)
        books: dict[str, Lorebook] = {}
        chars: dict[str, str] = {}
        if channel_lorebook is not None and channel_lorebook.entries:
            books["channel"] = channel_lorebook
        for member in members:
            book = self.card_lorebook(member) if member.character_book else None
            if book is None or not book.entries:
                continue
            name = "card" if len(members) == 1 else f"card:{clean_name(member.name, '캐릭터')}"
            if name in books:  # two characters of one name
                name += f" #{len(books) + 1}"
            books[name] = book
            chars[name] = macro_name(member)
        chars.setdefault("channel", _cast_label(members))
        scene_user = clean_name(scene_user_name) if scene_user_name is not None else user
        return _Scene(
            members, card, tuple(players), user, scene_user, books, chars, impersonate, macros
        )

    def _plan(
        self,
        scene: _Scene,
        history: Sequence[HistoryMessage],
        options: PromptOptions,
        open_message: HistoryMessage | None,
        *,
        trust_stored_counts: bool,
    ) -> _Plan:
        """The fixed blocks, and the window that fits beside them before lore is placed."""
        budget = options.budget
        report = PromptReport(
            budget=budget, context_size=options.context_size, max_new_tokens=options.max_new_tokens
        )
        report.lorebook_left_out = _left_out(scene.books)
        summary = options.summary.strip()
        report.summary_tokens = self.count_text(summary) if summary else 0
        report.recall = list(options.recall.notes) if options.recall else []
        report.pins = list(options.pins.notes) if options.pins else []
        new_counts: dict[int, int] = {}

        def count(message: HistoryMessage) -> int:
            if trust_stored_counts and message.token_count is not None:
                return message.token_count
            tokens = self.count_message(message, group=scene.group)
            if message.token_count is None and message.message_id is not None:
                new_counts[message.message_id] = tokens
            return tokens

        tail, note_text = self._tail(scene, options, open_message, new_counts)
        note = self._piece("system", note_text) if note_text else None
        character_note = self._character_note(scene)
        fixed = sum(len(p.ids) for _, p in tail) + (1 if options.add_bos else 0)
        fixed += len(note.ids) if note else 0
        fixed += len(character_note[1].ids) if character_note else 0
        n = len(history)
        newest = count(history[-1]) if history else 0
        bare_system = self._system(scene, (), options)
        if fixed + len(bare_system.ids) + newest > budget:
            _too_large(fixed + len(bare_system.ids) + newest, budget)

        # Every player's persona is in the prompt, the later players' left out when they do
        # not fit beside the sheet and the newest message (never a reason to refuse a turn).
        personas = self._personas(scene)
        persona_tokens = sum(len(p.ids) for _, p in personas)
        while personas and fixed + len(bare_system.ids) + persona_tokens + newest > budget:
            player, piece = personas.pop()
            persona_tokens -= len(piece.ids)
            report.personas_left_out.insert(0, clean_name(player.name))
        fixed += persona_tokens

        # Constant lore is in the system block (it is the same on every turn), but for the
        # entries placed at a depth or in the author's note.
        cap = options.lore_budget  # a card book's own token_budget is no limit (as in SillyTavern)
        constant_hits = [
            LoreHit(entry, name)
            for name, book in scene.books.items()
            for entry in book.entries
            if entry.constant and entry.enabled and entry.content.strip()
        ]
        constants, constants_skipped = select_entries(
            constant_hits,
            token_budget=cap,
            count_tokens=self._lore_tokens,
            render=functools.partial(self._render_lore, scene),
        )
        floating = [f for f in constants if f.entry.position in _FLOATING]
        constants = [f for f in constants if f.entry.position not in _FLOATING]
        while True:
            system = self._system(scene, constants, options)
            if not constants or fixed + len(system.ids) + newest <= budget:
                break
            last = min(constants, key=lambda f: (f.entry.insertion_order, f.entry.priority))
            constants.remove(last)
            constants_skipped.append(LoreHit(last.entry, last.book))
        room = budget - fixed - len(system.ids)

        # Examples go all or none, with the oldest message: dropping them is a trim, so they
        # never leave the prompt's start on a turn that keeps it. A lone message keeps them if
        # they fit.
        examples = self._examples(scene)
        example_tokens = sum(len(p.ids) for dialogue in examples for p in dialogue)
        with_examples = bool(examples) and (n > 1 or newest + example_tokens <= room)

        def cost(index: int) -> int:
            tokens = newest if index == n - 1 else count(history[index])
            return tokens + (example_tokens if index == 0 and with_examples else 0)

        start, overflow, costs = _fit_history(history, cost, room, options.history_start_id)
        positions: dict[int, list[_ScanJob]] = {}
        if scene.books:
            for position in [*(i for i in range(start, n) if history[i].role == "user"), n]:
                end = min(position + 1, n)
                positions[position] = [
                    _ScanJob(name, book, _texts_before(history, end, deepest_scan(book)))
                    for name, book in scene.books.items()
                ]
        return _Plan(
            scene=scene,
            history=history,
            options=options,
            report=report,
            new_counts=new_counts,
            system=system,
            constants=constants,
            floating_constants=floating,
            constants_skipped=constants_skipped,
            personas=personas,
            examples=examples,
            note=note,
            note_text=note_text,
            character_note=character_note,
            tail=tail,
            room=room,
            lore_cap=cap,
            costs=costs,
            example_tokens=example_tokens if with_examples else 0,
            start=start,
            overflow=overflow,
            positions=positions,
        )

    # -- scanning the window's positions ----------------------------------------------------

    def _missing_scans(self, plan: _Plan, results: dict[_ScanKey, LoreScan]) -> list[_ScanJob]:
        """The scans the plan needs that neither this build nor the cache has (on the caller's
        thread: it reads the cache). Book by book, the moderators' first, so that a card's book
        that spends the time budget cannot starve the channel's; oldest position first."""
        missing: dict[_ScanKey, _ScanJob] = {}
        for name in plan.scene.books:
            for jobs in plan.positions.values():
                for job in jobs:
                    key = job.key
                    if job.book_name != name or key in results or key in missing:
                        continue
                    cached = self._scans.get(key)
                    if cached is not None and cached[0] is job.book:
                        results[key] = cached[1]
                    else:
                        missing[key] = job
        return list(missing.values())

    def _keep_scans(
        self,
        jobs: Sequence[_ScanJob],
        scans: Sequence[LoreScan],
        results: dict[_ScanKey, LoreScan],
    ) -> None:
        for job, scan in zip(jobs, scans, strict=True):
            results[job.key] = scan
            if not scan.unscanned:  # a scan cut short is tried again next turn
                self._scans.put(job.key, (job.book, scan))

    def _add_recursion(self, plan: _Plan, results: dict[_ScanKey, LoreScan], level: int) -> bool:
        """Scans of each position's books over the lore that fired there up to `level - 1`
        (SillyTavern's recursive scanning: one entry's text can fire another); whether any
        position has new lore to scan."""
        added = False
        for jobs in plan.positions.values():
            found = _position_scan(jobs, results)
            text = "\n".join(
                self._render_lore(plan.scene, hit)
                for scan in found
                for hit in scan.matched
                if not hit.entry.prevent_recursion
            )
            previous = [job for job in jobs if job.level == level - 1]
            if not text or any(job.texts == (text,) for job in previous):
                continue  # nothing fired, or nothing new since the last level
            jobs += [
                _ScanJob(name, book, (text,), level=level)
                for name, book in plan.scene.books.items()
                if book.recursive
            ]
            added = True
        return added

    def _scan_here(self, plan: _Plan, results: dict[_ScanKey, LoreScan], budget_s: float) -> float:
        """Run the plan's missing scans on this thread (recursion levels one after another);
        the scan budget left."""
        for level in range(_recursion_levels(plan.options) + 1):
            if level and not self._add_recursion(plan, results, level):
                break
            jobs = self._missing_scans(plan, results)
            if not jobs:
                continue
            scans, spent = _run_scans(jobs, budget_s)
            self._keep_scans(jobs, scans, results)
            budget_s = max(0.0, budget_s - spent)
        return budget_s

    async def _scan_off_loop(
        self, plan: _Plan, results: dict[_ScanKey, LoreScan], budget_s: float
    ) -> float:
        """`_scan_here`, in a worker thread when the scans could stall the event loop."""
        for level in range(_recursion_levels(plan.options) + 1):
            if level and not self._add_recursion(plan, results, level):
                break
            jobs = self._missing_scans(plan, results)
            if not jobs:
                continue
            if scans_need_worker((job.book, job.texts) for job in jobs):
                run = functools.partial(_run_scans, jobs, budget_s)
                loop = asyncio.get_running_loop()
                scans, spent = await loop.run_in_executor(self._scan_pool, run)
            else:
                scans, spent = _run_scans(jobs, budget_s)
            self._keep_scans(jobs, scans, results)
            budget_s = max(0.0, budget_s - spent)
        return budget_s

    # -- placing lore and personas ----------------------------------------------------------

    def _place(self, plan: _Plan, start: int, scans: dict[int, list[LoreScan]]) -> _Layout:
        """Lore and personas for the window that starts at `start`.

        Each player message of the window in order, then the end of history, gets the entries
        that become active there (their keys match, their delay has passed, their chance came
        up, they won their inclusion group) and were not placed before it; the lore budget
        goes to the earliest. So an entry stays where it first fired while that message is in
        the window, and a new turn only adds lore after the previous prompt. Entries placed
        at a depth or in the author's note go where they are active at the end: matched there,
        or still sticky, and not cooling down.
        """
        history = plan.history
        n = len(history)
        users = [i for i in range(start, n) if history[i].role == "user"]
        personas: dict[int, list[_Piece]] = {}
        for player, piece in plan.personas:
            at = next((i for i in users if _speaks(history[i], player)), n)
            personas.setdefault(at, []).append(piece)

        layout = _Layout({}, personas, [])
        timeline = _Timeline(plan, [*users, n], scans)
        seen = {(f.book, id(f.entry)) for f in (*plan.constants, *plan.floating_constants)}
        seen.update((h.book, id(h.entry)) for h in plan.constants_skipped)
        used = sum(f.tokens for f in (*plan.constants, *plan.floating_constants))
        render = functools.partial(self._render_lore, plan.scene)
        groups_placed = {g for f in plan.constants for g in f.entry.groups}
        for position in [*users, n]:
            fresh = [
                hit
                for hit in timeline.activated(position, layout.reasons)
                if hit.entry.position not in _FLOATING and (hit.book, id(hit.entry)) not in seen
            ]
            fresh = timeline.pick_groups(fresh, position, groups_placed, layout.reasons)
            seen.update((hit.book, id(hit.entry)) for hit in fresh)
            if not fresh:
                continue
            fired, over = select_entries(
                fresh,
                token_budget=max(0, plan.lore_cap - used),
                count_tokens=self._lore_tokens,
                render=render,
            )
            used += sum(f.tokens for f in fired)
            layout.skipped += over
            groups_placed.update(g for f in fired for g in f.entry.groups)
            if fired:
                layout.lore[position] = fired

        # Judged at the end: constant ones always, the others when active there.
        floating = [
            hit
            for hit in timeline.active_at_end(layout.reasons)
            if hit.entry.position in _FLOATING and not hit.entry.constant
        ]
        floating = timeline.pick_groups(floating, n, groups_placed, layout.reasons)
        fired, over = select_entries(
            floating,
            token_budget=max(0, plan.lore_cap - used),
            count_tokens=self._lore_tokens,
            render=render,
        )
        layout.skipped += over
        for entry in sorted([*plan.floating_constants, *fired], key=_insertion):
            if entry.entry.position is LorePosition.AN_TOP:
                layout.note_top.append(entry)
            elif entry.entry.position is LorePosition.AN_BOTTOM:
                layout.note_bottom.append(entry)
            else:
                layout.at_depth.setdefault((entry.entry.depth, entry.entry.role), []).append(entry)
        return layout

    def _lore_cost(self, plan: _Plan, layout: _Layout) -> int:
        cost = sum(len(self._lore_piece(entries).ids) for entries in layout.lore.values())
        for (_, role), entries in layout.at_depth.items():
            cost += len(self._lore_piece(entries, role).ids)
        note = self._note_piece(plan, layout.note_top, layout.note_bottom)
        if note is not plan.note and note is not None:
            cost += len(note.ids) - (len(plan.note.ids) if plan.note else 0)
        return cost

    def _assemble(self, plan: _Plan, results: dict[_ScanKey, LoreScan]) -> BuiltPrompt:
        history, options, report = plan.history, plan.options, plan.report
        n = len(history)
        scans = {
            position: _position_scan(jobs, results) for position, jobs in plan.positions.items()
        }
        start, overflow = plan.start, plan.overflow
        used = sum(plan.costs[i] for i in range(start, n)) if n else plan.example_tokens
        layout = self._place(plan, start, scans)
        lore_tokens = self._lore_cost(plan, layout)
        if not overflow and used + lore_tokens > plan.room and n > 1:
            overflow = True
        if overflow:
            # Cut back to the watermark, keeping room for the lore the window had.
            target = int(plan.room * options.trim_watermark) - lore_tokens
            start = n - 1
            used = plan.costs[start]
            while start - 1 in plan.costs and used + plan.costs[start - 1] <= target:
                start -= 1
                used += plan.costs[start]
            layout = self._place(plan, start, scans)
            report.trimmed_this_turn = True
        while _placed_lore(layout) and used + self._lore_cost(plan, layout) > plan.room:
            # Only when the trimmed window fires more lore than the untrimmed one had: the
            # entries placed from the end go first, then the newest position's.
            floating = layout.floating()
            if floating:
                last = min(floating, key=_insertion)
                _remove_floating(layout, last)
                layout.skipped.append(LoreHit(last.entry, last.book))
                continue
            position = max(layout.lore)
            last = layout.lore[position].pop()
            layout.skipped.append(LoreHit(last.entry, last.book))
            if not layout.lore[position]:
                del layout.lore[position]

        with_examples = plan.example_tokens > 0 and start == 0
        kept = history[start:]
        report.kept_messages = len(kept)
        report.dropped_messages = start
        report.history_start_id = kept[0].message_id if kept else None
        report.kept_examples = len(plan.examples) if with_examples else 0
        report.dropped_examples = len(plan.examples) - report.kept_examples
        report.lorebook = _notes(plan, layout, scans, start)

        ids: list[int] = [BOS_ID] if options.add_bos else []
        texts: list[str] = []
        # [name, tokens] per block; consecutive pieces of one kind make one block.
        blocks: list[list[Any]] = [["bos", 1]] if options.add_bos else []

        def add(name: str, piece: _Piece) -> None:
            ids.extend(piece.ids)
            texts.append(piece.text)
            if not blocks or blocks[-1][0] != name:
                blocks.append([name, 0])
            blocks[-1][1] += len(piece.ids)

        def before(position: int) -> None:
            if position in layout.lore:
                add("lore", self._lore_piece(layout.lore[position]))
            for piece in layout.personas.get(position, ()):
                add("persona", piece)

        add("system", plan.system)
        if with_examples:
            for dialogue in plan.examples:
                for piece in dialogue:
                    add("examples", piece)
        note = self._note_piece(plan, layout.note_top, layout.note_bottom)
        note_at = start + max(0, len(kept) - max(0, options.author_note_depth))
        # Lore at a depth: deepest first, each (depth, role) one message, after the note at
        # the same depth (SillyTavern's order).
        at_depth: dict[int, list[_Piece]] = {}
        for (depth, role), entries in sorted(layout.at_depth.items(), key=lambda i: -i[0][0]):
            at = start + max(0, len(kept) - depth)
            at_depth.setdefault(at, []).append(self._lore_piece(entries, role))

        character_at = -1
        if plan.character_note is not None:
            character_at = start + max(0, len(kept) - plan.character_note[0])

        def from_end(index: int) -> None:
            if index == note_at and note is not None:
                add("author_note", note)
            if index == character_at and plan.character_note is not None:
                add("character_note", plan.character_note[1])
            for piece in at_depth.get(index, ()):
                add("lore_at_depth", piece)

        group = plan.scene.group
        for index in range(start, n):
            from_end(index)
            before(index)
            message = history[index]
            block = "history" if index < note_at else "recent_history"
            add(block, self._piece(message.role, self._message_body(message, group=group)))
        before(n)
        from_end(n)
        for name, piece in plan.tail:
            add(name, piece)
        report.blocks = [BlockReport(name, tokens) for name, tokens in blocks]
        report.total_tokens = len(ids)
        return BuiltPrompt(
            input_ids=tuple(ids),
            text="".join(texts),
            token_count=len(ids),
            budget=plan.options.budget,
            report=report,
            new_token_counts=plan.new_counts,
        )


class _Timeline:
    """When each entry that matched is active across the window's positions (player messages,
    then the end), as SillyTavern counts timed effects, in the scene's messages: not before
    `delay`, `sticky` messages more after it fired, then no firing for `cooldown`. Chances
    are rolled per message, seeded by the scene, so a regenerated turn rolls the same."""

    def __init__(
        self, plan: _Plan, positions: Sequence[int], scans: dict[int, list[LoreScan]]
    ) -> None:
        history = plan.history
        self._history = history
        self._end = len(history)
        self._earlier = plan.options.earlier_messages
        self._seed = plan.scene.macros.seed if plan.scene.macros is not None else 0
        self._scores: dict[tuple[str, int], int] = {}
        matched: dict[int, dict[tuple[str, int], LoreHit]] = {}
        for position in positions:
            found: dict[tuple[str, int], LoreHit] = {}
            for scan in scans.get(position, ()):
                for hit in scan.matched:
                    if not hit.entry.constant:
                        found.setdefault((hit.book, id(hit.entry)), hit)
                for entry_id, score in scan.scores.items():
                    for hit in scan.matched:
                        if id(hit.entry) == entry_id:
                            key = (hit.book, entry_id)
                            self._scores[key] = max(score, self._scores.get(key, 0))
            matched[position] = found
        self._active: dict[int, list[LoreHit]] = {p: [] for p in positions}
        self._reasons: dict[int, dict[tuple[str, int], str]] = {p: {} for p in positions}
        hits = {key: hit for found in matched.values() for key, hit in found.items()}
        for key, hit in hits.items():
            entry = hit.entry
            sticky_until = cooldown_until = -1
            for position in positions:
                ordinal = self._ordinal(position)
                if ordinal < entry.delay:
                    if key in matched[position]:
                        self._reasons[position][key] = "delay"
                elif ordinal <= sticky_until:
                    self._active[position].append(hit)
                elif key not in matched[position]:
                    continue
                elif ordinal <= cooldown_until:
                    self._reasons[position][key] = "cooldown"
                elif entry.probability < 100 and self.roll(position, hit) >= entry.probability:
                    self._reasons[position][key] = "probability"
                else:
                    self._active[position].append(hit)
                    # Active through this message (the end and the newest player message are
                    # one moment) and `sticky` more.
                    sticky_until = ordinal + entry.sticky
                    if entry.cooldown:
                        cooldown_until = ordinal + entry.sticky + entry.cooldown

    def _ordinal(self, position: int) -> int:
        """The scene's messages up to and including the one at `position`."""
        return self._earlier + min(position + 1, self._end)

    def _message_id(self, position: int) -> int:
        index = min(position, self._end - 1)
        if index < 0:
            return 0
        message_id = self._history[index].message_id
        return message_id if message_id is not None else index

    def roll(self, position: int, hit: LoreHit, *salt: object) -> float:
        """A number in [0, 100) fixed by the scene, the message and the entry."""
        entry = hit.entry
        what = (self._seed, self._message_id(position), hit.book, entry.name, entry.content, salt)
        digest = hashlib.blake2b(repr(what).encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64 * 100

    def activated(self, position: int, reasons: dict[tuple[str, int], str]) -> list[LoreHit]:
        """The entries active at `position`; why others that matched there are not."""
        reasons.update(self._reasons.get(position, {}))
        return list(self._active.get(position, ()))

    def active_at_end(self, reasons: dict[tuple[str, int], str]) -> list[LoreHit]:
        return self.activated(self._end, reasons)

    def pick_groups(
        self,
        hits: list[LoreHit],
        position: int,
        placed: set[str],
        reasons: dict[tuple[str, int], str],
    ) -> list[LoreHit]:
        """Of the entries of one inclusion group active together, one: none where the group
        is already in the prompt; else the best scored (with group scoring), the highest
        order that overrides the group, or one drawn by the groups' weights."""
        dropped: set[int] = set()
        names = sorted({g for hit in hits for g in hit.entry.groups})
        for name in names:
            members = [h for h in hits if name in h.entry.groups and id(h) not in dropped]
            if name in placed:
                dropped.update(id(h) for h in members)
                continue
            if len(members) < 2:
                continue
            if any(h.entry.use_group_scoring for h in members):
                best = max(self._scores.get((h.book, id(h.entry)), 0) for h in members)
                low = [
                    h
                    for h in members
                    if h.entry.use_group_scoring
                    and self._scores.get((h.book, id(h.entry)), 0) < best
                ]
                dropped.update(id(h) for h in low)
                members = [h for h in members if id(h) not in dropped]
            overrides = [h for h in members if h.entry.group_override]
            if overrides:
                winner = max(overrides, key=lambda h: h.entry.insertion_order)
            else:
                total = sum(h.entry.group_weight for h in members)
                draw = self.roll(position, members[0], "group", name) / 100 * total
                winner = members[-1]
                for member in members:
                    draw -= member.entry.group_weight
                    if draw < 0:
                        winner = member
                        break
            dropped.update(id(h) for h in members if h is not winner)
        for hit in hits:
            if id(hit) in dropped:
                reasons[(hit.book, id(hit.entry))] = "group"
        return [hit for hit in hits if id(hit) not in dropped]


def _recursion_levels(options: PromptOptions) -> int:
    return recursion_steps(options.lorebook_recursion)


def _position_scan(jobs: Sequence[_ScanJob], results: dict[_ScanKey, LoreScan]) -> list[LoreScan]:
    """What one position's scans found, each entry where it may fire (`fires_at_step`)."""
    found = []
    for job in jobs:
        scan = results.get(job.key)
        if scan is None:
            continue
        matched = [h for h in scan.matched if fires_at_step(h.entry, job.level)]
        if len(matched) < len(scan.matched):
            scan = dataclasses.replace(scan, matched=matched)
        found.append(scan)
    return found


def _insertion(fired: FiredEntry) -> tuple[int, int]:
    return (fired.entry.insertion_order, fired.entry.priority)


def _placed_lore(layout: _Layout) -> bool:
    return bool(layout.lore or layout.at_depth or layout.note_top or layout.note_bottom)


def _remove_floating(layout: _Layout, fired: FiredEntry) -> None:
    for entries in (layout.note_top, layout.note_bottom, *layout.at_depth.values()):
        if fired in entries:
            entries.remove(fired)
    layout.at_depth = {key: group for key, group in layout.at_depth.items() if group}


def _card_sheet(
    card: CharacterCard, user: str, *, group: bool, context: MacroContext | None = None
) -> str:
    """One character's part of the system block, `{{char}}` as that character: alone, its
    sections under the block's own headings; in a group, under the character's name."""

    def sub(text: str) -> str:
        return substitute_macros(text, char=macro_name(card), user=user, context=context).strip()

    heading = f"### {clean_name(card.name, '캐릭터') if group else card.name}"
    level = "####" if group else "###"
    sheet = [f"{heading}\n{sub(card.description)}"] if card.description.strip() else []
    if group and not sheet:
        sheet.append(heading)
    if card.personality.strip():
        sheet.append(f"{level} 성격\n{sub(card.personality)}")
    if card.scenario.strip():
        sheet.append(f"{level} 상황\n{sub(card.scenario)}")
    if card.speech_level is not None:
        sheet.append(sub(SPEECH_LEVEL_INSTRUCTIONS[card.speech_level]))
    return "\n\n".join(sheet)


def _run_scans(jobs: Sequence[_ScanJob], budget_s: float) -> tuple[list[LoreScan], float]:
    """Every job's scan under one shared time budget (safe in any thread); the seconds spent.

    The budget is shared, so scanning many positions costs no more time than one scan may.
    """
    began = time.monotonic()
    deadline = began + budget_s
    scans = [scan_books({job.book_name: job.book}, job.texts, deadline=deadline) for job in jobs]
    return scans, time.monotonic() - began


def _notes(
    plan: _Plan, layout: _Layout, scans: dict[int, list[LoreScan]], start: int
) -> list[LoreNote]:
    """The report's lorebook lines: what fired (in prompt order) and where it went, what was
    left out and why, and what the window's scans timed out on or left unscanned."""
    n = len(plan.history)
    fired: list[tuple[FiredEntry, str]] = []
    for f in plan.constants:
        where = "before the sheets" if f.entry.position is LorePosition.BEFORE_CHAR else ""
        fired.append((f, f"system block{', ' + where if where else ''}"))
    for position in sorted(layout.lore):
        where = "end of history" if position == n else f"before message {position - start + 1}"
        fired += [(f, where) for f in layout.lore[position]]
    for (depth, role), entries in sorted(layout.at_depth.items(), key=lambda i: -i[0][0]):
        fired += [(f, f"depth {depth} ({role})") for f in entries]
    fired += [(f, "author's note, top") for f in layout.note_top]
    fired += [(f, "author's note, bottom") for f in layout.note_bottom]
    placed = {(f.book, id(f.entry)) for f, _ in fired}
    notes = [_note(f.entry, f.book, "fired", where) for f, where in fired]
    seen = set(placed)
    for hit in [*plan.constants_skipped, *layout.skipped]:
        if (hit.book, id(hit.entry)) not in seen:
            seen.add((hit.book, id(hit.entry)))
            notes.append(_note(hit.entry, hit.book, "skipped", reason="budget"))
    hits = {
        (hit.book, id(hit.entry)): hit
        for position, found in scans.items()
        if position >= start
        for scan in found
        for hit in scan.matched
    }
    for key, reason in layout.reasons.items():
        if key not in seen and key in hits:
            seen.add(key)
            notes.append(_note(hits[key].entry, key[0], "skipped", reason=reason))
    in_window = [s for position, found in scans.items() if position >= start for s in found]
    for status in ("timed_out", "unscanned"):
        listed: set[tuple[str, int]] = set()
        for scan in in_window:
            for hit in scan.timed_out if status == "timed_out" else scan.unscanned:
                key = (hit.book, id(hit.entry))
                if key in listed or (status == "unscanned" and key in placed):
                    continue
                listed.add(key)
                notes.append(_note(hit.entry, hit.book, status))
    return notes


def _cast_label(cast: Sequence[CharacterCard]) -> str:
    """What `{{char}}` stands for where no single character is meant: the cast's names."""
    if len(cast) == 1:
        return cast[0].name
    return ", ".join(clean_name(card.name, "캐릭터") for card in cast)


def _fit_history(
    history: Sequence[HistoryMessage],
    cost: Callable[[int], int],
    room: int,
    anchor: int | None,
) -> tuple[int, bool, dict[int, int]]:
    """The widest window that fits `room`: newest first, until the previous start (`anchor`),
    the room or the oldest message. Its start, whether the room ran out first, and each kept
    message's cost by index (the newest is always kept)."""
    n = len(history)
    costs: dict[int, int] = {}
    used = 0
    start = n
    for index in range(n - 1, -1, -1):
        if _before_anchor(history, index, anchor):
            break
        tokens = cost(index)
        if used + tokens > room and index < n - 1:
            return start, True, costs
        used += tokens
        costs[index] = tokens
        start = index
    return start, False, costs


def _speaks(message: HistoryMessage, player: ScenePlayer) -> bool:
    """Whether `player` wrote `message`: by author id, or by name for a message without one."""
    if message.role != "user":
        return False
    if message.author_id is not None:
        return message.author_id == player.author_id
    return clean_name(message.name) == clean_name(player.name)


def _texts_before(history: Sequence[HistoryMessage], end: int, depth: int) -> tuple[str, ...]:
    """The contents of the `depth` messages before `end`: what a book scans at that point."""
    if depth <= 0:
        return ()
    return tuple([m.content for m in history[max(0, end - depth) : end]])


def _before_anchor(history: Sequence[HistoryMessage], index: int, anchor: int | None) -> bool:
    """Whether `history[index]` is older than the previous prompt's start (never the newest)."""
    message_id = history[index].message_id
    return (
        anchor is not None
        and index < len(history) - 1
        and message_id is not None
        and message_id < anchor
    )


def _too_large(sheet: int, budget: int) -> None:
    raise PromptTooLarge(
        f"the character sheet and the newest message take {sheet} tokens, but only {budget} fit",
        sheet_tokens=sheet,
        budget=budget,
    )


def _left_out(books: dict[str, Lorebook]) -> list[LoreLeftOut]:
    return [
        LoreLeftOut(name, book.left_out_entries, book.left_out_keys)
        for name, book in books.items()
        if book.left_out_entries or book.left_out_keys
    ]


def _split_open(
    history: Sequence[HistoryMessage], continue_last: bool
) -> tuple[HistoryMessage | None, Sequence[HistoryMessage]]:
    """The message left open for `continue_last` (the assistant's newest) and the rest."""
    if not continue_last:
        return None, history
    if not history or history[-1].role != "assistant":
        raise ValueError("continue_last needs the assistant's message as the newest")
    return history[-1], history[:-1]


def _note(
    entry: LoreEntry, book: str, status: LoreStatus, where: str = "", reason: str = ""
) -> LoreNote:
    label = entry.name or (entry.keys[0] if entry.keys else "(constant)")
    return LoreNote(label, book, entry.insertion_order, status, where, reason)
