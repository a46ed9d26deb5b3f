"""Builders for character cards, PNG files and a Korean group scene used by the prompt tests."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


def png_chunk(ctype: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(body, zlib.crc32(ctype))
    return struct.pack(">I4s", len(body), ctype) + body + struct.pack(">I", crc)


def tiny_png(width: int = 4, height: int = 4) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


def png_with_text(entries: dict[str, bytes], *, image: bytes | None = None) -> bytes:
    """A PNG with tEXt chunks inserted before IEND."""
    image = image if image is not None else tiny_png()
    iend = image.rindex(b"IEND") - 4
    chunks = b"".join(png_chunk(b"tEXt", k.encode() + b"\0" + v) for k, v in entries.items())
    return image[:iend] + chunks + image[iend:]


def b64_json(obj: Any) -> bytes:
    return base64.b64encode(json.dumps(obj, ensure_ascii=False).encode())


def v2_card(**data: Any) -> dict[str, Any]:
    base = {
        "name": "민지",
        "description": "{{char}}는 서울에 사는 대학생이다.",
        "personality": "밝고 수다스럽다",
        "scenario": "카페에서 {{user}}를 만난다",
        "first_mes": "안녕하세요, {{user}}님!",
        "mes_example": "<START>\n{{user}}: 안녕\n{{char}}: 반가워요!",
        "creator_notes": "",
        "system_prompt": "",
        "post_history_instructions": "",
        "alternate_greetings": ["어서 와요!"],
        "tags": ["로맨스"],
        "creator": "tester",
        "character_version": "1.0",
        "extensions": {},
    }
    base.update(data)
    return {"spec": "chara_card_v2", "spec_version": "2.0", "data": base}


# --- a group scene in Korean, turn by turn (the prefix tests and benchmarks/prefix.py) --------

#: Sentences a reply is drawn from; several name things the scene's lorebook knows.
REPLY_SENTENCES = (
    "민지는 책장 사이로 천천히 걸어 나오며 조용히 웃었다.",
    "오래된 시계탑의 종소리가 도서관 창문을 가볍게 흔들었다.",
    "서준은 코트 주머니에서 낡은 편지 한 장을 꺼내 탁자 위에 내려놓았다.",
    "창밖에서는 가을비가 은행나무 잎을 적시고 있었다.",
    '"그 이야기는 조금 더 생각해 봐야 할 것 같아요."',
    '"정말 그렇게 생각해? 나는 아직 잘 모르겠어."',
    "고양이 한 마리가 계단 아래에서 고개를 내밀고 두 사람을 바라보았다.",
    "촛불이 흔들리자 벽에 비친 그림자가 길게 늘어졌다.",
    "멀리서 기차가 지나가는 소리가 희미하게 들려왔다.",
    '"잠깐만요, 지하실 문이 열려 있었던가요?"',
    "따뜻한 차 냄새가 방 안에 천천히 퍼졌다.",
    "그는 잠시 말을 멈추고 창가에 기대어 숨을 골랐다.",
)
#: What players say to the character they address; some name lorebook keys.
PLAYER_LINES = (
    "오늘은 비가 많이 오네. 우산 있어?",
    "도서관 뒤편 정원에 가 본 적 있어?",
    "이 편지, 누가 보낸 건지 알아?",
    "시계탑이 왜 멈췄는지 궁금하지 않아?",
    "배고프다. 뭐라도 먹으러 갈까?",
    "고양이가 또 따라왔어. 이름을 지어 줄까?",
    "지하실에서 이상한 소리가 났어.",
    "그냥 오늘 하루가 좀 길었어.",
    "아까 그 이야기 계속해 줄래?",
    "창밖을 봐, 무지개가 떴어!",
)


def scene_cards() -> list[Any]:
    """The cast of two characters (one with its own lorebook)."""
    from synatra_bot.prompt.cards import CharacterCard, SpeechLevel

    minji = CharacterCard(
        name="민지",
        description="{{char}}는 오래된 시립 도서관의 사서다. 책과 차를 좋아하고 비밀이 많다. " * 4,
        personality="조용하고 다정하지만 장난기가 있다.",
        scenario="비 오는 저녁, {{user}}와 친구들이 도서관을 찾아온다.",
        example_messages="<START>\n{{user}}: 안녕하세요\n{{char}}: 어서 오세요, 오늘도 오셨네요!",
        speech_level=SpeechLevel.FORMAL,
        character_book={
            "entries": [
                {"keys": ["지하실"], "content": "{{char}}만 도서관 지하실의 열쇠를 가지고 있다."},
                {"keys": ["고양이"], "content": "도서관 고양이의 이름은 보리다."},
            ]
        },
    )
    seojun = CharacterCard(
        name="서준",
        description="{{char}}는 도서관 근처에 사는 젊은 탐정이다. 관찰력이 뛰어나다. " * 4,
        personality="냉소적이지만 속은 따뜻하다.",
        scenario="{{char}}는 도서관에 얽힌 사건을 조사하고 있다.",
        speech_level=SpeechLevel.INFORMAL,
    )
    return [minji, seojun]


def scene_lorebook() -> Any:
    """The channel's lorebook: one constant entry and entries keyed on the scene's things."""
    from synatra_bot.prompt.lorebook import Lorebook, LoreEntry

    return Lorebook(
        [
            LoreEntry(keys=[], content="이 도시는 일 년 내내 비가 자주 온다.", constant=True),
            LoreEntry(
                keys=["시계탑"], content="시계탑은 십 년 전 화재 이후 멈춰 있다.", name="시계탑"
            ),
            LoreEntry(keys=["편지"], content="편지는 사라진 전임 사서가 남긴 것이다.", name="편지"),
            LoreEntry(keys=["정원"], content="정원에는 백 년 된 은행나무가 있다.", name="정원"),
            LoreEntry(
                keys=["은행나무"],
                content="은행나무 아래에 무언가 묻혀 있다는 소문이 있다.",
                name="은행나무",
            ),
            LoreEntry(keys=["기차"], content="마지막 기차는 밤 열한 시에 떠난다.", name="기차"),
            LoreEntry(
                keys=["무지개"],
                content="무지개가 뜨는 날에는 도서관이 일찍 문을 닫는다.",
                name="무지개",
            ),
        ]
    )


def scene_players() -> list[Any]:
    from synatra_bot.prompt.builder import ScenePlayer

    return [
        ScenePlayer(101, "준", "{{user}}는 호기심 많은 대학생이다. 민지와 오래 알고 지냈다."),
        ScenePlayer(202, "하늘", "{{user}}는 말수가 적은 사진가다."),
    ]


@dataclass(frozen=True)
class SceneTurn:
    """One turn of the scene: the history up to the player's new message and who answers."""

    history: tuple[Any, ...]
    speaker: int  # index into the cast
    player: int  # index into the players
    reply: str


def scene_turns(turns: int, *, seed: int = 0) -> list[SceneTurn]:
    """A scene where two players take turns, each addressing the two characters in turn, and
    the addressed character answers in 3 to 7 sentences (deterministic for a seed)."""
    import random

    from synatra_bot.prompt.builder import HistoryMessage

    rng = random.Random(seed)
    cast, players = scene_cards(), scene_players()
    history: list[Any] = []
    out = []
    for turn in range(turns):
        player = turn % len(players)
        speaker = (turn // len(players)) % len(cast)
        line = f"{cast[speaker].name}, {rng.choice(PLAYER_LINES)}"
        history.append(
            HistoryMessage(
                "user",
                players[player].name,
                line,
                message_id=len(history) + 1,
                author_id=players[player].author_id,
            )
        )
        reply = " ".join(rng.choice(REPLY_SENTENCES) for _ in range(rng.randint(3, 7)))
        out.append(SceneTurn(tuple(history), speaker, player, reply))
        history.append(
            HistoryMessage("assistant", cast[speaker].name, reply, message_id=len(history) + 1)
        )
    return out


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading ids `a` and `b` share."""
    size = min(len(a), len(b))
    for index in range(size):
        if a[index] != b[index]:
            return index
    return size


def play_scene(
    builder: Any,
    turns: Sequence[SceneTurn],
    *,
    cast: Sequence[Any] | None = None,
    recall: Any = None,
    **options: Any,
) -> list[Any]:
    """Build every turn of the scene as the core does: the addressed character answers the
    player who just spoke; the players are those who have spoken so far, the starter first;
    each turn starts where the previous prompt's history did (`options` go to PromptOptions).
    `recall(history, start_id)` gives the turn's recall block, as the core asks for one."""
    from synatra_bot.prompt.builder import PromptOptions

    cast = list(cast) if cast is not None else scene_cards()
    players, book = scene_players(), scene_lorebook()
    start_id = None
    built = []
    for turn in turns:
        spoken = [p for p in players if any(m.author_id == p.author_id for m in turn.history)]
        prompt = builder.build(
            card=cast[turn.speaker],
            cast=cast,
            history=turn.history,
            user_name=players[turn.player].name,
            players=spoken,
            scene_user_name=players[0].name,
            channel_lorebook=book,
            options=PromptOptions(
                history_start_id=start_id,
                recall=recall(turn.history, start_id) if recall else None,
                **options,
            ),
        )
        start_id = prompt.history_start_id
        built.append(prompt)
    return built


def prefix_reuse(previous: Any, current: Any) -> float:
    """The share of `previous` prompt's ids that `current` starts with (an engine's reusable
    cached prefix)."""
    return common_prefix(previous.input_ids, current.input_ids) / len(previous.input_ids)
