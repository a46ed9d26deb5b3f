"""CHARX cards: a zip holding `card.json` at its root and the files its assets point to.

The archive is untrusted. Before anything is inflated its directory is checked: the number of
entries, each entry's declared size and compression ratio, the total size, and each name (no
absolute paths, no `..`, no links or other special files, no encryption, no duplicates).
Only `card.json` and the icon that becomes the avatar are ever inflated, each read within its
own bound. Anything wrong is a CardError naming it.
"""

from __future__ import annotations

import io
import stat
import struct
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from synatra_bot.errors import CardError

#: A zip begins with a local file header (or, when empty, the end of its directory).
ZIP_SIGNATURES = (b"PK\x03\x04", b"PK\x05\x06")
CARD_JSON = "card.json"
#: Where RisuAI keeps a card's scripts (and other module data) inside a CHARX.
MODULE_FILE = "module.risum"
MAX_CHARX_BYTES = 32 * 1024 * 1024
MAX_ENTRIES = 1024
#: What all entries may declare together, and one entry alone, once inflated.
MAX_TOTAL_BYTES = 64 * 1024 * 1024
MAX_ENTRY_BYTES = 16 * 1024 * 1024
#: Inflated / compressed size an entry may have (deflate reaches about 1000 on zeros); checked
#: for entries above RATIO_FLOOR bytes, where a high ratio is what a bomb looks like.
MAX_RATIO = 100
RATIO_FLOOR = 1024 * 1024
#: Bytes of central directory per entry allowed: names, extra fields and comments included.
_DIRECTORY_BYTES_PER_ENTRY = 1024
_EOCD = b"PK\x05\x06"
_EOCD_SIZE = 22
_ZIP64_LOCATOR = b"PK\x06\x07"
_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
#: URI schemes of files inside the archive (the spec's spelling, and the common misspelling).
_EMBEDDED_SCHEMES = ("embeded://", "embedded://")
#: Icons tried for the avatar, at most: each is inflated and decoded.
MAX_ICON_TRIES = 4


def is_charx(data: bytes) -> bool:
    """Whether `data` starts like a zip archive."""
    return data.startswith(ZIP_SIGNATURES)


def _bad(reason: str) -> CardError:
    return CardError(f"invalid character card: {reason}", reason=reason)


def _shown(name: str) -> str:
    """An entry name as an error message quotes it: short and printable."""
    text = name if len(name) <= 80 else name[:79] + "…"
    return repr(text)


@dataclass(frozen=True)
class CharxArchive:
    """An opened CHARX whose directory passed every check; `card_json` is already read."""

    card_json: bytes
    _zip: zipfile.ZipFile
    _files: Mapping[str, zipfile.ZipInfo]

    def embedded(self, uri: str, *, limit: int) -> bytes | None:
        """The bytes of the file an `embeded://path` URI names, or None where the URI is not
        one, names no file of the archive, or the file is over `limit` bytes."""
        path = embedded_path(uri)
        info = self._files.get(path) if path is not None else None
        if info is None or info.file_size > limit:
            return None
        return _read(self._zip, info, limit)

    def head(self, path: str, *, limit: int) -> bytes | None:
        """At most the first `limit` bytes of the file at `path`; None where there is none
        or it cannot be read (RisuAI's `module.risum` is read only as far as its data)."""
        info = self._files.get(path)
        if info is None:
            return None
        try:
            return _read_head(self._zip, info, limit)
        except CardError:
            return None


def embedded_path(uri: Any) -> str | None:
    """The path inside the archive an asset URI points to, or None for other URIs."""
    if not isinstance(uri, str):
        return None
    for scheme in _EMBEDDED_SCHEMES:
        if uri.startswith(scheme):
            return uri[len(scheme) :]
    return None


def icon_assets(assets: list[dict[str, Any]] | None) -> Iterator[dict[str, Any]]:
    """The card's icon assets as the spec ranks them: the one named "main" first, then the
    others in order."""
    icons = [a for a in assets or [] if a.get("type") == "icon"]
    yield from (a for a in icons if a.get("name") == "main")
    yield from (a for a in icons if a.get("name") != "main")


def open_charx(data: bytes, *, max_card_bytes: int) -> CharxArchive:
    """Check a CHARX archive and read its `card.json` (at most `max_card_bytes`)."""
    if len(data) > MAX_CHARX_BYTES:
        raise _bad(f"CHARX is {len(data)} bytes, the limit is {MAX_CHARX_BYTES}")
    _check_directory_record(data)
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, struct.error, ValueError, OSError) as exc:
        raise _bad(f"CHARX is not a readable zip archive ({exc})") from None
    files = _checked_files(infos)
    card = files.get(CARD_JSON)
    if card is None:
        raise _bad(f"CHARX has no {CARD_JSON} at the root of the archive")
    if card.file_size > max_card_bytes:
        raise _bad(f"{CARD_JSON} is {card.file_size} bytes, the limit is {max_card_bytes}")
    card_json = _read(archive, card, max_card_bytes)
    if card_json is None:
        raise _bad(f"{CARD_JSON} is larger than its zip entry declares")
    return CharxArchive(card_json, archive, files)


def _check_directory_record(data: bytes) -> None:
    """Refuse, before the zip module reads the directory, one that declares too many entries
    or too large a directory, or a ZIP64 directory (no card needs one)."""
    tail_start = max(0, len(data) - _EOCD_SIZE - 0xFFFF)
    at = data.rfind(_EOCD, tail_start)
    if at < 0 or at + _EOCD_SIZE > len(data):
        raise _bad("CHARX is not a readable zip archive (no end of central directory)")
    entries, directory_size = struct.unpack("<10xHI6x", data[at : at + _EOCD_SIZE])
    if (at >= 20 and data[at - 20 : at - 16] == _ZIP64_LOCATOR) or entries == 0xFFFF:
        raise _bad("CHARX is a ZIP64 archive, which is not supported")
    if entries > MAX_ENTRIES:
        raise _bad(f"CHARX has {entries} entries, the limit is {MAX_ENTRIES}")
    if directory_size > MAX_ENTRIES * _DIRECTORY_BYTES_PER_ENTRY:
        raise _bad(f"CHARX has a {directory_size}-byte directory, which is too large")


def _checked_files(infos: list[zipfile.ZipInfo]) -> dict[str, zipfile.ZipInfo]:
    """The archive's regular files by name, once every entry passed the checks."""
    if len(infos) > MAX_ENTRIES:
        raise _bad(f"CHARX has {len(infos)} entries, the limit is {MAX_ENTRIES}")
    seen: set[str] = set()
    files: dict[str, zipfile.ZipInfo] = {}
    total = 0
    for info in infos:
        name = info.orig_filename
        _check_name(name)
        if name in seen:
            raise _bad(f"CHARX has two entries named {_shown(name)}")
        seen.add(name)
        if _is_directory(info):
            continue
        _check_entry(info, name)
        total += info.file_size
        if total > MAX_TOTAL_BYTES:
            raise _bad(f"CHARX inflates to more than {MAX_TOTAL_BYTES} bytes in all")
        files[name] = info
    return files


def _check_name(name: str) -> None:
    shown = _shown(name)
    if "\0" in name or not name:
        raise _bad(f"CHARX has an entry with an invalid name {shown}")
    if name.startswith(("/", "\\")) or (name[0].isalpha() and name[1:2] == ":"):
        raise _bad(f"CHARX entry {shown} has an absolute path")
    parts = name.replace("\\", "/").rstrip("/").split("/")
    if ".." in parts:
        raise _bad(f"CHARX entry {shown} points outside the archive (..)")
    if any(part in ("", ".") for part in parts):
        raise _bad(f"CHARX entry {shown} has an empty or '.' path segment")


def _is_directory(info: zipfile.ZipInfo) -> bool:
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode) if info.create_system == 3 else 0
    return info.orig_filename.endswith("/") and kind in (0, stat.S_IFDIR) and not info.file_size


def _check_entry(info: zipfile.ZipInfo, name: str) -> None:
    shown = _shown(name)
    if info.create_system == 3:  # Unix: the file type is in the high bits of the attributes
        kind = stat.S_IFMT(info.external_attr >> 16)
        if kind == stat.S_IFLNK:
            raise _bad(f"CHARX entry {shown} is a symbolic link, not a regular file")
        if kind not in (0, stat.S_IFREG):
            raise _bad(f"CHARX entry {shown} is not a regular file")
    if info.orig_filename.endswith("/"):
        raise _bad(f"CHARX entry {shown} is not a regular file")
    if info.flag_bits & 0x1:
        raise _bad(f"CHARX entry {shown} is encrypted")
    if info.compress_type not in _METHODS:
        raise _bad(f"CHARX entry {shown} uses an unsupported compression method")
    if info.file_size > MAX_ENTRY_BYTES:
        limit = MAX_ENTRY_BYTES
        raise _bad(f"CHARX entry {shown} is {info.file_size} bytes, the limit is {limit}")
    if info.file_size > RATIO_FLOOR and info.file_size > MAX_RATIO * max(info.compress_size, 1):
        ratio = info.file_size // max(info.compress_size, 1)
        raise _bad(
            f"CHARX entry {shown} inflates {ratio} times its compressed size "
            f"(limit {MAX_RATIO}): a zip bomb"
        )


def _read(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes | None:
    """An entry's bytes, never more than `limit` inflated; None when it holds more."""
    data = _read_head(archive, info, limit + 1)
    return data if len(data) <= limit else None


def _read_head(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    """At most the first `limit` bytes of an entry."""
    try:
        with archive.open(info) as entry:
            data = entry.read(limit)
    except (
        zipfile.BadZipFile,
        zlib.error,
        struct.error,
        NotImplementedError,
        RuntimeError,
        ValueError,
        EOFError,
        OSError,
    ) as exc:
        raise _bad(f"CHARX entry {_shown(info.orig_filename)} cannot be read ({exc})") from None
    return data
