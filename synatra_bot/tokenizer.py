"""Synatra's tokenizer: loading it and the special token ids every layer agrees on."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

BOS_ID = 1
EOS_ID = 2
IM_END_ID = 32000
IM_START_ID = 32001
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
#: Ids that no text from users, cards, personas or lorebooks may ever produce.
FORBIDDEN_CONTENT_IDS = frozenset({BOS_ID, EOS_ID, IM_END_ID, IM_START_ID})
#: Generation stops at any of these.
STOP_IDS = (IM_END_ID, IM_START_ID, EOS_ID)
#: The text of the model's control tokens (BOS, EOS and the two ChatML markers).
CONTROL_TEXTS = (IM_START, IM_END, "<s>", "</s>")
#: A "<" that starts a special token's text inside content: the spot to break it.
_FORGED_MARKER = re.compile(r"<(?=\|im_start\|>|\|im_end\|>|/?s>)")
_ZERO_WIDTH_SPACE = "\u200b"


#: Seconds to wait for the model hub before saying it cannot be reached.
HUB_TIMEOUT_S = 5.0


def check_model_source(model_id: str | Path, *, setting: str = "MODEL_ID") -> None:
    """Refuse at once, in one line naming `setting`, a model that cannot be had: a folder
    without the model's files, or a hub id while the hub cannot be reached."""
    from synatra_bot.errors import ConfigError

    path = Path(model_id)
    if path.exists() or path.is_absolute() or str(model_id).startswith("."):
        if (
            not (path / "tokenizer_config.json").is_file()
            and not (path / "tokenizer.model").is_file()
        ):
            raise ConfigError(
                setting,
                f"{model_id} is not a model folder (no tokenizer files in it); give the folder "
                "you downloaded the model to, or a hub id",
            )
    else:
        _check_hub_reachable(str(model_id), setting)


def _check_hub_reachable(model_id: str, setting: str) -> None:
    """A hub id loads from the local cache, or needs the hub: ask it once, briefly, instead of
    letting every file request retry for most of a minute when there is no network."""
    from huggingface_hub import try_to_load_from_cache

    from synatra_bot.errors import ConfigError

    if isinstance(try_to_load_from_cache(model_id, "tokenizer_config.json"), str):
        return  # cached: no network needed
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    try:
        HfApi().model_info(model_id, timeout=HUB_TIMEOUT_S)
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        raise ConfigError(
            setting, f"the model hub has no model {model_id} (HTTP {status})"
        ) from None
    except Exception as exc:  # the hub client's connect/timeout errors are its own types
        raise ConfigError(
            setting,
            f"{model_id} could not be downloaded: the model hub cannot be reached "
            f"({type(exc).__name__}). Download the model on a machine with network "
            "(hf download maywell/Synatra-7B-v0.3-RP --local-dir models/synatra) "
            "and set MODEL_ID to that folder",
        ) from None


def load_tokenizer(model_id: str | Path) -> PreTrainedTokenizerBase:
    """Load the tokenizer of `model_id` (hub id or local folder) and check the ChatML ids."""
    from transformers import AutoTokenizer

    from synatra_bot.errors import ConfigError

    check_model_source(model_id)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_id))
    except (OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            "MODEL_ID",
            f"cannot load the tokenizer of {model_id} ({reason}); give a hub id this machine "
            "can download, or a local folder with the model",
        ) from None
    ids = tokenizer.convert_tokens_to_ids([IM_END, IM_START])
    if ids != [IM_END_ID, IM_START_ID]:
        raise ConfigError(
            "MODEL_ID",
            f"tokenizer of {model_id} maps {IM_END}/{IM_START} to {ids}, "
            f"expected [{IM_END_ID}, {IM_START_ID}] (is this a Synatra/ChatML model?)",
        )
    return tokenizer


def ids_to_server_text(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> str:
    """Render prompt ids as text for a server that only takes text and tokenizes it itself.

    Real special ids become their token strings; content between them is decoded on its own
    and any special-token text inside it (a user typing `<|im_start|>`) is broken with a
    zero-width space, so the server's tokenizer cannot turn it into a role token. For content
    without such text the server's tokens are exactly `ids`.
    """
    parts: list[str] = []
    segment: list[int] = []

    def flush() -> None:
        if segment:
            text = tokenizer.decode(
                segment, skip_special_tokens=False, clean_up_tokenization_spaces=False
            )
            parts.append(_FORGED_MARKER.sub("<" + _ZERO_WIDTH_SPACE, str(text)))
            segment.clear()

    for token_id in ids:
        if token_id in FORBIDDEN_CONTENT_IDS:
            flush()
            parts.append(str(tokenizer.convert_ids_to_tokens(token_id)))
        else:
            segment.append(token_id)
    flush()
    return "".join(parts)


def content_encoder(tokenizer: PreTrainedTokenizerBase) -> Any | None:
    """A copy of a fast tokenizer's Rust backend that spells special tokens out as text.

    It gives the same ids as `tokenizer(text, add_special_tokens=False,
    split_special_tokens=True)` at half the cost (no Python wrapping per call); the tests check
    both on the hostile corpus. None for a tokenizer without such a backend: the builder then
    calls the tokenizer itself.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "encode_special_tokens"):
        return None
    encoder = type(backend).from_str(backend.to_str())
    encoder.encode_special_tokens = True
    encoder.no_truncation()
    encoder.no_padding()
    return encoder
