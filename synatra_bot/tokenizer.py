"""Synatra's tokenizer: loading it and the special token ids every layer agrees on."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

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


def load_tokenizer(model_id: str | Path) -> PreTrainedTokenizerBase:
    """Load the tokenizer of `model_id` (hub id or local folder) and check the ChatML ids."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_id))
    ids = tokenizer.convert_tokens_to_ids([IM_END, IM_START])
    if ids != [IM_END_ID, IM_START_ID]:
        from synatra_bot.errors import ConfigError

        raise ConfigError(
            "MODEL_ID",
            f"tokenizer of {model_id} maps {IM_END}/{IM_START} to {ids}, "
            f"expected [{IM_END_ID}, {IM_START_ID}] (is this a Synatra/ChatML model?)",
        )
    return tokenizer
