"""Token pieces and next-token candidates on both backends, with the real embedded model."""

from __future__ import annotations

import math

import pytest

from chatty.backends.base import GenerationParams
from chatty.backends.tokens import joined_text
from chatty.errors import ContextOverflow

MUSIC = "What is the best way to learn music?"
COLORS = [{"role": "user", "content": "Name three colors."}]
STORY = [{"role": "user", "content": "Write a short story about a cat who learns to play the piano."}]
GREEDY = GenerationParams(temperature=0, max_tokens=40)


@pytest.fixture(params=["llama", "torch"])
def backend(request, llama_backend):
    if request.param == "llama":
        return llama_backend
    return request.getfixturevalue("torch_backend")


def test_pieces_match_llama_tokenizer(llama_backend):
    llm = llama_backend.llm
    ids = llama_backend.tokenize(MUSIC)
    pieces = llama_backend.token_pieces(ids)

    assert ids == llm.tokenize(MUSIC.encode("utf-8"), add_bos=False, special=False)
    assert [piece.id for piece in pieces] == ids
    assert [piece.piece for piece in pieces] == [llm.detokenize([token_id]).decode("utf-8") for token_id in ids]
    assert "".join(piece.piece for piece in pieces) == MUSIC
    assert not any(piece.special for piece in pieces)


def test_pieces_match_transformers_tokenizer(torch_backend):
    tokenizer = torch_backend.tokenizer
    ids = torch_backend.tokenize(MUSIC)
    pieces = torch_backend.token_pieces(ids)

    assert ids == tokenizer(MUSIC, add_special_tokens=False)["input_ids"]
    assert [piece.id for piece in pieces] == ids
    assert [piece.piece for piece in pieces] == [tokenizer.decode([token_id]) for token_id in ids]
    assert "".join(piece.piece for piece in pieces) == MUSIC


def test_split_characters_keep_bytes(llama_backend, torch_backend):
    text = "음악 🎵"
    llama_pieces = llama_backend.token_pieces(llama_backend.tokenize(text))
    torch_pieces = torch_backend.token_pieces(torch_backend.tokenize(text))

    assert [(piece.id, piece.data) for piece in torch_pieces] == [(piece.id, piece.data) for piece in llama_pieces]
    assert joined_text(llama_pieces) == text
    assert any(piece.piece.startswith("<0x") for piece in llama_pieces)


def test_template_tokens_are_special(backend):
    pieces = backend.token_pieces(backend.tokenize_prompt(COLORS))
    special = {piece.piece for piece in pieces if piece.special}

    assert special == {"<|im_start|>", "<|im_end|>"}
    assert [piece.piece for piece in pieces[:2]] == ["<|im_start|>", "system"]


def test_candidates_are_sorted_probabilities(backend):
    results = backend.token_candidates(COLORS, "Red, green and blue.", k=5)

    assert [token.piece for token in results] == [piece.piece for piece in backend.token_pieces(backend.tokenize("Red, green and blue."))]
    for token in results:
        probabilities = [candidate.probability for candidate in token.candidates]
        assert len(probabilities) == 5
        assert probabilities == sorted(probabilities, reverse=True)
        assert all(0.0 <= p <= 1.0 for p in probabilities)
        assert sum(probabilities) <= 1.0 + 1e-9
        assert 0.0 <= token.probability <= probabilities[0] + 1e-12
        assert token.rank >= 1
        assert token.entropy >= 0.0


def test_greedy_reply_is_top_candidate(backend):
    generation = backend.generate(STORY, GREEDY)
    text = generation.text()
    results = backend.token_candidates(STORY, text)

    assert [token.id for token in results] == generation.token_ids
    assert [token.rank for token in results] == [1] * len(results)
    assert all(token.candidates[0].id == token.id for token in results)


def test_llama_candidates_keep_prefix_cache(llama_backend):
    first = llama_backend.generate(COLORS, GREEDY)
    text = first.text()
    prompt = llama_backend.tokenize_prompt(COLORS)
    llama_backend.token_candidates(COLORS, text)
    llm = llama_backend.llm
    cached = llm.input_ids[: llm.n_tokens].tolist()
    again = llama_backend.generate(COLORS, GREEDY)

    assert cached == prompt + first.token_ids[:-1]
    assert again.text() == text


def test_candidates_empty_reply(backend):
    assert backend.token_candidates(COLORS, "") == []


def test_candidates_context_overflow(llama_backend):
    with pytest.raises(ContextOverflow, match="context window is 2048 tokens"):
        llama_backend.token_candidates(COLORS, "word " * 2100)


def test_torch_candidates_include_adapter(torch_backend, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    from chatty.models.adapters import PEFT_WEIGHTS, read_adapter

    # PEFT names the LoRA weights on a weightless copy of the model; random values make the adapter change the logits.
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(torch_backend.torch_model.config)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    names = get_peft_model_state_dict(get_peft_model(skeleton, lora))
    generator = torch.Generator().manual_seed(3)
    folder = tmp_path / "noisy"
    lora.save_pretrained(folder)
    save_file({name: torch.randn(tensor.shape, generator=generator) * 0.2 for name, tensor in names.items()}, folder / PEFT_WEIGHTS)

    reply = "Red, green and blue."
    base = torch_backend.token_candidates(COLORS, reply)
    torch_backend.set_adapter(read_adapter(folder))
    try:
        adapted = torch_backend.token_candidates(COLORS, reply)
        ids = torch_backend.tokenize_prompt(COLORS) + torch_backend.tokenize(reply)
        with torch.inference_mode():
            logits = torch_backend.torch_model(torch.tensor([ids])).logits[0]
    finally:
        torch_backend.set_adapter(None)

    # Row -len(reply) - 1 + i of the full logits predicts reply token i.
    reply_ids = [token.id for token in adapted]
    expected = torch.softmax(logits[-len(reply_ids) - 1 : -1].double(), dim=-1)
    assert [token.probability for token in adapted] != [token.probability for token in base]
    for token, row in zip(adapted, expected):
        assert math.isclose(token.probability, row[token.id].item(), rel_tol=1e-4, abs_tol=1e-7)
