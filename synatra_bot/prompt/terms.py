"""Korean-aware search terms and a BM25 index of a scene's turns, for recalling old turns.

Korean attaches particles and endings to the word they follow (나비는, 나비를, 나비한테서), so
matching whole words would miss most mentions. Kiwi (`kiwipiepy`) splits a text into
morphemes; the content ones (nouns, numbers, foreign words, roots, verb and adjective stems)
are the terms, and the particles and endings are dropped. A verb or adjective stem is kept
with 다 (보다), so it never collides with a noun of the same spelling.

Names a dictionary does not know are split differently in different sentences (구리야 may
stay one noun where 구리를 gives 구리), so each word's stem (the word up to its first particle
or ending) also gives its syllable pairs (구리야 -> 구리, 리야): a name matches whatever Kiwi
made of it.

Kiwi takes a few seconds to load its model, and each text costs about a millisecond: callers
run `KoreanTerms` off the event loop (`roleplay.recall` keeps a worker thread for it).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

#: Kiwi's tags of the morphemes that carry meaning: common and proper nouns, numerals, roots,
#: foreign words, Chinese characters and numbers. Verb and adjective stems are kept too.
_CONTENT_TAGS = frozenset({"NNG", "NNP", "NR", "XR", "SL", "SH", "SN"})
_STEM_TAGS = ("VV", "VA")
#: A word's stem ends at its first particle (J), ending (E), copula (VCP), suffix (XS) or
#: mark (S, but for foreign words, Chinese characters and numbers).
_AFFIX_TAGS = ("J", "E", "VCP", "XS", "S")
_HANGUL_FIRST, _HANGUL_LAST = "\uac00", "\ud7a3"
#: BM25's usual constants.
BM25_K1 = 1.2
BM25_B = 0.75
#: A query term found in more than this share of the turns says little and costs a walk over
#: most of them: it is left out of the ranking (its weight would be near zero anyway).
COMMON_TERM_SHARE = 0.05
#: ... but only once the scene is large enough for the share to mean something.
COMMON_TERM_FLOOR = 200


class KoreanTerms:
    """Search terms of a text by Kiwi's morphemes; Kiwi is loaded on first use."""

    def __init__(self) -> None:
        self._kiwi: Any = None
        self._loading = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._kiwi is not None

    def load(self) -> None:
        """Load Kiwi's model now (seconds: in a worker thread)."""
        with self._loading:
            if self._kiwi is None:
                from kiwipiepy import Kiwi

                kiwi = Kiwi()
                kiwi.tokenize("준비")  # the model finishes loading on its first text
                self._kiwi = kiwi

    def terms(self, text: str) -> list[str]:
        """The content morphemes of `text`, in order, repeats kept (their count is a weight),
        and the syllable pairs of each noun's word stem that is not one morpheme."""
        if not text.strip():
            return []
        self.load()
        found: list[str] = []
        pairs: list[str] = []
        word: list[Any] = []
        word_end = -1
        for token in [*self._kiwi.tokenize(text), None]:
            if token is None or token.start >= word_end:
                pairs += _stem_pairs(text, word)
                if token is None:
                    break
                word, word_end = [], _word_end(text, token.start)
            word.append(token)
            tag: str = token.tag
            if tag in _CONTENT_TAGS:
                found.append(token.form.lower())
            elif tag.startswith(_STEM_TAGS):
                found.append(token.form + "다")
        return found + pairs


def _word_end(text: str, start: int) -> int:
    """Where the whitespace-separated word holding `start` ends."""
    end = start
    while end < len(text) and not text[end].isspace():
        end += 1
    return end


def _stem_pairs(text: str, word: Sequence[Any]) -> list[str]:
    """The syllable pairs of a word's stem (the word up to its first particle, ending, copula
    or suffix), when Kiwi made several morphemes or one proper noun of it: how a name is split
    depends on the sentence, its syllables do not."""
    stem = []
    for token in word:
        if token.tag.startswith(_AFFIX_TAGS) and token.tag not in _CONTENT_TAGS:
            break
        stem.append(token)
    if not stem or (len(stem) == 1 and stem[0].tag != "NNP"):
        return []
    start, end = stem[0].start, stem[-1].start + stem[-1].len
    syllables = "".join(c for c in text[start:end] if _HANGUL_FIRST <= c <= _HANGUL_LAST)
    return [syllables[i : i + 2] for i in range(len(syllables) - 1)]


@dataclass(frozen=True)
class Hit:
    """A turn that matched a query: its id, BM25 score, and the query terms it holds."""

    message_id: int
    score: float
    matched: tuple[str, ...]


class TurnIndex:
    """BM25 over one scene's turns, kept in memory: terms -> {turn id: count}."""

    def __init__(self) -> None:
        self._postings: dict[str, dict[int, int]] = {}
        self._lengths: dict[int, int] = {}
        self._total_length = 0

    def __len__(self) -> int:
        return len(self._lengths)

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._lengths

    def add(self, message_id: int, terms: Sequence[str]) -> None:
        """Index a turn (again, when it was indexed before)."""
        self.remove(message_id)
        counts: dict[str, int] = {}
        for term in terms:
            counts[term] = counts.get(term, 0) + 1
        for term, count in counts.items():
            self._postings.setdefault(term, {})[message_id] = count
        self._lengths[message_id] = len(terms)
        self._total_length += len(terms)

    def remove(self, message_id: int) -> None:
        length = self._lengths.pop(message_id, None)
        if length is None:
            return
        self._total_length -= length
        for term in list(self._postings):
            turns = self._postings[term]
            if turns.pop(message_id, None) is not None and not turns:
                del self._postings[term]

    def remove_from(self, first_id: int) -> None:
        """Forget every turn from `first_id` on (they changed: they are indexed again)."""
        gone = {i for i in self._lengths if i >= first_id}
        if not gone:
            return
        for message_id in gone:
            self._total_length -= self._lengths.pop(message_id)
        for term in list(self._postings):
            turns = self._postings[term]
            for message_id in gone.intersection(turns):
                del turns[message_id]
            if not turns:
                del self._postings[term]

    def search(self, terms: Iterable[str], *, before_id: int, limit: int) -> list[Hit]:
        """The `limit` best turns older than `before_id` for the query `terms`, best first."""
        n = len(self._lengths)
        if n == 0 or limit <= 0:
            return []
        average = self._total_length / n or 1.0
        common = max(COMMON_TERM_FLOOR, int(n * COMMON_TERM_SHARE))
        scores: dict[int, float] = {}
        matched: dict[int, list[str]] = {}
        for term in dict.fromkeys(terms):
            turns = self._postings.get(term)
            if not turns or (n > COMMON_TERM_FLOOR and len(turns) > common):
                continue
            idf = math.log(1 + (n - len(turns) + 0.5) / (len(turns) + 0.5))
            for message_id, count in turns.items():
                if message_id >= before_id:
                    continue
                norm = BM25_K1 * (1 - BM25_B + BM25_B * self._lengths[message_id] / average)
                scores[message_id] = scores.get(message_id, 0.0) + idf * count * (BM25_K1 + 1) / (
                    count + norm
                )
                matched.setdefault(message_id, []).append(term)
        best = sorted(scores, key=lambda i: (-scores[i], -i))[:limit]
        return [Hit(i, scores[i], tuple(matched[i])) for i in best]
