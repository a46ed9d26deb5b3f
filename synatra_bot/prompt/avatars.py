"""Avatar images: decoded under a pixel limit, shrunk to 512 px and stored as PNG.

Uploads and card images are untrusted. Only PNG, JPEG, WebP and GIF are opened; the size an
image declares is checked before any pixel is decoded; of an animation only the first frame
is decoded (so its other frames cost nothing); and what is stored is a small PNG, which Discord
accepts for a webhook's avatar and a PNG card export can carry.
"""

from __future__ import annotations

import io

from synatra_bot.errors import ImageRejected

#: Longest side of a stored avatar, in pixels (Discord shows them at 128 px at most).
MAX_SIDE = 512
#: Most pixels an image may declare (width * height) before it is decoded: 64 MiB as RGBA.
MAX_PIXELS_SIDE = 4096
MAX_PIXELS = MAX_PIXELS_SIDE * MAX_PIXELS_SIDE
#: Largest PNG stored: a 512 px avatar of noise as RGBA is about this size.
MAX_PNG_BYTES = 1024 * 1024
FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
_KEPT_MODES = ("RGB", "RGBA", "L", "LA")


def _unreadable() -> ImageRejected:
    return ImageRejected("not a PNG, JPEG, WebP or GIF image that can be read")


def _too_many_pixels() -> ImageRejected:
    return ImageRejected(
        f"the image declares more than {MAX_PIXELS_SIDE}x{MAX_PIXELS_SIDE} pixels",
        key="error.image_pixels",
        side=MAX_PIXELS_SIDE,
    )


def normalise_avatar(data: bytes) -> bytes:
    """`data` as a PNG at most MAX_SIDE pixels a side, or ImageRejected saying why not.

    CPU-bound (up to a few hundred milliseconds): call it from a worker thread.
    """
    from PIL import Image, ImageOps

    try:
        # Reads the header only; Pillow refuses its own (much larger) pixel bombs here.
        opened = Image.open(io.BytesIO(data), formats=FORMATS)
        width, height = opened.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _too_many_pixels() from None
    except Exception:  # Pillow reports a malformed header with many exception types
        raise _unreadable() from None
    if width * height > MAX_PIXELS:
        raise _too_many_pixels()
    try:
        opened.draft(None, (MAX_SIDE * 2, MAX_SIDE * 2))  # JPEG: decode at a reduced scale
        image: Image.Image = opened
        if image.mode not in _KEPT_MODES:
            alpha = "A" in image.getbands() or "transparency" in image.info
            image = image.convert("RGBA" if alpha else "RGB")
        image.thumbnail((MAX_SIDE, MAX_SIDE))
        image = ImageOps.exif_transpose(image)
        out = io.BytesIO()
        image.save(out, format="PNG")
    except Exception:  # a truncated or corrupt body: OSError, ValueError, SyntaxError, ...
        raise _unreadable() from None
    png = out.getvalue()
    if len(png) > MAX_PNG_BYTES:
        raise ImageRejected(
            f"the avatar is {len(png)} bytes as PNG; the limit is {MAX_PNG_BYTES}",
            key="error.image_too_large",
            size=len(png),
            limit=MAX_PNG_BYTES,
        )
    return png


def card_avatar(image: bytes) -> bytes | None:
    """A card's image as a stored avatar, or None where it cannot be one (the card's text is
    still worth importing without it)."""
    try:
        return normalise_avatar(image)
    except ImageRejected:
        return None
