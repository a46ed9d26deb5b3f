"""The test tokenizer is Synatra's: real SentencePiece pieces and the two ChatML ids."""

from synatra_bot.tokenizer import BOS_ID, EOS_ID, IM_END_ID, IM_START_ID


def test_chatml_tokens_have_synatras_ids(tokenizer):
    assert tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|im_start|>", "<s>", "</s>"]) == [
        IM_END_ID,
        IM_START_ID,
        BOS_ID,
        EOS_ID,
    ]
    assert len(tokenizer) == 32002


def test_korean_uses_byte_fallback(tokenizer):
    ids = tokenizer.encode("안녕하세요", add_special_tokens=False)
    pieces = tokenizer.convert_ids_to_tokens(ids)
    assert any(piece.startswith("<0x") for piece in pieces)
    assert tokenizer.decode(ids) == "안녕하세요"


def test_tiny_model_loads_and_generates(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    out = model.generate(torch.tensor([[1, 28705]]), max_new_tokens=3, do_sample=False)
    assert out.shape[1] <= 5
