"""Shared fixtures: the real test tokenizer and the tiny random model, built once per run."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import settings

from tests.model_fixtures import write_tiny_model, write_tokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

pytest_plugins = ["tests.discord_fake.fixtures", "tests.bot_harness"]

# Property tests draw the same examples on every run and every machine: a run that is green
# here is green in CI (no example database, no random seed between runs).
settings.register_profile("deterministic", derandomize=True, database=None, print_blob=True)
settings.load_profile("deterministic")


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with Synatra's tokenizer layout (Mistral v1 SentencePiece + ChatML tokens)."""
    return write_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir: Path) -> PreTrainedTokenizerBase:
    from synatra_bot.tokenizer import load_tokenizer

    return load_tokenizer(tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a tiny random MistralForCausalLM and the test tokenizer."""
    return write_tiny_model(tmp_path_factory.mktemp("tiny-model"))
