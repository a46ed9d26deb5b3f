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
        #: Each row's ids as a list, extended by the new column at each step rather than
        #: copied whole from the tensor every step.
        self._rows: list[list[int]] = []

    def _ids(self, input_ids: torch.LongTensor) -> list[list[int]]:
        """The rows as lists: the previous call's rows plus the new column when the ids went
        on by one token from them (generate() calls once per step), else copied afresh."""
        rows = self._rows
        width = input_ids.shape[1]
        went_on = (
            width > 1
            and len(rows) == input_ids.shape[0]
            and all(len(ids) == width - 1 for ids in rows)
            and [ids[-1] for ids in rows] == input_ids[:, -2].tolist()
        )
        if went_on:
            for ids, new in zip(rows, input_ids[:, -1].tolist(), strict=True):
                ids.append(new)
        else:
            rows = self._rows = input_ids.tolist()
        return rows

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        penalised = scores
        for row, ids in enumerate(self._ids(input_ids)):
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


#: With top-p on and top-k off, this many of the most likely tokens are looked at first; only
#: when they hold less than top-p of the probability is the whole vocabulary sorted.
TOP_P_CANDIDATES = 256


def pick_token(
    logits: torch.Tensor,
    *,
    temperature: float,
    top_k: int,
    top_p: float,
    generator: torch.Generator | None = None,
) -> int:
    """The next token from one row of logits, for the batched lane.

    Temperature 0 (or less) is greedy: the argmax. Otherwise the tokens transformers'
    temperature, top-k and top-p warpers would keep (`kept_tokens`), and one draw among them
    with their renormalised probabilities: the same distribution as `generate()`'s draw, made
    over the few kept tokens instead of the whole vocabulary (a draw over 32,000 tokens cost
    half a millisecond per reply and step on the CPU). The random stream is not `generate()`'s,
    which does not matter here: a reply with a seed takes the single-stream lane.
    """
    if temperature <= 0.0:
        return int(torch.argmax(logits))
    scores = logits.float() / temperature
    kept = kept_tokens(scores, top_k=top_k, top_p=top_p)
    if kept is None:
        return int(torch.multinomial(scores.softmax(dim=-1), 1, generator=generator))
    values, indices = kept
    choice = torch.multinomial(values.softmax(dim=-1), 1, generator=generator)
    return int(indices[choice])


def top_k_top_p(scores: torch.Tensor, *, top_k: int, top_p: float) -> torch.Tensor:
    """One row of (tempered) scores with everything top-k and top-p drop set to -inf, as
    transformers' warpers leave it (see `kept_tokens`)."""
    kept = kept_tokens(scores, top_k=top_k, top_p=top_p)
    if kept is None:
        return scores
    values, indices = kept
    filtered = torch.full_like(scores, float("-inf"))
    filtered[indices] = values
    return filtered


def kept_tokens(
    scores: torch.Tensor, *, top_k: int, top_p: float
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The scores and ids of the tokens top-k and top-p keep in one row of (tempered) scores,
    most likely first; None when both are off (every token stays).

    The rule is transformers': top-k keeps every token scoring at least the k-th best (ties
    included), top-p keeps, among those, the most likely tokens whose probability
    (renormalised over the top-k set) reaches `top_p`, at least one. The work differs:
    `torch.topk` finds the candidates and only they are sorted, so no request sorts the whole
    vocabulary (unless top-k is off and the `TOP_P_CANDIDATES` best hold less than `top_p`,
    when the whole vocabulary is the candidate set)."""
    vocab = scores.shape[-1]
    k = top_k if 0 < top_k < vocab else vocab
    keep_p = top_p < 1.0  # 0 keeps only the best token, as in transformers
    if k == vocab and not keep_p:
        return None
    candidates = _candidates(scores, k, top_p if keep_p else None)
    if candidates is None:
        return _top_p_over_vocabulary(scores, top_p)
    values, indices, probs = candidates
    if keep_p:
        # transformers' rule: in ascending order, drop while the cumulative probability is at
        # most 1 - top_p (the tokens outside the candidates come first); keep the best token.
        tail = max(0.0, 1.0 - float(probs.sum())) if k == vocab else 0.0
        ascending = probs.flip(0).cumsum(dim=-1) + tail
        kept = (ascending > 1.0 - top_p).flip(0)
        kept[0] = True
        values, indices = values[kept], indices[kept]
    return values, indices


class TopKTopPWarper(LogitsProcessor):
    """transformers' temperature, top-k and top-p warpers in one, without sorting the
    vocabulary (`top_k_top_p`), for `generate()` on the single-stream lane. It is passed as a
    custom processor, which `generate()` applies after DRY and XTC and before min-p, the order
    the three warpers it replaces had."""

    def __init__(self, *, temperature: float, top_k: int, top_p: float) -> None:
        self.temperature = temperature
        self.top_k = top_k
        self.top_p = top_p

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        tempered = scores / self.temperature
        rows = [top_k_top_p(row, top_k=self.top_k, top_p=self.top_p) for row in tempered]
        return torch.stack(rows)  # type: ignore[return-value]


def _candidates(
    scores: torch.Tensor, k: int, top_p: float | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The candidates, most likely first: their scores, token ids and probabilities (over the
    top-k set when top-k is on, else over the whole vocabulary); None when top-k is off and
    the best `TOP_P_CANDIDATES` hold less than `top_p`."""
    vocab = scores.shape[-1]
    if k < vocab:
        kth = torch.topk(scores, k).values[-1]
        indices = torch.nonzero(scores >= kth).flatten()  # ties with the k-th stay, as in HF
        values = scores[indices]
        order = torch.argsort(values, descending=True, stable=True)
        values, indices = values[order], indices[order]
        return values, indices, values.softmax(dim=-1)
    # top-k off, top-p on: the best few usually hold top_p already.
    assert top_p is not None
    log_total = torch.logsumexp(scores, dim=-1)
    bound = min(TOP_P_CANDIDATES, vocab)
    values, indices = torch.topk(scores, bound)
    probs = torch.exp(values - log_total)
    if bound == vocab or float(probs.sum()) < top_p:
        return None
    return values, indices, probs


def _top_p_over_vocabulary(scores: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-p over the whole vocabulary, computed as transformers' warper computes it (a sort
    of every token): for a flat distribution, where the best few do not reach top_p."""
    ascending, order = torch.sort(scores, descending=False)
    dropped = ascending.softmax(dim=-1).cumsum(dim=-1) <= 1.0 - top_p
    dropped[-1] = False
    kept = torch.nonzero(~dropped).flatten().flip(0)
    return ascending[kept], order[kept]
