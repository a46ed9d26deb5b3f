"""Builders for character cards and PNG files used by the prompt tests."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
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
