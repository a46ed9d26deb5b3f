"""Recall by meaning: turn vectors from an OpenAI-compatible `/v1/embeddings` server, stored
and kept true through edits and deletes, fused with the words' BM25 ranking by reciprocal rank,
and a server that is down or slow leaving the prompt to the words alone. The ranking logic runs
against a deterministic stand-in embedder; the wiring against llama.cpp's real `llama-server
--embeddings` (a tiny random model: its similarities mean nothing, so only what was stored and
used is asserted)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from synatra_bot.engine.embeddings import (
    EmbeddingsClient,
    EmbeddingsRefused,
    EmbeddingsUnavailable,
    embeddings_url,
)
from synatra_bot.prompt.recall import RECALL_HEADING
from synatra_bot.prompt.terms import Hit, KoreanTerms
from synatra_bot.prompt.vectors import (
    EXACT_SCAN_BYTES,
    RRF_K,
    VECTOR_CANDIDATES,
    Similar,
    VectorIndex,
    from_blob,
    fuse,
    to_blob,
)
from synatra_bot.roleplay.embedded_recall import TurnEmbeddings
from synatra_bot.roleplay.recall import TurnRecall
from synatra_bot.storage import repository as repo
from synatra_bot.storage.migrate import upgrade_database
from synatra_bot.storage.models import MessageVector
from synatra_bot.storage.recall_vectors import scene_vectors
from tests import llama_cpp
from tests.db_helpers import assert_kept_down_and_up, opened, upgraded_from_0001
from tests.engine_helpers import free_port, loopback_app, running_process
from tests.test_recall import FACT, FILLERS, _scene

#: Words the stand-in embedder knows, each its own direction; words of one meaning share one.
CONCEPTS = {
    "고양이": 0,
    "냥이": 0,
    "나비": 0,
    "축제": 1,
    "비": 2,
    "도서관": 3,
    "시험": 3,
    "김치찌개": 4,
    "점심": 4,
    "버스": 5,
    "수업": 5,
    "강아지": 6,
    "초코": 6,
}
DIMENSIONS = 8


class ConceptEmbedder:
    """A deterministic stand-in for an embedding model: a text's vector counts the concepts
    its words name (plus a little of the last direction, so no text is without one)."""

    model = "concepts-v1"
    shown_url = "stand-in"

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.down = False
        self.hang = asyncio.Event()

    async def embed(self, texts: Sequence[str], *, timeout_s: float) -> list[list[float]]:
        self.calls.append(list(texts))
        if self.down:
            raise EmbeddingsUnavailable("connection refused")
        if any("멈춰" in text for text in texts):
            await self.hang.wait()  # never set: only a timeout ends this
        vectors = []
        for text in texts:
            vector = [0.0] * DIMENSIONS
            vector[-1] = 0.1
            for word, concept in CONCEPTS.items():
                vector[concept] += text.count(word)
            vectors.append(vector)
        return vectors

    async def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def korean() -> KoreanTerms:
    terms = KoreanTerms()
    terms.load()
    return terms


@pytest.fixture
async def sessions(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'vectors.db'}"
    await upgrade_database(url)
    async with opened(url) as made:
        yield made


# --- the ranking ----------------------------------------------------------------------------


def test_the_vector_index_finds_the_nearest_older_turns_and_forgets_changed_ones() -> None:
    index = VectorIndex()
    rng = np.random.default_rng(7)
    vectors = {i: rng.standard_normal(384).astype(np.float32) for i in range(1, 201)}
    for message_id, vector in vectors.items():
        assert index.add(message_id, vector)
    query = vectors[42] + 0.01 * rng.standard_normal(384).astype(np.float32)
    found = index.search(query, before_id=150, limit=3)
    assert found[0].message_id == 42 and found[0].similarity > 0.99
    assert all(s.message_id < 150 for s in found) and len(found) == 3
    assert index.search(vectors[160], before_id=150, limit=3)[0].message_id != 160
    index.remove_from(40)
    assert len(index) == 39 and 42 not in index
    assert all(s.message_id < 40 for s in index.search(query, before_id=999, limit=5))
    # A vector of another length, or of none, is left out; so is a query of another length.
    assert not index.add(500, np.ones(128, dtype=np.float32))
    assert not index.add(501, np.zeros(384, dtype=np.float32))
    assert index.search(np.ones(128, dtype=np.float32), before_id=999, limit=3) == []
    assert np.allclose(from_blob(to_blob([0.5, -1.25])), [0.5, -1.25])


def _planted_scene(
    turns: int, dimensions: int, seed: int, exact_scan_bytes: int = EXACT_SCAN_BYTES
) -> tuple[VectorIndex, np.ndarray]:
    """An index of `turns` random vectors, and those vectors by message id (from 1)."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((turns + 1, dimensions)).astype(np.float32)
    index = VectorIndex(exact_scan_bytes=exact_scan_bytes)
    for message_id in range(1, turns + 1):
        assert index.add(message_id, vectors[message_id])
    return index, vectors


def _near(vector: np.ndarray, similarity: float, rng: np.random.Generator) -> np.ndarray:
    """`vector`'s direction plus noise, at about `similarity` cosine to it."""
    noise = np.sqrt(1 / similarity**2 - 1) / np.sqrt(len(vector))
    unit = vector / np.linalg.norm(vector)
    return (unit + noise * rng.standard_normal(len(vector))).astype(np.float32)


def test_a_long_scene_searched_by_sign_bits_then_cosine_finds_what_the_exact_search_finds() -> None:
    # Searched exactly up to 4,096 turns of 384 dimensions (the default holds 21,845).
    exact_turns = 4096
    turns = 3 * exact_turns
    index, vectors = _planted_scene(turns, 384, seed=11, exact_scan_bytes=exact_turns * 384 * 4)
    rng = np.random.default_rng(12)
    for planted in rng.choice(np.arange(100, turns - 100), size=20, replace=False):
        # Five turns planted near the question (cosine 0.75 to 0.35; the nearest of the
        # random turns are at about 0.2): they are the nearest five.
        question = _near(vectors[planted], 0.8, rng)
        neighbours = [int(planted) - 2 * k for k in range(5)]
        for k, message_id in enumerate(neighbours):
            assert index.add(message_id, _near(question, 0.75 - 0.1 * k, rng))
        before_id = int(planted) + 1 + int(rng.integers(0, 50))
        exact = index.search(question, before_id=before_id, limit=5, exact=True)
        by_bits = index.search(question, before_id=before_id, limit=5)
        assert sorted(s.message_id for s in exact) == sorted(neighbours)
        assert by_bits == exact
        # The same search again gives the same answer, in the same order.
        assert index.search(question, before_id=before_id, limit=5) == by_bits
    # The bits follow the vectors when later turns are forgotten and others added: each turn
    # is found by its own vector (it would not be among the nearest by bits otherwise).
    index.remove_from(turns // 2)
    assert index.add(turns, vectors[turns]) and len(index) > exact_turns
    for message_id in (1, turns // 4, turns // 2 - 1, turns):
        found = index.search(vectors[message_id], before_id=turns + 1, limit=1)
        assert found[0].message_id == message_id and found[0].similarity > 0.999


def test_a_scene_up_to_the_exact_scan_length_is_searched_exactly() -> None:
    turns = 4096
    index, vectors = _planted_scene(turns, 64, seed=21, exact_scan_bytes=turns * 64 * 4)
    rng = np.random.default_rng(22)
    for _ in range(10):
        # A question near nothing in particular: the bits would rank it differently.
        question = rng.standard_normal(64).astype(np.float32)
        found = index.search(question, before_id=turns, limit=8)
        unit = question / np.linalg.norm(question)
        cosines = {
            i: float(vectors[i] @ unit / np.linalg.norm(vectors[i])) for i in range(1, turns)
        }
        nearest = sorted(cosines, key=lambda i: (-cosines[i], -i))[:8]
        assert [s.message_id for s in found] == nearest
        assert [s.similarity for s in found] == pytest.approx([cosines[i] for i in nearest])


def test_fusion_puts_a_turn_both_rankings_found_first_and_keeps_each_ones_own() -> None:
    lexical = [Hit(10, 7.5, ("나비",)), Hit(20, 3.0, ("축제",)), Hit(30, 1.0, ("비",))]
    similar = [Similar(40, 0.9), Similar(20, 0.8), Similar(50, 0.1)]
    fused = fuse(lexical, similar, limit=4)
    assert [f.message_id for f in fused] == [20, 10, 40, 30]
    assert fused[0].score == pytest.approx(1 / (RRF_K + 2) * 2)
    assert (fused[0].matched, fused[0].similarity) == (("축제",), 0.8)
    assert (fused[1].matched, fused[1].similarity) == (("나비",), None)
    assert (fused[2].matched, fused[2].bm25, fused[2].similarity) == ((), 0.0, 0.9)
    assert fuse(lexical, [], limit=3) == fuse(lexical, [], limit=3)
    assert [f.message_id for f in fuse(lexical, [], limit=3)] == [10, 20, 30]
    # A tie goes to the turn whose words matched, then to the newer one.
    tied = fuse([Hit(5, 1.0, ("나비",))], [Similar(9, 0.5), Similar(7, 0.4)], limit=3)
    assert [f.message_id for f in tied] == [5, 9, 7]


def test_the_inspector_says_why_each_turn_came_back_by_words_meaning_or_both() -> None:
    from synatra_bot.prompt.recall import RecallNote
    from synatra_bot.prompt.report import PromptReport

    report = PromptReport(budget=4000, context_size=4096, max_new_tokens=96)
    report.recall = [
        RecallNote(7, "준", FACT, ("나비",), 1.75, 0.8312),
        RecallNote(9, "민지", FILLERS[0], (), 0.0, 0.4),
        RecallNote(12, "준", FILLERS[1], ("시험",), 2.0),
    ]
    english = report.to_text(korean=False)
    assert "#7 준 (matched 나비; score 1.8; similarity 0.83)" in english
    assert "#9 민지 (similarity 0.40)" in english
    assert "#12 준 (matched 시험; score 2.0)" in english
    korean = report.to_text(korean=True)
    assert "#7 준 (일치: 나비, 점수 1.8, 의미 유사도 0.83)" in korean
    assert "#9 민지 (의미 유사도 0.40)" in korean


# --- the client ------------------------------------------------------------------------------


def test_the_embeddings_address_takes_a_base_or_a_v1_url() -> None:
    for base in ("http://h:8081", "http://h:8081/", "http://h:8081/v1"):
        assert embeddings_url(base) == "http://h:8081/v1/embeddings"


async def test_a_server_answering_nonsense_or_refusing_gives_no_vectors() -> None:
    from aiohttp import web

    answers = [
        web.json_response({"data": [{"index": 0, "embedding": [0.1, "x"]}]}),
        web.json_response({"data": []}),
        web.json_response({"data": [{"index": 0, "embedding": [float("nan")]}]}),
        web.json_response({"error": "too long"}, status=400),
        web.json_response({"error": "busy"}, status=503),
        web.json_response({"data": [{"index": 0, "embedding": [1, 2]}]}),
    ]
    seen = []

    async def handler(request):
        seen.append((request.headers.get("Authorization"), await request.json()))
        return answers[len(seen) - 1]

    async with loopback_app("/v1/embeddings", handler) as url:
        client = EmbeddingsClient(url, model="bge-m3", api_key="sk-embed-secret")
        try:
            for _ in range(3):
                with pytest.raises(EmbeddingsUnavailable) as bad:
                    await client.embed(["나비"], timeout_s=5)
                assert "sk-embed-secret" not in str(bad.value)
            with pytest.raises(EmbeddingsRefused):
                await client.embed(["나비"], timeout_s=5)
            with pytest.raises(EmbeddingsUnavailable) as busy:
                await client.embed(["나비"], timeout_s=5)
            assert not isinstance(busy.value, EmbeddingsRefused)
            assert await client.embed(["나비" * 2000], timeout_s=5) == [[1.0, 2.0]]
        finally:
            await client.close()
    assert seen[0] == (
        "Bearer sk-embed-secret",
        {"model": "bge-m3", "input": ["나비"], "encoding_format": "float"},
    )
    assert len(seen[-1][1]["input"][0]) == 512  # a long turn is cut before it is sent


# --- recall with the stand-in ------------------------------------------------------------------


async def _recall(recall: TurnRecall, session_id: int, query: str, before_id: int):
    return await recall.recall(
        session_id=session_id, query=query, before_id=before_id, budget=500, count=len
    )


async def _vector_rows(sessions) -> dict[int, str]:
    async with sessions() as session:
        rows = (await session.execute(select(MessageVector.message_id, MessageVector.model))).all()
    return {int(i): str(m) for i, m in rows}


async def test_meaning_recalls_what_shares_no_word_and_edits_and_deletes_keep_vectors_true(
    sessions, korean
) -> None:
    session_id, ids = await _scene(sessions, [FACT, *FILLERS, *FILLERS, *FILLERS])
    embedder = ConceptEmbedder()
    embeddings = TurnEmbeddings(sessions, embedder, query_timeout_s=5)
    recall = TurnRecall(sessions, terms=korean, embeddings=embeddings)
    try:
        await _recall(recall, session_id, "냥이", ids[-1])
        await recall.settled()
        assert await _vector_rows(sessions) == dict.fromkeys(ids, "concepts-v1")
        # "냥이" shares no word with the fact: only its meaning finds it.
        block = await _recall(recall, session_id, "요즘 냥이는 잘 지내?", ids[-1])
        assert block is not None and block.notes[0].message_id == ids[0]
        assert block.notes[0].matched == () and block.notes[0].similarity > 0.8
        assert len(block.notes) <= VECTOR_CANDIDATES
        # Found by both: its words and its meaning.
        both = await _recall(recall, session_id, "나비한테서 연락 왔어?", ids[-1])
        assert both is not None
        fact = next(n for n in both.notes if n.message_id == ids[0])
        assert fact.matched == ("나비",) and fact.similarity is not None

        await repo.update_message(sessions, message_id=ids[0], content="우리 강아지는 초코야.")
        await recall.turns_changed(session_id, ids[0])
        await recall.settled()
        changed = await _recall(recall, session_id, "요즘 냥이는 잘 지내?", ids[-1])
        assert changed is None or ids[0] not in [n.message_id for n in changed.notes]
        stored = dict(await scene_vectors(sessions, session_id=session_id, model="concepts-v1"))
        assert list(from_blob(stored[ids[0]])[[0, 6]]) == [0.0, 2.0]  # the edited text's

        await repo.delete_messages(sessions, message_ids=[ids[0]])
        await recall.turns_changed(session_id, ids[0])
        await recall.settled()
        gone = await _recall(recall, session_id, "초코 보고 싶다", ids[-1])
        assert gone is None or ids[0] not in [n.message_id for n in gone.notes]
        assert len(await _vector_rows(sessions)) == len(ids)
    finally:
        await recall.close()


async def test_a_server_that_is_down_or_slow_leaves_the_prompt_to_the_words(
    sessions, korean, caplog
) -> None:
    session_id, ids = await _scene(sessions, [FACT, *FILLERS, *FILLERS])
    embedder = ConceptEmbedder()
    recall = TurnRecall(
        sessions,
        terms=korean,
        embeddings=TurnEmbeddings(sessions, embedder, query_timeout_s=0.05),
    )
    try:
        await _recall(recall, session_id, "나비", ids[-1])
        await recall.settled()
        with caplog.at_level(logging.WARNING, logger="synatra_bot.roleplay.embedded_recall"):
            slow = await _recall(recall, session_id, "나비는? 멈춰", ids[-1])
            embedder.down = True
            down = await _recall(recall, session_id, "나비를 봤어?", ids[-1])
        for block in (slow, down):
            assert block is not None and [n.message_id for n in block.notes] == [ids[0]]
            assert block.notes[0].similarity is None and block.notes[0].matched == ("나비",)
        assert caplog.text.count("this prompt recalls by words only") == 2
        assert "no answer within 0.05 s" in caplog.text

        # Turns stored while it is down wait for it; the next stored turn embeds them.
        more = await repo.add_messages(
            sessions,
            [repo.NewMessage(session_id=session_id, role="user", content="냥이 밥", author_id=42)],
        )
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="synatra_bot.roleplay.embedded_recall"):
            recall.turn_stored(session_id)
            await recall.settled()
            assert more[0].id not in await _vector_rows(sessions)
            embedder.down = False
            recall.turn_stored(session_id)
            await recall.settled()
        assert await _vector_rows(sessions) == dict.fromkeys([*ids, more[0].id], "concepts-v1")
        assert "gave no vectors" in caplog.text and "answers again" in caplog.text
    finally:
        await recall.close()


async def test_after_a_restart_vectors_are_read_back_while_prompts_use_the_words(
    sessions, caplog, monkeypatch
) -> None:
    from synatra_bot.roleplay import embedded_recall

    session_id, ids = await _scene(sessions, [FACT, *FILLERS, *FILLERS])
    first = TurnEmbeddings(sessions, ConceptEmbedder(), query_timeout_s=5)
    await first.similar(session_id=session_id, query="냥이", before_id=10**9, limit=3)
    await first.settled()
    await first.close()

    monkeypatch.setattr(embedded_recall, "LOAD_PAGE", 3)  # read back in several pages
    embedder = ConceptEmbedder()
    again = TurnEmbeddings(sessions, embedder, query_timeout_s=5)
    try:
        with caplog.at_level(logging.INFO, logger="synatra_bot.roleplay.embedded_recall"):
            reading = await again.similar(
                session_id=session_id, query="냥이", before_id=10**9, limit=3
            )
        assert reading is None and "vectors are being read: words only for now" in caplog.text
        await again.settled()
        found = await again.similar(session_id=session_id, query="냥이", before_id=10**9, limit=3)
        assert found is not None and found[0].message_id == ids[0]
        assert embedder.calls == [["냥이"]]  # the stored vectors were read, none made again
    finally:
        await again.close()


async def test_a_turn_the_server_refuses_is_not_sent_again(sessions) -> None:
    class Picky(ConceptEmbedder):
        async def embed(self, texts, *, timeout_s):
            self.calls.append(list(texts))
            if any("김치찌개" in text for text in texts):
                raise EmbeddingsRefused("HTTP 400")
            return await super().embed(texts, timeout_s=timeout_s)

    session_id, ids = await _scene(sessions, [FACT, *FILLERS])
    picky = Picky()
    embeddings = TurnEmbeddings(sessions, picky, query_timeout_s=5)
    try:
        await embeddings.similar(session_id=session_id, query="나비", before_id=999, limit=3)
        await embeddings.settled()
        stored = dict(await scene_vectors(sessions, session_id=session_id, model=picky.model))
        assert set(stored) == set(ids) and stored[ids[3]] == b""  # the refused one: empty
        calls = len(picky.calls)
        embeddings.turn_stored(session_id)
        await embeddings.settled()
        assert len(picky.calls) == calls
    finally:
        await embeddings.close()


async def test_existing_turns_are_embedded_in_the_background_with_progress(
    tmp_path, monkeypatch, caplog
) -> None:
    from synatra_bot.roleplay import embedded_recall

    url, old = await upgraded_from_0001(tmp_path, "0021")
    monkeypatch.setattr(embedded_recall, "CATCH_UP_MIN_TURNS", 1)
    async with opened(url) as sessions:
        embeddings = TurnEmbeddings(sessions, ConceptEmbedder(), query_timeout_s=5)
        with caplog.at_level(logging.INFO, logger="synatra_bot.roleplay.embedded_recall"):
            embeddings.start_catch_up()
            await embeddings.settled()
        await embeddings.close()
        stored = dict(await scene_vectors(sessions, session_id=old.session_id, model="concepts-v1"))
    assert old.player_turn_id in stored and old.reply_id in stored
    assert (
        "embedding the turns of 1 scenes" in caplog.text and "1 of 1 scenes embedded" in caplog.text
    )


async def test_upgrade_to_turn_vectors_keeps_every_scene(tmp_path) -> None:
    url, old = await upgraded_from_0001(tmp_path, "0021")
    async with opened(url) as sessions, sessions() as session:
        assert await session.scalar(select(func.count()).select_from(MessageVector)) == 0
    await assert_kept_down_and_up(url, "0021", old)


# --- against llama.cpp's llama-server --------------------------------------------------------


@pytest.fixture(scope="module")
def embedding_gguf(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not llama_cpp.is_built():
        pytest.fail(f"llama.cpp's server is not built: {llama_cpp.BUILD_HELP}")
    out = tmp_path_factory.mktemp("gguf") / "tiny-f32.gguf"
    subprocess.run(
        [
            *(sys.executable, str(llama_cpp.converter()), str(tiny_model_dir)),
            *("--outfile", str(out), "--outtype", "f32"),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return out


@contextlib.contextmanager
def embeddings_server(gguf: Path, log: Path):
    """llama-server serving `/v1/embeddings` for the tiny model (mean-pooled), its base URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [
        str(llama_cpp.server_binary()),
        *("-m", str(gguf), "--embeddings", "--pooling", "mean"),
        *("--host", "127.0.0.1", "--port", str(port)),
        *("--ctx-size", "2048", "--batch-size", "2048", "--ubatch-size", "2048"),
        *("--parallel", "1", "--threads", "2"),
    ]
    with running_process(args, f"{url}/health", log):
        yield url


@pytest.mark.slow
async def test_recall_with_llama_server_stores_vectors_fuses_and_falls_back_when_it_dies(
    sessions, korean, embedding_gguf, tmp_path, caplog
) -> None:
    session_id, ids = await _scene(sessions, [FACT, *FILLERS, *FILLERS, *FILLERS])
    with contextlib.ExitStack() as server:
        url = server.enter_context(embeddings_server(embedding_gguf, tmp_path / "server.log"))
        client = EmbeddingsClient(url, model="tiny-embed")
        recall = TurnRecall(
            sessions,
            terms=korean,
            embeddings=TurnEmbeddings(sessions, client, query_timeout_s=10),
        )
        try:
            await _recall(recall, session_id, "나비", ids[-1])
            await recall.settled()
            stored = dict(await scene_vectors(sessions, session_id=session_id, model="tiny-embed"))
            assert set(stored) == set(ids)
            assert {len(blob) for blob in stored.values()} == {64 * 4}  # the model's width
            # A random model's similarities mean nothing, but a text's own vector is nearest
            # to itself: the turns that say the query word for word are found by both.
            block = await _recall(recall, session_id, FILLERS[1], ids[-1])
            assert block is not None
            same = [n for n in block.notes if n.text == FILLERS[1]]
            assert same and all(n.matched and n.similarity is not None for n in same)
            assert max(n.similarity or 0 for n in same) > 0.99

            server.close()  # the server is gone
            with caplog.at_level(logging.WARNING, logger="synatra_bot.roleplay.embedded_recall"):
                words = await _recall(recall, session_id, "나비한테서 편지 왔어?", ids[-1])
            assert words is not None and ids[0] in [n.message_id for n in words.notes]
            assert all(n.similarity is None for n in words.notes)
            assert "this prompt recalls by words only" in caplog.text
        finally:
            await recall.close()


@pytest.mark.slow
async def test_recall_by_meaning_end_to_end_through_the_fake_discord(
    start_bot, tokenizer, embedding_gguf, tmp_path
) -> None:
    from synatra_bot.engine.scripted import ScriptedEngine
    from tests.test_recall import ASKED, PLANTED, context_shown, play_until_trimmed

    engine = ScriptedEngine("그래, 알겠어. 오늘도 재미있었어.", tokenizer=tokenizer)
    with embeddings_server(embedding_gguf, tmp_path / "server.log") as url:
        env = {"CONTEXT_SIZE": "1024", "MAX_NEW_TOKENS": "32"}
        env |= {"EMBEDDINGS_URL": url, "EMBEDDINGS_MODEL": "tiny-embed"}
        env |= {"EMBEDDINGS_TIMEOUT_S": "10"}
        async with start_bot(engine=engine, env=env) as harness:
            s = harness.scenario
            recall = harness.bot.core.recall
            assert isinstance(recall, TurnRecall) and recall.embeddings is not None
            player, planted_id = await play_until_trimmed(harness, engine)
            session = await repo.get_active_session(harness.sessions, channel_id=s.general.id)
            turns = await repo.recent_history(harness.sessions, session_id=session.id, limit=200)
            stored = dict(
                await scene_vectors(harness.sessions, session_id=session.id, model="tiny-embed")
            )
            assert {m.id for m in turns} <= set(stored)  # every turn shown was embedded

            await harness.reply_to(s.general, player, ASKED)
            prompt = engine.prompts[-1]
            assert RECALL_HEADING in prompt and PLANTED in prompt.split(RECALL_HEADING)[1]
            sent = harness.bot.turns.sent.last(session.id)
            assert sent is not None
            # The words found the fact (a tie in the fused ranking goes to them).
            assert planted_id in [n.message_id for n in sent.report.recall]
            text, attached = await context_shown(harness, "ko")
            assert f"#{planted_id} " in text and "일치: 나비" in text
            assert PLANTED in attached.split(RECALL_HEADING)[1]


def _preview_args(tmp_path, newest: str, *more: str):
    import argparse
    import json

    from synatra_bot.prompt.preview import configure_parser
    from tests.prompt_helpers import v2_card

    card = tmp_path / "minji.json"
    card.write_text(json.dumps(v2_card(), ensure_ascii=False), encoding="utf-8")
    lines = [{"role": "user", "name": "준", "content": FACT}]
    for i in range(60):
        role = "user" if i % 2 else "assistant"
        lines.append({"role": role, "name": "준" if i % 2 else "민지", "content": FILLERS[i % 4]})
    lines.append({"role": "user", "name": "준", "content": newest})
    history = tmp_path / "chat.jsonl"
    history.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines), "utf-8")
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    return parser.parse_args(
        [
            *("--card", str(card), "--history", str(history)),
            *("--context", "1024", "--max-new-tokens", "64", *more),
        ]
    )


def test_the_preview_recalls_by_words_when_its_embeddings_server_is_down(
    tmp_path, tokenizer_dir, capsys
) -> None:
    from synatra_bot.prompt.preview import run_preview

    dead = f"http://127.0.0.1:{free_port()}"
    args = _preview_args(
        tmp_path,
        "축제에서 만난 나비한테 밥 줬어?",
        *("--tokenizer", str(tokenizer_dir), "--embeddings-url", dead),
        *("--embeddings-model", "tiny-embed"),
    )
    assert run_preview(args, default_model_id="unused") == 0
    printed = capsys.readouterr()
    assert "gave no vectors" in printed.err and "recalling by words only" in printed.err
    assert f"준: {FACT}" in printed.out.split(RECALL_HEADING)[1]
    no_model = _preview_args(tmp_path, "나비", "--embeddings-url", dead)
    assert run_preview(no_model, default_model_id="unused") == 2
    assert "--embeddings-url needs --embeddings-model" in capsys.readouterr().err


@pytest.mark.slow
def test_the_preview_fuses_meaning_from_llama_server_as_the_bot_does(
    tmp_path, tokenizer_dir, embedding_gguf, capsys
) -> None:
    import re

    from synatra_bot.prompt.preview import run_preview

    with embeddings_server(embedding_gguf, tmp_path / "server.log") as url:
        # Its own vector is nearest to itself: the filler said again word for word is found
        # by meaning as well as by its words.
        args = _preview_args(
            tmp_path,
            FILLERS[1],
            *("--tokenizer", str(tokenizer_dir), "--embeddings-url", url),
            *("--embeddings-model", "tiny-embed"),
        )
        assert run_preview(args, default_model_id="unused") == 0
    printed = capsys.readouterr()
    assert RECALL_HEADING in printed.out and "gave no vectors" not in printed.err
    assert re.search(r"\(matched [^)]*; similarity (0\.99|1\.00)\)", printed.err), printed.err
