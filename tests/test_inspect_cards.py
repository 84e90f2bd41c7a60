"""Model and adapter cards, checked against llama.cpp's own GGUF reader and against PEFT and transformers."""

from __future__ import annotations

import copy
import ctypes
import json

import pytest

from chatty.errors import ModelError
from chatty.models.adapters import read_adapter
from chatty.models.card import adapter_card, model_card, read_safetensors_header
from chatty.models.catalog import describe_path


def test_gguf_card_matches_llama_cpp(embedded_model, llama_backend):
    import llama_cpp

    card = model_card(embedded_model)
    llm = llama_backend.llm
    native = llm._model.model
    metadata = llm.metadata
    description = ctypes.create_string_buffer(128)
    llama_cpp.llama_model_desc(native, description, len(description))

    assert card.architecture == metadata["general.architecture"]
    assert card.parameters == llama_cpp.llama_model_n_params(native)
    assert card.layers == llama_cpp.llama_model_n_layer(native)
    assert card.hidden_size == llama_cpp.llama_model_n_embd(native)
    assert card.attention_heads == llama_cpp.llama_model_n_head(native)
    assert card.kv_heads == llama_cpp.llama_model_n_head_kv(native)
    assert card.vocab_size == llm.n_vocab()
    assert card.context_length == llm._model.n_ctx_train()
    assert card.feed_forward_size == int(metadata["llama.feed_forward_length"])
    assert card.rope["freq_base"] == pytest.approx(float(metadata["llama.rope.freq_base"]))
    assert card.rope["dimension_count"] == int(metadata["llama.rope.dimension_count"])
    assert card.quantization in description.value.decode().split()
    assert card.file_size == embedded_model.path.stat().st_size
    assert "Q4_1" in card.tensor_types


@pytest.fixture(scope="module")
def tiny_llama():
    """A small random Llama: cards read only headers, so its size does not matter to them."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=100, max_position_embeddings=256)
    return LlamaForCausalLM(config)


def test_folder_card_matches_transformers(tiny_llama, tmp_path):
    tiny_llama.save_pretrained(tmp_path / "tiny")
    card = model_card(describe_path(tmp_path / "tiny"))

    assert card.parameters == tiny_llama.num_parameters()
    assert card.architecture == "LlamaForCausalLM"
    assert card.layers == 2
    assert card.hidden_size == 64
    assert card.attention_heads == 4
    assert card.kv_heads == 2
    assert card.vocab_size == 100
    assert card.context_length == 256
    assert card.file_size == (tmp_path / "tiny" / "model.safetensors").stat().st_size


def test_adapter_card_counts_header(tiny_llama, tmp_path):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=4, lora_alpha=16, lora_dropout=0.1, target_modules=["q_proj", "v_proj", "down_proj"])
    peft_model = get_peft_model(copy.deepcopy(tiny_llama), config)
    peft_model.save_pretrained(tmp_path / "lora")
    card = adapter_card(read_adapter(tmp_path / "lora"))
    trainable, _ = peft_model.get_nb_trainable_parameters()

    assert card.trainable_parameters == trainable
    assert card.rank == 4
    assert card.alpha == 16
    assert card.scale == 4.0
    assert card.dropout == 0.1
    assert sorted(card.target_modules) == ["down_proj", "q_proj", "v_proj"]
    # lora_A and lora_B for 3 modules in each of 2 layers.
    assert card.tensor_count == 12
    assert not card.has_gguf


def test_safetensors_header_rejects_garbage(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes((12).to_bytes(8, "little") + b"not json at")

    with pytest.raises(ModelError, match="not a valid safetensors file"):
        read_safetensors_header(path)


def test_safetensors_header_reads_shapes(tmp_path):
    header = {"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}, "__metadata__": {"format": "pt"}}
    raw = json.dumps(header).encode()
    path = tmp_path / "small.safetensors"
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + bytes(24))

    assert read_safetensors_header(path) == {"a": header["a"]}
