"""Base model facts for LoRA conversion: architecture support, head counts and tensor shapes.

The base is a GGUF file or a Hugging Face folder. This module also reorders q and k rows the way
the base's own GGUF conversion did.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chatty.errors import ModelError
from chatty.models.catalog import ModelInfo

# GGUF architectures that this converter supports, each with whether its base conversion permutes
# the rows of the q and k projections. llama.cpp's Hugging Face to GGUF conversion reorders those
# rows for its rotary embedding, and transformers' GGUF loader undoes that on load
# (LlamaTensorProcessor, transformers 5.25). So PEFT always trains in the Hugging Face row order, and
# the rows of lora_B must be reordered the same way before llama.cpp can add B @ A to the base.
# NOTE: the tests check only llama against llama.cpp. The others are listed because transformers'
# GGUF loader changes none of their linear weights, so no reordering is expected.
ROPE_PERMUTED_ARCHITECTURES = {
    "llama": True,
    "qwen2": False,
    "qwen3": False,
    "phi3": False,
    "gemma2": False,
    "gemma3": False,
}

# Hugging Face model_type to GGUF architecture, for adapters trained on a Hugging Face folder.
HF_MODEL_TYPES = {
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "phi3": "phi3",
    "gemma2": "gemma2",
    "gemma3_text": "gemma3",
}


@dataclass
class BaseLayout:
    """The facts about a base model that a conversion needs: architecture, head counts and tensor shapes."""

    model_id: str
    architecture: str
    block_count: int
    head_counts: list[int]
    kv_head_counts: list[int]
    # GGUF tensor name -> shape in GGUF order (in_features, out_features), or empty when unknown.
    tensor_shapes: dict[str, tuple[int, ...]]


def read_base_layout(base: ModelInfo) -> BaseLayout:
    """Read the architecture, head counts and tensor shapes of a GGUF file or Hugging Face folder."""
    if base.format == "gguf":
        from chatty.models.gguf_info import read_gguf_info

        info = read_gguf_info(base.path)
        architecture = info.architecture
        block_count = int(info.arch_value("block_count", 0))
        heads = info.arch_value("attention.head_count")
        kv_heads = info.arch_value("attention.head_count_kv", heads)
        shapes = {tensor.name: tensor.shape for tensor in info.tensors}
    else:
        config = _read_hf_config(base.path)
        model_type = str(config.get("model_type", "unknown"))
        architecture = HF_MODEL_TYPES.get(model_type, model_type)
        block_count = int(config.get("num_hidden_layers", 0))
        heads = config.get("num_attention_heads")
        kv_heads = config.get("num_key_value_heads") or heads
        shapes = _hf_tensor_shapes(base.path, architecture, block_count)

    if architecture not in ROPE_PERMUTED_ARCHITECTURES:
        supported = ", ".join(sorted(ROPE_PERMUTED_ARCHITECTURES))
        raise ModelError(
            f"chatty cannot convert adapters for {base.id}: its architecture '{architecture}' is not one of {supported}. "
            "Use the adapter with the torch backend."
        )
    if not isinstance(heads, (int, list)) or not isinstance(kv_heads, (int, list)) or block_count <= 0:
        raise ModelError(f"{base.path} does not state its layer and attention head counts, so adapters for it cannot be converted.")
    return BaseLayout(base.id, architecture, block_count, _per_block(heads, block_count), _per_block(kv_heads, block_count), shapes)


def _per_block(value: int | list[int], block_count: int) -> list[int]:
    return [int(count) for count in value] if isinstance(value, list) else [int(value)] * block_count


def _read_hf_config(folder: Path) -> dict:
    import json

    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelError(f"{folder / 'config.json'} cannot be read: {error}.") from None


def _hf_tensor_shapes(folder: Path, architecture: str, block_count: int) -> dict[str, tuple[int, ...]]:
    """Map a Hugging Face folder's weight shapes to GGUF names and GGUF dimension order."""
    from safetensors import safe_open

    name_map = tensor_name_map(architecture, block_count)
    shapes = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as weights:
            for key in weights.keys():
                gguf_name = name_map.get_name(key, try_suffixes=(".weight", ".bias"))
                if gguf_name is not None:
                    shapes[gguf_name] = tuple(reversed(weights.get_slice(key).get_shape()))
    return shapes


def tensor_name_map(architecture: str, block_count: int):
    """Return gguf's map from Hugging Face module names to GGUF tensor names for one architecture."""
    import gguf

    arch = next(arch for arch, name in gguf.MODEL_ARCH_NAMES.items() if name == architecture)
    return gguf.get_tensor_name_map(arch, block_count)


def permute_for_rope(rows: np.ndarray, head_count: int) -> np.ndarray:
    """Reorder the output rows of a q or k projection from Hugging Face order to llama.cpp's order.

    Hugging Face's rotary embedding pairs dimension i of a head with i + head_dim / 2, while
    llama.cpp pairs adjacent dimensions 2i and 2i + 1. Within each head, the GGUF's row 2i is
    Hugging Face row i and row 2i + 1 is row i + head_dim / 2.
    """
    out_features = rows.shape[0]
    if out_features % (2 * head_count):
        raise ModelError(f"A q/k projection with {out_features} outputs cannot be split into {head_count} heads of even size.")
    half = out_features // head_count // 2
    heads = rows.reshape(head_count, 2, half, *rows.shape[1:])
    return heads.swapaxes(1, 2).reshape(rows.shape)
