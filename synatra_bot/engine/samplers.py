"""The roleplay samplers DRY and XTC as transformers logits processors, built from SamplingParams.

DRY ("Don't Repeat Yourself", as in text-generation-webui, llama.cpp and koboldcpp) looks at the
end of the context and finds earlier places where the same tokens occurred. A token that followed
such an earlier copy would extend the repeat: if the copy is `n >= allowed_length` tokens long,
the token's score drops by `multiplier * base ** (n - allowed_length)`, so short echoes are free
and long verbatim loops become impossible. Sequence breakers end a match: a repeat never counts
across a breaker, a context that ends in one is not penalised, and a breaker itself is never
penalised. The engine adds the stop ids to the breakers, so DRY never makes ending a reply harder
and ChatML markers never join a match.

XTC ("Exclude Top Choices") fires with `probability` per generated token. When it fires and at
least two tokens are `threshold` or more likely, it removes all of them except the least likely
one: the reply keeps a good choice but leaves the most predictable path. When a stop id is among
those top choices it does nothing, so XTC changes wording, never when the reply ends. Its draws
come from its own `torch.Generator`, seeded from the request seed when there is one, so a seeded
reply repeats exactly.

Sequence breakers are strings and `breaker_ids` turns them into token ids: the ids the tokenizer
gives the string (without special tokens) on its own and right after a letter, so both forms a
SentencePiece vocabulary uses count (`▁:` at the start of a word, `:` inside one); pieces that
decode to nothing (the lone `▁` put before a leading newline) are left out. A string that takes
several tokens makes each of them a breaker: coarser than matching the whole string, and exact
for the default one-character breakers.

transformers applies processors passed to `generate(logits_processor=...)` after the repetition
penalty and before temperature, top-k, top-p and min-p: DRY and XTC see the model's untempered
distribution, as in llama.cpp's default order.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

import torch
from transformers import LogitsProcessor, LogitsProcessorList, PreTrainedTokenizerBase

from synatra_bot.engine.base import SamplingParams

#: Repeats longer than `allowed_length` plus this add no more penalty: the token is already far
#: out of reach, and the bound keeps the penalty finite and the match scan short.
DRY_MAX_EXTRA_LENGTH = 50

#: Any ordinary letter: encoding a breaker after it gives the breaker's word-inner form.
_LEAD = "a"


def breaker_ids(tokenizer: PreTrainedTokenizerBase, breakers: Iterable[str]) -> frozenset[int]:
    """The token ids that act as the given DRY sequence breakers (rule in the module docstring)."""
    lead = tokenizer.encode(_LEAD, add_special_tokens=False)
    ids: set[int] = set()
    for breaker in breakers:
        ids.update(tokenizer.encode(breaker, add_special_tokens=False))
        after_lead = tokenizer.encode(_LEAD + breaker, add_special_tokens=False)
        if after_lead[: len(lead)] == lead:
            ids.update(after_lead[len(lead) :])
    return frozenset(i for i in ids if tokenizer.decode([i]))


class DRYLogitsProcessor(LogitsProcessor):
    """Penalises tokens that would extend a repeat of earlier context (see the module docstring)."""

    def __init__(
        self,
        *,
        multiplier: float,
        base: float,
        allowed_length: int,
        breaker_ids: Collection[int],
        penalty_last_n: int = 0,
    ) -> None:
        self.multiplier = multiplier
        self.base = base
        self.allowed_length = allowed_length
        self.breakers = frozenset(breaker_ids)
        self.penalty_last_n = penalty_last_n

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        penalised = scores
        for row, ids in enumerate(input_ids.tolist()):
            lengths = self.match_lengths(ids)
            if not lengths:
                continue
            if penalised is scores:
                penalised = scores.clone()  # type: ignore[assignment]
            tokens = list(lengths)
            amounts = [
                self.multiplier * self.base ** (lengths[t] - self.allowed_length) for t in tokens
            ]
            penalised[row, tokens] -= torch.tensor(
                amounts, dtype=scores.dtype, device=scores.device
            )
        return penalised

    def match_lengths(self, ids: list[int]) -> dict[int, int]:
        """For each token that would extend a long enough repeat: the length of that repeat."""
        if self.penalty_last_n > 0:
            ids = ids[-self.penalty_last_n :]
        end = len(ids) - 1
        if end < 1 or ids[end] in self.breakers:
            return {}
        limit = self.allowed_length + DRY_MAX_EXTRA_LENGTH
        last = ids[end]
        longest: dict[int, int] = {}
        for i in range(end):
            if ids[i] != last:
                continue
            follower = ids[i + 1]
            if follower in self.breakers:
                continue
            # ids[i - n + 1 : i + 1] equals the last n tokens of the context.
            n = 1
            while (
                n < limit
                and n <= i
                and ids[i - n] == ids[end - n]
                and ids[i - n] not in self.breakers
            ):
                n += 1
            if n >= self.allowed_length and n > longest.get(follower, 0):
                longest[follower] = n
        return longest


class XTCLogitsWarper(LogitsProcessor):
    """Sometimes removes the most likely choices, keeping the least likely of them."""

    def __init__(
        self,
        *,
        threshold: float,
        probability: float,
        generator: torch.Generator,
        protected_ids: Collection[int] = (),
    ) -> None:
        self.threshold = threshold
        self.probability = probability
        self.generator = generator
        self.protected = frozenset(protected_ids)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.probability <= 0.0:
            return scores
        probs = scores.softmax(dim=-1)
        out = scores
        for row in range(scores.shape[0]):
            if torch.rand((), generator=self.generator).item() >= self.probability:
                continue
            top = torch.nonzero(probs[row] >= self.threshold).flatten()
            if top.numel() < 2 or not self.protected.isdisjoint(top.tolist()):
                continue
            keep = top[probs[row, top].argmin()]
            if out is scores:
                out = scores.clone()  # type: ignore[assignment]
            out[row, top[top != keep]] = float("-inf")
        return out


def xtc_generator(seed: int | None) -> torch.Generator:
    """XTC's random source: from the request seed, else freshly random (never a fixed default)."""
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def sampler_processors(
    params: SamplingParams, tokenizer: PreTrainedTokenizerBase
) -> LogitsProcessorList:
    """The DRY and XTC processors `params` turns on (empty when both are off)."""
    processors = LogitsProcessorList()
    if params.dry_on:
        breakers = breaker_ids(tokenizer, params.dry_sequence_breakers) | set(params.stop_ids)
        processors.append(
            DRYLogitsProcessor(
                multiplier=params.dry_multiplier,
                base=params.dry_base,
                allowed_length=params.dry_allowed_length,
                breaker_ids=breakers,
                penalty_last_n=params.dry_penalty_last_n,
            )
        )
    if params.xtc_on:
        processors.append(
            XTCLogitsWarper(
                threshold=params.xtc_threshold,
                probability=params.xtc_probability,
                generator=xtc_generator(params.seed),
                protected_ids=params.stop_ids,
            )
        )
    return processors
