"""Build the test tokenizer (real Mistral v1 SentencePiece + Synatra's ChatML tokens) and a
tiny random MistralForCausalLM, offline, into folders loadable by `from_pretrained`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any


def _special(content: str) -> dict[str, object]:
    return {
        "content": content,
        "lstrip": False,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
        "special": True,
    }


def write_tokenizer(folder: Path) -> Path:
    """Write Synatra's tokenizer layout: `tokenizer.model` plus a config adding 32000/32001."""
    import mistral_common

    folder.mkdir(parents=True, exist_ok=True)
    source = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    shutil.copy(source, folder / "tokenizer.model")
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": True,
        "add_eos_token": False,
        "legacy": True,
        "model_max_length": 32768,
        "bos_token": "<s>",
        "eos_token": "<|im_end|>",
        "unk_token": "<unk>",
        "pad_token": None,
        "additional_special_tokens": ["<|im_end|>", "<|im_start|>"],
        "added_tokens_decoder": {
            "0": _special("<unk>"),
            "1": _special("<s>"),
            "2": _special("</s>"),
            "32000": _special("<|im_end|>"),
            "32001": _special("<|im_start|>"),
        },
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def write_tiny_model(folder: Path, *, seed: int = 0) -> Path:
    """Write a tiny random Mistral (Synatra's vocab and special ids) with the test tokenizer."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    write_tokenizer(folder)
    config = MistralConfig(
        vocab_size=32002,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=32768,
        sliding_window=4096,
        bos_token_id=1,
        eos_token_id=32000,
        pad_token_id=None,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = MistralForCausalLM(config)
    model.generation_config.eos_token_id = [32000, 32001, 2]
    model.save_pretrained(folder)
    return folder


class FailingSteps:
    """A forward hook that makes the model's next `times` forward passes raise, as a CUDA error
    would in a generation step; `remove()` takes it off."""

    def __init__(self, model: Any, *, times: int = 1) -> None:
        self.left = times
        self.raised = 0
        self._handle = model.register_forward_hook(self)

    def __call__(self, module: Any, args: Any, output: Any) -> None:
        if self.left > 0:
            self.left -= 1
            self.raised += 1
            raise RuntimeError("CUDA error: an illegal memory access was encountered (simulated)")

    def remove(self) -> None:
        self._handle.remove()


class ForcedToken:
    """A forward hook that makes the model choose `token_id` at every step, whatever it is
    sampled with; `remove()` takes it off."""

    def __init__(self, model: Any, token_id: int) -> None:
        self.token_id = token_id
        self._handle = model.register_forward_hook(self)

    def __call__(self, module: Any, args: Any, output: Any) -> Any:
        logits = output.logits
        logits.fill_(-1e4)
        logits[..., self.token_id] = 1e4
        return output

    def remove(self) -> None:
        self._handle.remove()


if __name__ == "__main__":
    # `python -m tests.model_fixtures FOLDER`: a tiny random model to try `synatra-bot chat`
    # without downloading anything (it talks nonsense, but every part of the bot runs).
    import sys

    print(write_tiny_model(Path(sys.argv[1])))
