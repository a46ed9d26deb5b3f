"""Which attention the embedded engine loads the model with, on machines faked on the CPU."""

from __future__ import annotations

import pytest

from synatra_bot.engine import transformers_engine
from synatra_bot.engine.transformers_engine import (
    AttentionChoice,
    FlashSupport,
    choose_attention,
    resolve_attention,
)
from synatra_bot.errors import ConfigError

HOPPER = (9, 0)
AMPERE = (8, 0)
TURING = (7, 5)


def test_auto_on_the_cpu_is_sdpa() -> None:
    assert choose_attention("auto", FlashSupport()) == AttentionChoice(
        "sdpa", "no CUDA GPU: flash attention needs one"
    )


def test_auto_on_a_gpu_without_flash_attn_is_sdpa_and_says_so() -> None:
    choice = choose_attention("auto", FlashSupport(cuda_capability=HOPPER))
    assert choice == AttentionChoice("sdpa", "flash-attn not installed")


def test_auto_takes_flash_attention_2_where_flash_attn_is_installed() -> None:
    support = FlashSupport(cuda_capability=AMPERE, flash_attn_2=True)
    assert choose_attention("auto", support) == AttentionChoice(
        "flash_attention_2", "flash-attn installed"
    )


def test_auto_prefers_flash_attention_3_on_hopper_only() -> None:
    both = {"flash_attn_2": True, "flash_attn_3": True}
    hopper = choose_attention("auto", FlashSupport(cuda_capability=HOPPER, **both))
    ampere = choose_attention("auto", FlashSupport(cuda_capability=AMPERE, **both))
    assert hopper.implementation == "flash_attention_3"
    assert ampere.implementation == "flash_attention_2"


def test_auto_uses_a_hub_flash_kernel_when_the_kernels_package_loads_one() -> None:
    support = FlashSupport(cuda_capability=AMPERE, kernels=True, kernel_flash_attn_2=True)
    choice = choose_attention("auto", support)
    assert choice.implementation == "flash_attention_2"
    assert "kernels package" in choice.reason
    offline = choose_attention("auto", FlashSupport(cuda_capability=AMPERE, kernels=True))
    assert offline.implementation == "sdpa" and "loaded no flash kernel" in offline.reason


def test_auto_keeps_sdpa_where_flash_attention_cannot_run() -> None:
    old_gpu = choose_attention("auto", FlashSupport(cuda_capability=TURING, flash_attn_2=True))
    assert old_gpu == AttentionChoice(
        "sdpa", "GPU compute capability 7.5: flash attention needs 8.0"
    )
    fp32 = choose_attention(
        "auto", FlashSupport(cuda_capability=AMPERE, flash_attn_2=True), dtype="float32"
    )
    assert fp32.implementation == "sdpa" and "float32" in fp32.reason


def test_a_forced_attention_is_used_as_asked() -> None:
    support = FlashSupport(cuda_capability=AMPERE, flash_attn_2=True)
    assert choose_attention("sdpa", support) == AttentionChoice(
        "sdpa", "set by ATTN_IMPLEMENTATION"
    )
    assert choose_attention("eager", FlashSupport()).implementation == "eager"
    assert choose_attention("flash_attention_2", support).implementation == "flash_attention_2"


def test_older_paged_names_map_to_what_transformers_calls_them_now() -> None:
    choice = choose_attention("paged|sdpa", FlashSupport())
    assert choice == AttentionChoice("sdpa", "ATTN_IMPLEMENTATION=paged|sdpa, called sdpa now")


@pytest.mark.parametrize(
    ("requested", "support", "needs"),
    [
        ("flash_attention_2", FlashSupport(), "needs a CUDA GPU"),
        ("flash_attention_2", FlashSupport(cuda_capability=AMPERE), "needs flash-attn"),
        ("flash_attention_3", FlashSupport(cuda_capability=HOPPER), "needs flash-attn-3"),
        ("kernels-community/flash-attn2", FlashSupport(cuda_capability=AMPERE), "kernels"),
    ],
)
def test_a_forced_flash_attention_that_cannot_run_here_is_one_line(
    requested: str, support: FlashSupport, needs: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        choose_attention(requested, support)
    assert caught.value.setting == "ATTN_IMPLEMENTATION"
    assert needs in str(caught.value) and "use auto or sdpa" in str(caught.value)
    assert "\n" not in str(caught.value)


def _fake_machine(
    monkeypatch: pytest.MonkeyPatch,
    *,
    capability: tuple[int, int] | None,
    flash_attn_2: bool = False,
    flash_attn_3: bool = False,
    kernels: bool = False,
    kernel_loads: bool = False,
) -> list[str]:
    """Fake torch's GPU and transformers' availability checks; returns the kernels tried."""
    import torch
    from transformers.utils import import_utils

    tried: list[str] = []

    def available(package: bool, name: str):  # type: ignore[no-untyped-def]
        def check(kernels_fallback_ok: bool = False) -> bool:
            if package:
                return True
            if kernels_fallback_ok:
                tried.append(name)
                return kernels and kernel_loads
            return False

        return check

    monkeypatch.setattr(torch.cuda, "is_available", lambda: capability is not None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(import_utils, "is_flash_attn_2_available", available(flash_attn_2, "fa2"))
    monkeypatch.setattr(import_utils, "is_flash_attn_3_available", available(flash_attn_3, "fa3"))
    monkeypatch.setattr(import_utils, "is_kernels_available", lambda: kernels)
    return tried


def test_resolve_reads_what_transformers_says_is_installed(monkeypatch) -> None:
    _fake_machine(monkeypatch, capability=HOPPER, flash_attn_2=True)
    assert resolve_attention("auto", "cuda:0") == AttentionChoice(
        "flash_attention_2", "flash-attn installed"
    )


def test_resolve_tries_hub_kernels_only_when_no_flash_package_would_do(monkeypatch) -> None:
    tried = _fake_machine(monkeypatch, capability=HOPPER, kernels=True, kernel_loads=True)
    assert resolve_attention("auto", "cuda").implementation == "flash_attention_3"
    assert tried == ["fa3"]
    tried.clear()
    assert resolve_attention("flash_attention_2", "cuda").implementation == "flash_attention_2"
    assert tried == []  # a forced flash attention is transformers' to load


def test_resolve_on_the_cpu_never_asks_for_flash(monkeypatch) -> None:
    tried = _fake_machine(monkeypatch, capability=AMPERE, flash_attn_2=True, kernels=True)
    assert resolve_attention("auto", "cpu").implementation == "sdpa"
    assert tried == []


def test_plain_attentions_probe_nothing(monkeypatch) -> None:
    def probe(*args: object, **kwargs: object) -> FlashSupport:
        raise AssertionError("probed flash support for a plain attention")

    monkeypatch.setattr(transformers_engine, "probe_flash_support", probe)
    assert resolve_attention("sdpa", "cuda").implementation == "sdpa"
    assert resolve_attention("paged|sdpa", "cuda").implementation == "sdpa"
