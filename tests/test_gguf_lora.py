"""PEFT LoRA to LoRA GGUF conversion: file format, row order, scales and rejected adapters.

Adapters are made with real PEFT on randomly initialized Llama models: one with the embedded
model's shapes and one tiny model of other shapes. Whether llama.cpp computes the same change as
PEFT is checked in test_llama_adapters.py.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from chatty.errors import ModelError
from chatty.finetune.gguf_base import permute_for_rope
from chatty.finetune.gguf_lora import LORA_VARIANTS, convert_peft_to_gguf, main
from chatty.models.adapters import base_model_record, write_metadata
from chatty.models.catalog import describe_path
from chatty.models.gguf_info import read_gguf_info

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def embedded_shape_model(embedded_model):
    """A randomly initialized Llama with the embedded model's shapes, enough for PEFT, which needs only its modules."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    info = read_gguf_info(embedded_model.path)
    config = LlamaConfig(
        hidden_size=info.arch_value("embedding_length"),
        intermediate_size=info.arch_value("feed_forward_length"),
        num_hidden_layers=info.arch_value("block_count"),
        num_attention_heads=info.arch_value("attention.head_count"),
        num_key_value_heads=info.arch_value("attention.head_count_kv"),
        vocab_size=info.arch_value("vocab_size"),
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """A tiny random Llama saved as a Hugging Face folder, with shapes unlike the embedded model's."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=256, tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder)
    return describe_path(folder), model


def save_adapter(model, folder: Path, base=None, seed: int = 0, **lora_options) -> dict:
    """Save a PEFT LoRA adapter of `model` with random lora_B values and return its tensors by PEFT key."""
    import torch
    from peft import LoraConfig, get_peft_model

    lora_options.setdefault("target_modules", ALL_LINEAR)
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, **lora_options))
    try:
        with torch.no_grad():
            for name, parameter in peft_model.named_parameters():
                if "lora_B" in name or "lora_embedding_B" in name:
                    parameter.normal_(std=0.1)
        peft_model.save_pretrained(folder)
    finally:
        peft_model.unload()
    if base is not None:
        write_metadata(folder, {"base_model": base_model_record(base)})

    from safetensors.numpy import load_file

    return load_file(folder / "adapter_model.safetensors")


def gguf_tensors(path: Path) -> dict[str, np.ndarray]:
    """Read a GGUF's tensors as numpy arrays in numpy (reversed GGUF) dimension order."""
    from gguf import GGUFReader

    return {tensor.name: np.array(tensor.data) for tensor in GGUFReader(path).tensors}


def hf_order(rows: np.ndarray, head_count: int) -> np.ndarray:
    """Undo llama.cpp's q/k row order with transformers' own GGUF loader code, an independent implementation."""
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    return LlamaTensorProcessor()._reverse_permute_weights(rows, head_count, head_count)


def peft_key(layer: int, module: str, part: str) -> str:
    group = "mlp" if module in ("gate_proj", "up_proj", "down_proj") else "self_attn"
    return f"base_model.model.model.layers.{layer}.{group}.{module}.lora_{part}.weight"


def test_gguf_metadata_keys(tmp_path, embedded_shape_model, embedded_model):
    save_adapter(embedded_shape_model, tmp_path, embedded_model)
    info = read_gguf_info(convert_peft_to_gguf(tmp_path))
    assert info.metadata["general.type"] == "adapter"
    assert info.metadata["adapter.type"] == "lora"
    assert info.metadata["adapter.lora.alpha"] == 16.0
    assert info.architecture == "llama"


def test_gguf_tensor_names_and_shapes(tmp_path, embedded_shape_model, embedded_model):
    save_adapter(embedded_shape_model, tmp_path, embedded_model)
    info = read_gguf_info(convert_peft_to_gguf(tmp_path))
    shapes = {tensor.name: tensor.shape for tensor in info.tensors}
    assert len(shapes) == 2 * len(ALL_LINEAR) * 30
    # GGUF dimension order: lora_a is (in_features, rank), lora_b is (rank, out_features).
    assert shapes["blk.0.attn_k.weight.lora_a"] == (576, 8)
    assert shapes["blk.0.attn_k.weight.lora_b"] == (8, 192)
    assert shapes["blk.29.ffn_down.weight.lora_a"] == (1536, 8)
    assert shapes["blk.29.ffn_down.weight.lora_b"] == (8, 576)


def test_q_and_k_rows_permuted(tmp_path, embedded_shape_model, embedded_model):
    peft = save_adapter(embedded_shape_model, tmp_path, embedded_model)
    tensors = gguf_tensors(convert_peft_to_gguf(tmp_path))
    q_rows = tensors["blk.3.attn_q.weight.lora_b"]
    k_rows = tensors["blk.3.attn_k.weight.lora_b"]
    assert np.array_equal(hf_order(q_rows, 9), peft[peft_key(3, "q_proj", "B")])
    assert np.array_equal(hf_order(k_rows, 3), peft[peft_key(3, "k_proj", "B")])
    assert not np.array_equal(q_rows, peft[peft_key(3, "q_proj", "B")])


def test_other_tensors_kept(tmp_path, embedded_shape_model, embedded_model):
    peft = save_adapter(embedded_shape_model, tmp_path, embedded_model)
    tensors = gguf_tensors(convert_peft_to_gguf(tmp_path))
    assert np.array_equal(tensors["blk.3.attn_q.weight.lora_a"], peft[peft_key(3, "q_proj", "A")])
    assert np.array_equal(tensors["blk.3.attn_v.weight.lora_b"], peft[peft_key(3, "v_proj", "B")])
    assert np.array_equal(tensors["blk.3.ffn_gate.weight.lora_b"], peft[peft_key(3, "gate_proj", "B")])


def test_permutation_pairs_rotary_halves():
    # One head of 8 rows: Hugging Face rows 0..3 pair with 4..7, llama.cpp pairs adjacent rows.
    rows = np.arange(8, dtype=np.float32).reshape(8, 1)
    assert permute_for_rope(rows, 1)[:, 0].tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


def test_rslora_scale_in_alpha(tmp_path, embedded_shape_model, embedded_model):
    peft = save_adapter(embedded_shape_model, tmp_path, embedded_model, use_rslora=True)
    path = convert_peft_to_gguf(tmp_path)
    # llama.cpp applies alpha / rank, so alpha / rank must equal PEFT's 16 / sqrt(8).
    assert read_gguf_info(path).metadata["adapter.lora.alpha"] == pytest.approx(16 * math.sqrt(8))
    assert np.array_equal(gguf_tensors(path)["blk.0.attn_v.weight.lora_b"], peft[peft_key(0, "v_proj", "B")])


def test_alpha_pattern_scales_lora_b(tmp_path, embedded_shape_model, embedded_model):
    peft = save_adapter(embedded_shape_model, tmp_path, embedded_model, alpha_pattern={"v_proj": 32})
    tensors = gguf_tensors(convert_peft_to_gguf(tmp_path))
    assert np.allclose(tensors["blk.0.attn_v.weight.lora_b"], 2 * peft[peft_key(0, "v_proj", "B")])
    assert np.array_equal(tensors["blk.0.attn_output.weight.lora_b"], peft[peft_key(0, "o_proj", "B")])


def test_output_path_and_no_temporary_files(tmp_path, embedded_shape_model, embedded_model):
    adapter_dir = tmp_path / "adapter"
    save_adapter(embedded_shape_model, adapter_dir, embedded_model, target_modules=["q_proj"])
    output = tmp_path / "out" / "named.gguf"
    assert convert_peft_to_gguf(adapter_dir, output) == output
    assert output.is_file()
    assert [path.name for path in output.parent.iterdir()] == ["named.gguf"]


def test_hugging_face_base(tmp_path, tiny_base):
    base, model = tiny_base
    save_adapter(model, tmp_path, base)
    info = read_gguf_info(convert_peft_to_gguf(tmp_path, base=base))
    shapes = {tensor.name: tensor.shape for tensor in info.tensors}
    assert shapes["blk.1.attn_k.weight.lora_b"] == (8, 32)


def test_wrong_base_rejected(tmp_path, tiny_base, embedded_model):
    _, model = tiny_base
    save_adapter(model, tmp_path)  # no metadata, so only the tensor shapes can tell
    with pytest.raises(ModelError, match="does not fit the base model") as error:
        convert_peft_to_gguf(tmp_path, base=embedded_model)
    assert "blk.0.attn_q.weight" in str(error.value) or "blk.0.ffn_down.weight" in str(error.value)
    assert not (tmp_path / "adapter.gguf").exists()


def test_recorded_base_mismatch_rejected(tmp_path, tiny_base, embedded_model):
    base, model = tiny_base
    save_adapter(model, tmp_path, base)
    with pytest.raises(ModelError, match="was trained on"):
        convert_peft_to_gguf(tmp_path, base=embedded_model)


def test_missing_base_rejected(tmp_path, tiny_base):
    _, model = tiny_base
    save_adapter(model, tmp_path)
    with pytest.raises(ModelError, match="records no base model"):
        convert_peft_to_gguf(tmp_path)


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"target_modules": ["q_proj", "embed_tokens"]}, "embed_tokens"),
        ({"target_modules": ["q_proj", "lm_head"]}, "lm_head"),
        ({"target_modules": r".*\.q_proj|lm_head"}, "lm_head"),
        ({"target_modules": ["q_proj"], "modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"target_modules": ["q_proj"], "use_dora": True}, "DoRA"),
        ({"target_modules": ["q_proj"], "bias": "lora_only"}, "biases"),
    ],
    ids=["embed_tokens", "lm_head", "lm_head_regex", "modules_to_save", "dora", "bias"],
)
def test_unsupported_adapter_rejected(tmp_path, tiny_base, options, reason):
    base, model = tiny_base
    save_adapter(model, tmp_path, base, **options)
    with pytest.raises(ModelError, match=reason) as error:
        convert_peft_to_gguf(tmp_path, base=base)
    assert "torch backend" in str(error.value)
    assert not (tmp_path / "adapter.gguf").exists()


def test_variant_list_matches_peft():
    from peft import LoraConfig

    variants = {field.name for field in dataclasses.fields(LoraConfig) if field.metadata.get("is_lora_variant")}
    assert set(LORA_VARIANTS) == variants


def test_command_line_writes_file(tmp_path, tiny_base, capsys):
    base, model = tiny_base
    save_adapter(model, tmp_path, base, target_modules=["v_proj"])
    assert main([str(tmp_path), "--base", str(base.path)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "adapter.gguf")


def test_command_line_error_is_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "missing")]) == 1
    assert capsys.readouterr().err.count("\n") == 1


def test_damaged_weights_rejected(tmp_path, tiny_base):
    base, model = tiny_base
    save_adapter(model, tmp_path, base, target_modules=["v_proj"])
    weights = tmp_path / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ModelError, match="cannot be read"):
        convert_peft_to_gguf(tmp_path, base=base)
