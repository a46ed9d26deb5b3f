"""PNG chunks without decoding the image: read and replace a card's text chunks."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Collection
from dataclasses import dataclass

from synatra_bot.errors import CardError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Largest text chunk we accept: base64 of a 1 MiB card is about 1.4 MiB.
MAX_TEXT_CHUNK_BYTES = 2 * 1024 * 1024
#: Largest image a card may declare (width * height): a bigger one is not a card anybody made.
#: Its image is decoded as the avatar only under the tighter limit of avatars.py.
MAX_AVATAR_PIXELS = 8192 * 8192
_TEXT_TYPES = (b"tEXt", b"iTXt", b"zTXt")


@dataclass(frozen=True)
class Chunk:
    type: bytes
    data: bytes


def _fail(reason: str) -> CardError:
    return CardError(f"invalid PNG card: {reason}", reason=reason)


def iter_chunks(data: bytes, *, read: Collection[str] | None = None) -> list[Chunk]:
    """Split a PNG into chunks, checking lengths, CRCs of text chunks, IHDR and IEND.

    `read` names the text chunks the caller will read: only those are held to the text chunk
    size limit (others, like RisuAI's private data, are carried along; the file's own size
    limit bounds them)."""
    if not data.startswith(PNG_SIGNATURE):
        raise _fail("not a PNG file (bad signature)")
    chunks: list[Chunk] = []
    view = memoryview(data)
    pos = len(PNG_SIGNATURE)
    while True:
        if pos + 8 > len(data):
            raise _fail("file is truncated (no IEND chunk)")
        length, ctype = struct.unpack(">I4s", view[pos : pos + 8])
        if length > len(data) - pos - 12:
            raise _fail(f"file is truncated inside a {_name(ctype)} chunk")
        start = pos + 8
        end = start + length
        if (
            ctype in _TEXT_TYPES
            and length > MAX_TEXT_CHUNK_BYTES
            and (read is None or _keyword(view[start : start + 80]).lower() in read)
        ):
            raise _fail(f"{_name(ctype)} chunk of {length} bytes is too large")
        body = bytes(view[start:end])
        if ctype in _TEXT_TYPES or ctype == b"IHDR":
            (crc,) = struct.unpack(">I", view[end : end + 4])
            if zlib.crc32(body, zlib.crc32(ctype)) != crc:
                raise _fail(f"{_name(ctype)} chunk is corrupt (CRC mismatch)")
        if not chunks and ctype != b"IHDR":
            raise _fail("first chunk is not IHDR")
        chunks.append(Chunk(ctype, body))
        pos = end + 4
        if ctype == b"IEND":
            break
    width, height = struct.unpack(">II", chunks[0].data[:8]) if len(chunks[0].data) >= 8 else (0, 0)
    if width == 0 or height == 0:
        raise _fail("IHDR chunk is malformed")
    if width * height > MAX_AVATAR_PIXELS:
        raise _fail(f"image of {width}x{height} pixels is too large")
    return chunks


def _keyword(head: memoryview | bytes) -> str:
    return bytes(head).partition(b"\0")[0].decode("latin-1")


def _name(ctype: bytes) -> str:
    return ctype.decode("latin-1", "replace")


def text_chunks(
    chunks: list[Chunk], *, max_text_bytes: int, read: Collection[str] | None = None
) -> dict[str, bytes]:
    """The keyword -> text of tEXt/iTXt/zTXt chunks (compressed text inflated within a bound);
    with `read`, only those keywords (the rest is never inflated).

    Keywords are matched and returned in lower case, and where a keyword repeats the first
    chunk wins (as SillyTavern reads cards); later ones are never inflated."""
    found: dict[str, bytes] = {}
    for chunk in chunks:
        if chunk.type not in _TEXT_TYPES:
            continue
        keyword, sep, rest = chunk.data.partition(b"\0")
        if not sep:
            raise _fail(f"{_name(chunk.type)} chunk has no keyword separator")
        name = keyword.decode("latin-1").lower()
        if (read is not None and name not in read) or name in found:
            continue
        if chunk.type == b"tEXt":
            found[name] = rest
        elif chunk.type == b"zTXt":
            found[name] = _inflate(rest[1:], max_text_bytes)
        else:
            if len(rest) < 2:
                raise _fail("iTXt chunk is malformed")
            compressed, _method, tail = rest[0], rest[1], rest[2:]
            _lang, _, tail = tail.partition(b"\0")
            _translated, _, text = tail.partition(b"\0")
            found[name] = _inflate(text, max_text_bytes) if compressed else text
    return found


def _inflate(data: bytes, limit: int) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise _fail(f"compressed text chunk cannot be decompressed ({exc})") from None
    if len(out) > limit:
        raise _fail("compressed text chunk inflates beyond the size limit")
    return out


def _encode_chunk(ctype: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(body, zlib.crc32(ctype))
    return struct.pack(">I4s", len(body), ctype) + body + struct.pack(">I", crc)


def without_text(chunks: list[Chunk], keywords: frozenset[str]) -> bytes:
    """Re-serialise a PNG without the text chunks named in `keywords` (lower case; matched
    in any case)."""
    parts = [PNG_SIGNATURE]
    for chunk in chunks:
        if chunk.type in _TEXT_TYPES and _keyword(chunk.data).lower() in keywords:
            continue
        parts.append(_encode_chunk(chunk.type, chunk.data))
    return b"".join(parts)


def with_text(png: bytes, entries: dict[str, bytes]) -> bytes:
    """Insert tEXt chunks just before IEND of an already validated PNG."""
    chunks = iter_chunks(png)
    parts = [PNG_SIGNATURE]
    for chunk in chunks:
        if chunk.type == b"IEND":
            for keyword, text in entries.items():
                parts.append(_encode_chunk(b"tEXt", keyword.encode("latin-1") + b"\0" + text))
        parts.append(_encode_chunk(chunk.type, chunk.data))
    return b"".join(parts)
