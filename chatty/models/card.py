"""Model and adapter cards: shape, size and format facts read from file headers, never from weights.

A GGUF file's metadata and tensor table give everything for a model card, and a Hugging Face folder's
config.json plus its safetensors headers do the same. An adapter card reads adapter_config.json and
the header of adapter_model.safetensors, so no tensor is loaded to count parameters.
"""

from __future__ import annotations

import json
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from chatty.errors import ModelError
from chatty.models.adapters import GGUF_FILE, PEFT_WEIGHTS, AdapterInfo
from chatty.models.catalog import ModelInfo

# safetensors rejects headers above 100 MB; a larger length field means a damaged file.
MAX_SAFETENSORS_HEADER = 100_000_000

HeadCount = int | list[int] | None


@dataclass(frozen=True)
class ModelCard:
    """Architecture and size facts of one model; None where the file does not record a value."""

    name: str
    path: Path
    format: str
    architecture: str
    parameters: int
    layers: int | None
    hidden_size: int | None
    feed_forward_size: int | None
    attention_heads: HeadCount
    kv_heads: HeadCount
    vocab_size: int | None
    context_length: int | None
    # RoPE settings by name, e.g. {"freq_base": 100000.0, "dimension_count": 64}.
    rope: dict = field(default_factory=dict)
    # "Q4_1" for a GGUF file type, the dtype of a Hugging Face folder, or its quantization method.
    quantization: str | None = None
    # Tensor type name -> number of tensors of that type, most common first.
    tensor_types: dict[str, int] = field(default_factory=dict)
    file_size: int = 0

    def rows(self) -> list[tuple[str, str]]:
        """Return (label, value) rows for display."""
        rope = ", ".join(f"{key} {value}" for key, value in self.rope.items()) or "not recorded"
        tensor_types = ", ".join(f"{name} × {count}" for name, count in self.tensor_types.items())
        return [
            ("Name", self.name),
            ("File", str(self.path)),
            ("Format", self.format),
            ("Architecture", self.architecture),
            ("Parameters", f"{self.parameters:,} ({format_count(self.parameters)})"),
            ("Layers", _text(self.layers)),
            ("Hidden size", _text(self.hidden_size)),
            ("Feed-forward size", _text(self.feed_forward_size)),
            ("Attention heads", _heads_text(self.attention_heads)),
            ("KV heads", _heads_text(self.kv_heads)),
            ("Vocabulary size", _text(self.vocab_size)),
            ("Context length", _text(self.context_length)),
            ("RoPE", rope),
            ("Quantization", self.quantization or "not recorded"),
            ("Tensor types", tensor_types or "not recorded"),
            ("File size", format_bytes(self.file_size)),
        ]


@dataclass(frozen=True)
class AdapterCard:
    """LoRA hyperparameters and size of one adapter folder."""

    name: str
    path: Path
    base_model: str | None
    rank: int | None
    alpha: float | None
    dropout: float | None
    target_modules: list[str]
    trainable_parameters: int
    tensor_count: int
    weights_size: int
    has_gguf: bool
    created: str | None = None
    validation_loss_before: float | None = None
    validation_loss_after: float | None = None

    @property
    def scale(self) -> float | None:
        """alpha / rank, the factor that LoRA multiplies its update by."""
        if not self.rank or self.alpha is None:
            return None
        return self.alpha / self.rank

    def rows(self) -> list[tuple[str, str]]:
        rows = [
            ("Adapter", self.name),
            ("Folder", str(self.path)),
            ("Base model", self.base_model or "not recorded"),
            ("Rank", _text(self.rank)),
            ("Alpha", _text(self.alpha)),
            ("Scale (alpha / rank)", f"{self.scale:g}" if self.scale is not None else "unknown"),
            ("Dropout", _text(self.dropout)),
            ("Target modules", ", ".join(self.target_modules) or "not recorded"),
            ("Trainable parameters", f"{self.trainable_parameters:,} ({format_count(self.trainable_parameters)})"),
            ("LoRA tensors", str(self.tensor_count)),
            ("Weights file size", format_bytes(self.weights_size)),
            ("llama.cpp GGUF", "yes" if self.has_gguf else "no (torch backend only)"),
        ]
        if self.created:
            rows.append(("Created", self.created))
        if self.validation_loss_before is not None and self.validation_loss_after is not None:
            rows.append(("Validation loss", f"{self.validation_loss_before:.4f} before, {self.validation_loss_after:.4f} after"))
        return rows


def model_card(model: ModelInfo) -> ModelCard:
    """Read the card of a GGUF file or a Hugging Face folder. Raises ModelError for unreadable files."""
    if model.format == "gguf":
        return _gguf_card(model)
    return _folder_card(model)


def adapter_card(adapter: AdapterInfo) -> AdapterCard:
    """Read the card of a PEFT LoRA adapter folder. Raises ModelError when its weights header is unreadable."""
    weights = adapter.path / PEFT_WEIGHTS
    tensors = read_safetensors_header(weights)
    config = adapter.peft_config
    metadata = adapter.metadata
    return AdapterCard(
        name=adapter.name,
        path=adapter.path,
        base_model=adapter.base_model_id or config.get("base_model_name_or_path"),
        rank=adapter.rank,
        alpha=adapter.alpha,
        dropout=config.get("lora_dropout"),
        target_modules=adapter.target_modules,
        trainable_parameters=sum(_element_count(entry["shape"]) for entry in tensors.values()),
        tensor_count=len(tensors),
        weights_size=weights.stat().st_size,
        has_gguf=(adapter.path / GGUF_FILE).is_file(),
        created=metadata.get("created"),
        validation_loss_before=metadata.get("validation_loss_before"),
        validation_loss_after=metadata.get("validation_loss_after"),
    )


def read_safetensors_header(path: Path) -> dict[str, dict]:
    """Return tensor name -> {"dtype", "shape", ...} from a safetensors file's JSON header, reading no tensor data."""
    try:
        with open(path, "rb") as file:
            length_field = file.read(8)
            if len(length_field) < 8:
                raise ModelError(f"{path} is not a safetensors file: it is shorter than its 8-byte header length.")
            (length,) = struct.unpack("<Q", length_field)
            if length > MAX_SAFETENSORS_HEADER:
                raise ModelError(f"{path} is not a valid safetensors file: its header length {length:,} is impossible.")
            header = json.loads(file.read(length))
    except FileNotFoundError:
        raise ModelError(f"Weights file not found: {path}.") from None
    except (UnicodeDecodeError, ValueError) as error:
        raise ModelError(f"{path} is not a valid safetensors file: its header is not JSON ({error}).") from None
    tensors = {name: entry for name, entry in header.items() if name != "__metadata__"} if isinstance(header, dict) else None
    if tensors is None or not all(isinstance(entry, dict) and isinstance(entry.get("shape"), list) for entry in tensors.values()):
        raise ModelError(f"{path} is not a valid safetensors file: its header does not describe tensors.")
    return tensors


def _gguf_card(model: ModelInfo) -> ModelCard:
    from gguf.constants import GGMLQuantizationType, LlamaFileType

    from chatty.models.gguf_info import read_gguf_info

    info = read_gguf_info(model.path)
    value = info.arch_value

    types = Counter()
    for tensor in info.tensors:
        try:
            types[GGMLQuantizationType(tensor.type_id).name] += 1
        except ValueError:
            types[f"type {tensor.type_id}"] += 1

    quantization = None
    file_type = info.metadata.get("general.file_type")
    if file_type is not None:
        try:
            quantization = LlamaFileType(file_type).name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            quantization = f"file type {file_type}"

    vocab_size = value("vocab_size") or info.array_lengths.get("tokenizer.ggml.tokens")
    rope_keys = ("freq_base", "dimension_count", "scaling.type", "scaling.factor", "scaling.original_context_length")
    rope = {key: value(f"rope.{key}") for key in rope_keys if value(f"rope.{key}") is not None}
    return ModelCard(
        name=str(info.metadata.get("general.name") or model.id),
        path=model.path,
        format="GGUF",
        architecture=info.architecture,
        parameters=info.parameter_count,
        layers=value("block_count"),
        hidden_size=value("embedding_length"),
        feed_forward_size=value("feed_forward_length"),
        attention_heads=value("attention.head_count"),
        kv_heads=value("attention.head_count_kv", value("attention.head_count")),
        vocab_size=vocab_size,
        context_length=value("context_length"),
        rope=rope,
        quantization=quantization,
        tensor_types=dict(types.most_common()),
        file_size=model.path.stat().st_size,
    )


def _folder_card(model: ModelInfo) -> ModelCard:
    config_file = model.path / "config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelError(f"{config_file} cannot be read: {error}.") from None
    # Multimodal configs keep the language model's numbers under text_config.
    text = config.get("text_config") or config

    rope = dict(text.get("rope_parameters") or {})
    if "rope_theta" in text:
        rope.setdefault("rope_theta", text["rope_theta"])
    if text.get("rope_scaling"):
        rope.update({f"scaling {key}": value for key, value in text["rope_scaling"].items()})

    quantization = (config.get("quantization_config") or {}).get("quant_method")
    dtype = config.get("dtype") or config.get("torch_dtype")
    weights = sorted(model.path.glob("*.safetensors"))
    dtypes = Counter()
    parameters = 0
    for file in weights:
        for entry in read_safetensors_header(file).values():
            parameters += _element_count(entry["shape"])
            dtypes[str(entry.get("dtype"))] += 1

    heads = text.get("num_attention_heads")
    architectures = config.get("architectures") or []
    return ModelCard(
        name=model.id,
        path=model.path,
        format="Hugging Face folder (safetensors)",
        architecture=architectures[0] if architectures else str(config.get("model_type", "unknown")),
        parameters=parameters,
        layers=text.get("num_hidden_layers"),
        hidden_size=text.get("hidden_size"),
        feed_forward_size=text.get("intermediate_size"),
        attention_heads=heads,
        kv_heads=text.get("num_key_value_heads", heads),
        vocab_size=text.get("vocab_size"),
        context_length=text.get("max_position_embeddings"),
        rope=rope,
        quantization=quantization or (str(dtype) if dtype else None),
        tensor_types=dict(dtypes.most_common()),
        file_size=sum(file.stat().st_size for file in weights),
    )


def _element_count(shape: list[int]) -> int:
    count = 1
    for dimension in shape:
        count *= dimension
    return count


def format_count(count: int) -> str:
    """Write a count the way model sizes are written: 135M, 1.5B."""
    for limit, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= limit:
            return f"{count / limit:.3g}{suffix}"
    return str(count)


def format_bytes(size: int) -> str:
    for limit, unit in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if size >= limit:
            return f"{size / limit:.1f} {unit} ({size:,} bytes)"
    return f"{size:,} bytes"


def _text(value) -> str:
    if value is None:
        return "not recorded"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _heads_text(heads: HeadCount) -> str:
    """Write a head count; some GGUF files (OpenELM, for example) record one count per layer."""
    if isinstance(heads, list):
        if not heads:
            return "not recorded"
        if min(heads) == max(heads):
            return str(heads[0])
        return f"{min(heads)} to {max(heads)} (varies by layer)"
    return _text(heads)
