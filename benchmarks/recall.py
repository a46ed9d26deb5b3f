"""Recall of old turns: does a planted fact come back when asked about later, and what does
recall add to a prompt build?

A generated Korean scene (player and character taking turns, everyday sentences from a few
hundred words) holds 200 planted facts: "{thing} 이름은 {name}(이)야. {place}에서 처음 만났어."
Each is asked about later, past the window, with other particles, endings and word order
("{place}에서 만났던 {name}한테 ...", "{name}를 요즘 못 봤네 ..."). Reported:

- recall@3 and @5: the fact's turn among the 3 / 5 best turns older than the window
  (`prompt.terms.TurnIndex`, BM25 over Kiwi's morphemes; and SQLite FTS5's bm25 over the same
  terms, for comparison);
- the summary-only baseline: is the fact's name in the rolling summary when it is asked about,
  with a scripted summariser that folds each dropped chunk of 20 turns by keeping the first
  sentence of each turn (the fact is its turn's first sentence: the baseline's best case),
  within 384 tokens (`memory.fit_summary`, the real tokenizer);
- the time recall adds to a prompt build (analysing the question, searching, the block, and
  the build with it) against the same build without it, p50 and p95 over the 200 questions;
- what recall by meaning adds on top (with an embeddings server): the cosine search over the
  scene's vectors (`prompt.vectors.VectorIndex`) and the fusion of both rankings
  (`prompt.vectors.fuse`), with fixed random vectors of `--dimensions` for every turn and
  question. Random vectors measure the time, not the ranking (no embedding model runs here):
  the fused recall@5 they give is what fusion keeps of the words' ranking when the vectors
  say nothing. The query's own embedding request is not in it (it runs on the server, in
  parallel with analysing the question, within EMBEDDINGS_TIMEOUT_S). Both searches are
  timed in the same run: the exact one (every vector's cosine) and the default one, which for
  a long scene ranks by cosine only the turns nearest by their vectors' sign bits;
- whether the bits lose what the exact search finds: each fact's turn gets a question vector
  planted near it (its own unit vector plus random noise, at cosine `--planted-similarity`
  to it on average), and recall@5 of the search by meaning alone is reported for both.

Run: `python -m benchmarks.recall [--turns 5000 50000] [--dimensions 768]
[--planted-similarity 0.2] [--tokenizer FOLDER]`
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import statistics
import tempfile
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

FACTS = 200
WINDOW = 40
CHUNK = 20
SUMMARY_TOKENS = 384
RECALL_TOKENS = 256

SUBJECTS = ["나", "우리", "민지", "하늘", "선배", "동생", "친구", "엄마", "아빠", "선생님"]
PLACES_DAILY = ["학교", "도서관", "카페", "공원", "시장", "버스", "식당", "교실", "집", "운동장"]
OBJECTS = ["책", "커피", "우산", "가방", "사진", "노래", "영화", "숙제", "빵", "꽃"]
VERBS = ["봤다", "샀다", "읽었다", "찾았다", "만들었다", "기다렸다", "좋아했다", "잊었다"]
MOODS = ["날씨가 맑았다.", "비가 조금 왔다.", "바람이 시원했다.", "하루가 길었다.", "조용했다."]
THINGS = [
    "고양이",
    "강아지",
    "앵무새",
    "토끼",
    "거북이",
    "햄스터",
    "인형",
    "자전거",
    "반지",
    "화분",
]
FESTIVALS = [
    "봄 축제",
    "불꽃놀이",
    "바닷가 캠프",
    "눈썰매장",
    "벚꽃길",
    "야시장",
    "등산로",
    "수족관",
]
SYLLABLES = list("나비루미도라솔하온별초코모찌구름새벽다온보리유키아리토토")


def _batchim(word: str) -> bool:
    last = ord(word[-1]) - 0xAC00
    return 0 <= last < 11172 and last % 28 != 0


def _particle(word: str, with_final: str, without: str) -> str:
    return word + (with_final if _batchim(word) else without)


@dataclass(frozen=True)
class Fact:
    position: int
    asked_at: int
    name: str
    thing: str
    place: str


def _filler(rng: random.Random) -> str:
    s, p, o, v = (rng.choice(x) for x in (SUBJECTS, PLACES_DAILY, OBJECTS, VERBS))
    return f"{_particle(s, '은', '는')} {p}에서 {_particle(o, '을', '를')} {v} {rng.choice(MOODS)}"


def generate(turns: int, seed: int = 7) -> tuple[list[str], list[Fact]]:
    rng = random.Random(seed)
    names: set[str] = set()
    while len(names) < FACTS:
        names.add("".join(rng.choice(SYLLABLES) for _ in range(rng.choice((2, 3)))))
    texts = [_filler(rng) for _ in range(turns)]
    positions = sorted(rng.sample(range(10, turns - 3 * WINDOW), FACTS))
    facts = []
    for position, name in zip(positions, sorted(names), strict=True):
        thing, place = rng.choice(THINGS), rng.choice(FESTIVALS)
        texts[position] = (
            f"{thing} 이름은 {name}{'이야' if _batchim(name) else '야'}. {place}에서 처음 만났어."
        )
        asked = rng.randrange(position + WINDOW + 1, min(turns, position + WINDOW + turns // 4))
        facts.append(Fact(position, asked, name, thing, place))
    return texts, facts


def question(fact: Fact, rng: random.Random) -> str:
    name, place, thing = fact.name, fact.place, fact.thing
    forms = [
        f"{place}에서 만났던 {name}한테 요즘 밥은 잘 줘?",
        f"{_particle(name, '을', '를')} 요즘 못 봤네. {place} 때 기억나?",
        f"그때 {_particle(name, '과', '와')} 같이 갔던 {place} 재밌었지?",
        f"{name}의 {_particle(thing, '은', '는')} 잘 지내? {place}에서 데려왔잖아.",
        f"{_particle(name, '이', '가')} 보고 싶다고 했었지, {place} 다음에?",
    ]
    return rng.choice(forms)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def run(
    turns: int, tokenizer_dir: Path, dimensions: int = 768, planted_similarity: float = 0.2
) -> dict[str, float]:
    import numpy as np

    from synatra_bot.prompt.builder import HistoryMessage, PromptBuilder, PromptOptions
    from synatra_bot.prompt.cards import CharacterCard
    from synatra_bot.prompt.recall import CANDIDATES, RecalledTurn, recall_block
    from synatra_bot.prompt.terms import KoreanTerms, TurnIndex
    from synatra_bot.prompt.vectors import VECTOR_CANDIDATES, VectorIndex, fuse
    from synatra_bot.roleplay.memory import fit_summary
    from synatra_bot.tokenizer import load_tokenizer

    texts, facts = generate(turns)
    korean = KoreanTerms()
    korean.load()
    started = time.perf_counter()
    terms = [korean.terms(t) for t in texts]
    analysis_s = time.perf_counter() - started
    tracemalloc.start()
    index = TurnIndex()
    for i, t in enumerate(terms):
        index.add(i, t)
    index_mib = tracemalloc.get_traced_memory()[0] / 2**20
    tracemalloc.stop()
    random_vectors = np.random.default_rng(3)
    vectors = VectorIndex()
    fact_positions = {fact.position for fact in facts}
    fact_vectors = {}
    for i in range(turns):
        vector = random_vectors.standard_normal(dimensions).astype(np.float32)
        vectors.add(i, vector)
        if i in fact_positions:
            fact_vectors[i] = vector / np.linalg.norm(vector)
    # A unit vector plus noise of length s has cosine 1 / sqrt(1 + s^2) to it on average.
    noise = (1 / planted_similarity**2 - 1) ** 0.5 / dimensions**0.5
    planted_hits = {True: 0, False: 0}

    fts = sqlite3.connect(":memory:")
    fts.execute("CREATE VIRTUAL TABLE turns USING fts5(terms)")
    fts.executemany(
        "INSERT INTO turns(rowid, terms) VALUES (?, ?)",
        [(i, " ".join(t)) for i, t in enumerate(terms)],
    )

    builder = PromptBuilder(load_tokenizer(tokenizer_dir))
    card = CharacterCard(name="민지", description="{{char}}는 활발한 대학생이다.")
    rng = random.Random(11)
    hits3 = hits5 = fts5_hits = summary_hits = 0
    plain_ms: list[float] = []
    added_ms: list[float] = []
    fts_ms: list[float] = []
    added_cpu_ms: list[float] = []
    analysis_ms: list[float] = []
    search_ms: list[float] = []
    fusion_ms: list[float] = []
    exact_fusion_ms: list[float] = []
    fused_hits5 = 0

    # The scripted summariser, folded forward to each question in order.
    summary, folded = "", 0
    for fact in sorted(facts, key=lambda f: f.asked_at):
        before = fact.asked_at - WINDOW
        while folded + CHUNK <= before:
            firsts = [t.split(". ")[0].rstrip(".") + "." for t in texts[folded : folded + CHUNK]]
            summary = fit_summary(
                f"{summary} {' '.join(firsts)}", SUMMARY_TOKENS, builder.count_text
            )
            folded += CHUNK
        summary_hits += fact.name in summary

        asked = question(fact, rng)
        window = [
            HistoryMessage(
                "user" if i % 2 == 0 else "assistant",
                "준" if i % 2 == 0 else "민지",
                texts[i],
                message_id=i,
            )
            for i in range(before, fact.asked_at)
        ] + [HistoryMessage("user", "준", asked, message_id=fact.asked_at)]
        options = PromptOptions(summary=summary)
        builder.build(card=card, history=window, user_name="준", options=options)  # warm

        started, cpu = time.perf_counter(), time.thread_time()
        builder.build(card=card, history=window, user_name="준", options=options)
        plain, plain_cpu = time.perf_counter() - started, time.thread_time() - cpu

        started, cpu = time.perf_counter(), time.thread_time()
        query_terms = korean.terms(asked)
        analysed = time.perf_counter()
        found = index.search(query_terms, before_id=before, limit=5)
        searched = time.perf_counter()
        block = recall_block(
            [
                RecalledTurn(h.message_id, "준", texts[h.message_id], h.matched, h.score)
                for h in found
            ],
            budget=RECALL_TOKENS,
            count=builder.count_text,
        )
        options.recall = block
        builder.build(card=card, history=window, user_name="준", options=options)
        with_recall, with_cpu = time.perf_counter() - started, time.thread_time() - cpu

        plain_ms.append(plain * 1000)
        added_ms.append((with_recall - plain) * 1000)
        added_cpu_ms.append((with_cpu - plain_cpu) * 1000)
        analysis_ms.append((analysed - started) * 1000)
        search_ms.append((searched - analysed) * 1000)
        query_vector = random_vectors.standard_normal(dimensions).astype(np.float32)
        lexical = index.search(query_terms, before_id=before, limit=CANDIDATES)
        started = time.perf_counter()
        near = vectors.search(query_vector, before_id=before, limit=VECTOR_CANDIDATES, exact=True)
        fuse(lexical, near, limit=CANDIDATES)
        exact_fusion_ms.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        near = vectors.search(query_vector, before_id=before, limit=VECTOR_CANDIDATES)
        fused = fuse(lexical, near, limit=CANDIDATES)
        fusion_ms.append((time.perf_counter() - started) * 1000)
        fused_hits5 += fact.position in [f.message_id for f in fused[:5]]
        planted = fact_vectors[fact.position] + noise * random_vectors.standard_normal(dimensions)
        for exact in (True, False):
            nearest = vectors.search(
                planted.astype(np.float32), before_id=before, limit=5, exact=exact
            )
            planted_hits[exact] += fact.position in [n.message_id for n in nearest]

        ids = [h.message_id for h in found]
        hits3 += fact.position in ids[:3]
        hits5 += fact.position in ids[:5]

        query = " OR ".join(f'"{t}"' for t in dict.fromkeys(korean.terms(asked)))
        started = time.perf_counter()
        rows = fts.execute(
            "SELECT rowid FROM turns WHERE turns MATCH ? AND rowid < ? ORDER BY bm25(turns) LIMIT 5",
            (query, before),
        ).fetchall()
        fts_ms.append((time.perf_counter() - started) * 1000)
        fts5_hits += fact.position in [r[0] for r in rows]

    return {
        "turns": turns,
        "analysis_ms_per_turn": analysis_s * 1000 / turns,
        "index_mib": index_mib,
        "recall@3": hits3 / FACTS,
        "recall@5": hits5 / FACTS,
        "fts5_recall@5": fts5_hits / FACTS,
        "summary_only": summary_hits / FACTS,
        "build_p50": percentile(plain_ms, 0.5),
        "build_p95": percentile(plain_ms, 0.95),
        "added_p50": percentile(added_ms, 0.5),
        "added_p95": percentile(added_ms, 0.95),
        "fts5_search_p50": percentile(fts_ms, 0.5),
        "fts5_search_p95": percentile(fts_ms, 0.95),
        "mean_added": statistics.fmean(added_ms),
        "added_cpu_p50": percentile(added_cpu_ms, 0.5),
        "added_cpu_p95": percentile(added_cpu_ms, 0.95),
        "analysis_p50": percentile(analysis_ms, 0.5),
        "analysis_p95": percentile(analysis_ms, 0.95),
        "search_p50": percentile(search_ms, 0.5),
        "search_p95": percentile(search_ms, 0.95),
        "fusion_p50": percentile(fusion_ms, 0.5),
        "fusion_p95": percentile(fusion_ms, 0.95),
        "exact_fusion_p50": percentile(exact_fusion_ms, 0.5),
        "exact_fusion_p95": percentile(exact_fusion_ms, 0.95),
        "fused_recall@5": fused_hits5 / FACTS,
        "planted_exact@5": planted_hits[True] / FACTS,
        "planted_bits@5": planted_hits[False] / FACTS,
        "planted_similarity": planted_similarity,
        "vectors_mib": len(vectors) * dimensions * 4 / 2**20,
        "bits_mib": len(vectors) * -(-dimensions // 64) * 8 / 2**20,
        "dimensions": dimensions,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, nargs="+", default=[5000, 50000])
    parser.add_argument(
        "--dimensions", type=int, default=768, help="the random vectors' length (384-1024)"
    )
    parser.add_argument(
        "--planted-similarity",
        type=float,
        default=0.2,
        help="the planted question vectors' cosine to their fact's vector (0-1)",
    )
    parser.add_argument("--tokenizer", type=Path, help="a tokenizer folder (default: the tests')")
    args = parser.parse_args()
    tokenizer_dir = args.tokenizer
    if tokenizer_dir is None:
        from tests.model_fixtures import write_tokenizer

        tokenizer_dir = write_tokenizer(Path(tempfile.mkdtemp()))
    results = [
        run(turns, tokenizer_dir, args.dimensions, args.planted_similarity) for turns in args.turns
    ]
    print(
        "| turns | recall@3 | recall@5 | FTS5 recall@5 | summary only | Kiwi ms/turn | index MiB |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['turns']:,} | {r['recall@3']:.3f} | {r['recall@5']:.3f}"
            f" | {r['fts5_recall@5']:.3f} | {r['summary_only']:.3f}"
            f" | {r['analysis_ms_per_turn']:.2f} | {r['index_mib']:.1f} |"
        )
    print()
    print(
        "| turns | build without recall | recall adds (wall) | recall adds (thread CPU)"
        " | of which: analysing the question | BM25 search | FTS5 search instead |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        cells = [
            f"{r[name + '_p50']:.2f} / {r[name + '_p95']:.2f}"
            for name in ("build", "added", "added_cpu", "analysis", "search", "fts5_search")
        ]
        print(f"| {r['turns']:,} | " + " | ".join(cells) + " |")
    print("(milliseconds, p50 / p95 over the 200 questions)")
    print()
    print(
        "| turns | vector length | vectors MiB | sign bits MiB | exact search + fusion"
        " | search + fusion (past 32 MiB: bits, then cosine) | fused recall@5 (random vectors)"
        " | planted recall@5: exact | planted recall@5: default search |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['turns']:,} | {r['dimensions']:.0f} | {r['vectors_mib']:.1f}"
            f" | {r['bits_mib']:.1f} | {r['exact_fusion_p50']:.2f} / {r['exact_fusion_p95']:.2f}"
            f" | {r['fusion_p50']:.2f} / {r['fusion_p95']:.2f} | {r['fused_recall@5']:.3f}"
            f" | {r['planted_exact@5']:.3f} | {r['planted_bits@5']:.3f} |"
        )
    print(
        f"(milliseconds, p50 / p95; planted question vectors at cosine"
        f" {results[0]['planted_similarity']:.2f} to their fact's)"
    )


if __name__ == "__main__":
    main()
