"""Conversion of PEFT LoRA adapters to LoRA GGUF files, which llama.cpp attaches to a quantized base.

chatty trains adapters with PEFT on the dequantized model that transformers loads from a GGUF file,
and llama.cpp runs the quantized GGUF. A LoRA GGUF stores, for each adapted base tensor
`<name>.weight`, the pair `<name>.weight.lora_a` (numpy shape rank x in_features) and
`<name>.weight.lora_b` (out_features x rank), which is PEFT's own nn.Linear layout, plus the keys
general.type = "adapter", adapter.type = "lora" and adapter.lora.alpha. llama.cpp scales each pair by
alpha / rank, with the rank read from lora_b, and loads the file only when every pair matches a
base tensor's shape (src/llama-adapter.cpp).

Command line: `python -m chatty.finetune.gguf_lora ADAPTER_FOLDER [--base MODEL] [--output FILE]`.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from chatty.errors import ChattyError, ModelError
from chatty.finetune.gguf_base import (
    ROPE_PERMUTED_ARCHITECTURES,
    BaseLayout,
    permute_for_rope,
    read_base_layout,
    tensor_name_map,
)
from chatty.models.adapters import GGUF_FILE, PEFT_WEIGHTS, AdapterInfo, read_adapter
from chatty.models.catalog import ModelCatalog, ModelInfo

log = logging.getLogger(__name__)

# LoraConfig fields that select a LoRA variant (PEFT 0.21 marks them with is_lora_variant), with why
# llama.cpp cannot run it. A test keeps this list equal to the installed PEFT's.
LORA_VARIANTS = {
    "use_dora": "DoRA rescales each weight by a learned magnitude vector, which llama.cpp's LoRA format cannot store",
    "alora_invocation_tokens": "chatty does not convert activated LoRA (aLoRA) adapters yet",
    "velora_config": "VeLoRA is a PEFT LoRA variant that chatty does not convert",
    "monteclora_config": "MonteCLoRA samples its weights at run time, which llama.cpp cannot do",
    "use_bdlora": "BD-LoRA is a PEFT LoRA variant that chatty does not convert",
    "arrow_config": "Arrow routes between several LoRA experts, which llama.cpp cannot do",
    "kasa_config": "KaSA changes the base weights and adds a diagonal between lora_A and lora_B",
}

# Other LoraConfig settings that a LoRA GGUF cannot carry, with the reason.
UNSUPPORTED_SETTINGS = {
    "modules_to_save": "it trains full copies of modules such as the embeddings or the LM head, which a LoRA GGUF cannot store",
    "trainable_token_indices": "it trains rows of the token embeddings, which a LoRA GGUF cannot store",
    "target_parameters": "it adapts raw parameters, such as MoE experts, instead of linear layers",
    "lora_bias": "it trains a bias for lora_B, which a LoRA GGUF cannot store",
    "fan_in_fan_out": "its weights are stored transposed for Conv1D layers, which this converter does not handle",
    "use_qalora": "QA-LoRA pools the layer input, which llama.cpp does not do",
    "layer_replication": "it repeats base layers, which the GGUF base does not have",
}

# init_lora_weights values whose initialization changed the base weights, so the adapter only fits
# that changed base. PEFT resets the value to True when it saves such an adapter converted to plain LoRA.
BASE_CHANGING_INITS = ("pissa", "corda", "olora", "lora_ga", "loftq")

# Module names of embeddings and LM heads. llama.cpp's token embedding LoRA uses another layout,
# and a tied LM head has no tensor of its own in the GGUF. Both would also drift when the base is
# quantized differently, because they change the logits directly.
EMBEDDING_TARGETS = ("embed_tokens", "lm_head", "wte", "embed_out", "output")

_PEFT_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<part>A|B)(?:\.[^.]+)?\.weight$")


def convert_peft_to_gguf(adapter_dir: Path, output: Path | None = None, base: ModelInfo | None = None) -> Path:
    """Convert a PEFT LoRA adapter folder to a LoRA GGUF for llama.cpp and return the file's path.

    `output` defaults to adapter.gguf in the adapter folder. `base` is the model the adapter was
    trained on, a GGUF file or a Hugging Face folder. It defaults to the base recorded in the
    adapter's metadata. Raises ModelError, naming the setting or tensor, for adapters that llama.cpp
    cannot run.
    """
    started = time.perf_counter()
    adapter = read_adapter(Path(adapter_dir))
    if base is None:
        base = recorded_base(adapter, ModelCatalog())
    elif (adapter.base_model_id or adapter.base_model_hash) and not adapter.fits(base):
        recorded = adapter.base_model_id or "another model"
        raise ModelError(
            f"Adapter '{adapter.name}' was trained on {recorded}, not on {base.id}. "
            f"Convert it against {recorded}, or pick an adapter made for {base.id}."
        )
    check_peft_config(adapter)

    layout = read_base_layout(base)
    pairs = _read_lora_pairs(adapter)
    alpha = _gguf_alpha(adapter)
    tensors = _gguf_tensors(adapter, pairs, layout, alpha)

    output = Path(output) if output is not None else adapter.path / GGUF_FILE
    _write_gguf(output, layout.architecture, adapter.name, alpha, tensors)
    log.info(
        "converted adapter %s to %s in %.2f s (%d tensor pairs, alpha %g, base %s)",
        adapter.path, output, time.perf_counter() - started, len(tensors) // 2, alpha, base.id,
    )
    return output


def recorded_base(adapter: AdapterInfo, catalog: ModelCatalog) -> ModelInfo:
    """Return the base model recorded in the adapter's metadata, found in the catalog."""
    if adapter.base_model_id is None:
        raise ModelError(
            f"Adapter '{adapter.name}' records no base model, so it cannot be converted without one. "
            "Pass the base model (--base MODEL)."
        )
    base = catalog.resolve(adapter.base_model_id)
    adapter.check_fits(base)
    return base


def check_peft_config(adapter: AdapterInfo) -> None:
    """Raise ModelError when the adapter's PEFT settings describe something a LoRA GGUF cannot carry."""
    config = adapter.peft_config
    for key, reason in {**LORA_VARIANTS, **UNSUPPORTED_SETTINGS}.items():
        if config.get(key):
            raise ModelError(
                f"Adapter '{adapter.name}' cannot be converted for llama.cpp because it sets {key}: {reason}. "
                "Use it with the torch backend, or train it again without that setting."
            )
    if config.get("bias", "none") != "none":
        raise ModelError(
            f"Adapter '{adapter.name}' cannot be converted for llama.cpp because it trains biases (bias='{config['bias']}'), "
            "which a LoRA GGUF cannot store. Use it with the torch backend, or train it again with bias='none'."
        )
    init = str(config.get("init_lora_weights", True)).lower()
    if init.startswith(BASE_CHANGING_INITS):
        raise ModelError(
            f"Adapter '{adapter.name}' cannot be converted for llama.cpp because its initialization "
            f"(init_lora_weights='{config['init_lora_weights']}') changed the base weights, so it does not fit the original base. "
            "Save it converted to plain LoRA (PEFT's path_initial_model_for_weight_conversion) and convert that."
        )
    embedding_targets = [module for module in adapter.target_modules if module.split(".")[-1] in EMBEDDING_TARGETS]
    if embedding_targets:
        raise ModelError(_embedding_message(adapter, embedding_targets[0]))


def _embedding_message(adapter: AdapterInfo, module: str) -> str:
    return (
        f"Adapter '{adapter.name}' cannot be converted for llama.cpp because it adapts {module}: a LoRA GGUF "
        "for a quantized base carries no embedding or LM head updates. "
        "Use it with the torch backend, or train it again on the attention and MLP layers only."
    )


def _read_lora_pairs(adapter: AdapterInfo) -> dict[str, dict[str, np.ndarray]]:
    """Read lora_A and lora_B of every adapted module as float32, keyed by module name."""
    from safetensors import safe_open

    from safetensors import SafetensorError

    pairs: dict[str, dict[str, np.ndarray]] = {}
    path = adapter.path / PEFT_WEIGHTS
    try:
        # framework="pt" reads bfloat16 too, which numpy has no type for. safetensors never unpickles.
        with safe_open(str(path), framework="pt") as weights:
            for key in weights.keys():
                match = _PEFT_KEY.match(key)
                if match is None:
                    raise ModelError(_unexpected_tensor_message(adapter, key))
                tensor = weights.get_tensor(key).float().numpy()
                pairs.setdefault(match["module"], {})[match["part"]] = tensor
    except (OSError, SafetensorError) as error:
        raise ModelError(f"{path} cannot be read: {error}. Save the adapter again.") from None
    if not pairs:
        raise ModelError(f"Adapter '{adapter.name}' has no LoRA weights in {PEFT_WEIGHTS}.")
    return pairs


def _unexpected_tensor_message(adapter: AdapterInfo, key: str) -> str:
    # PEFT saves embedding LoRA as lora_embedding_A/B, and a whole embedding or LM head as
    # <module>.base_layer.weight when an adapter targets one.
    module = re.sub(r"^base_model\.model\.", "", key)
    module = re.sub(r"\.(lora_embedding_[AB]|base_layer|weight)\b.*$", "", module)
    if "lora_embedding" in key or module.split(".")[-1] in EMBEDDING_TARGETS:
        return _embedding_message(adapter, module)
    if "lora_magnitude_vector" in key:
        return f"Adapter '{adapter.name}' cannot be converted for llama.cpp because it contains DoRA magnitudes ({key}). Use it with the torch backend."
    return (
        f"Adapter '{adapter.name}' cannot be converted for llama.cpp because {PEFT_WEIGHTS} contains '{key}', "
        "which is not a lora_A or lora_B weight. Use it with the torch backend."
    )


def _gguf_alpha(adapter: AdapterInfo) -> float:
    """Return the adapter.lora.alpha that makes llama.cpp's alpha / rank equal PEFT's scale at rank r.

    PEFT scales by lora_alpha / r, or by lora_alpha / sqrt(r) with use_rslora. llama.cpp always
    divides by the rank, so rank-stabilized adapters store lora_alpha * sqrt(r). That keeps the
    tensors as PEFT saved them and the runtime adapter scale linear.
    """
    config = adapter.peft_config
    rank = config.get("r")
    lora_alpha = config.get("lora_alpha")
    if not isinstance(rank, int) or rank <= 0 or not isinstance(lora_alpha, (int, float)):
        raise ModelError(f"Adapter '{adapter.name}' has an invalid r ({rank!r}) or lora_alpha ({lora_alpha!r}) in its adapter_config.json.")
    alpha = float(lora_alpha) * math.sqrt(rank) if config.get("use_rslora") else float(lora_alpha)
    if alpha == 0:
        # llama.cpp reads alpha 0 as "no scaling", while PEFT's scale would be 0.
        raise ModelError(f"Adapter '{adapter.name}' has lora_alpha 0, so it changes nothing. Train it again with a positive lora_alpha.")
    return alpha


def _peft_scale(config: dict, module: str, rank: int) -> float:
    """Return the scale PEFT applies to one module, with alpha_pattern taken into account."""
    alpha = float(config["lora_alpha"])
    for pattern, pattern_alpha in (config.get("alpha_pattern") or {}).items():
        # PEFT matches a pattern against the end of the module name (peft.utils.other.get_pattern_key).
        if re.match(rf"(.*\.)?({pattern})$", module):
            alpha = float(pattern_alpha)
            break
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def _gguf_tensors(adapter: AdapterInfo, pairs: dict, layout: BaseLayout, alpha: float) -> dict[str, np.ndarray]:
    """Turn PEFT lora_A/lora_B pairs into LoRA GGUF tensors, checked against the base's shapes."""
    name_map = tensor_name_map(layout.architecture, layout.block_count)
    permuted = ROPE_PERMUTED_ARCHITECTURES[layout.architecture]
    tensors: dict[str, np.ndarray] = {}
    for module, pair in sorted(pairs.items()):
        if set(pair) != {"A", "B"}:
            raise ModelError(
                f"Adapter '{adapter.name}' has only lora_{''.join(pair)} for {module}, so {PEFT_WEIGHTS} is incomplete. "
                "Save the adapter again."
            )
        lora_a, lora_b = pair["A"], pair["B"]

        gguf_name = name_map.get_name(module)
        if gguf_name is None:
            raise ModelError(
                f"Adapter '{adapter.name}' adapts {module}, which has no tensor in a '{layout.architecture}' GGUF. "
                "Use it with the torch backend."
            )
        if gguf_name in ("token_embd", "output"):
            raise ModelError(_embedding_message(adapter, module))
        _check_shapes(adapter, module, gguf_name, lora_a, lora_b, layout)

        # PEFT adds scale * B @ A and llama.cpp adds alpha / rank * B @ A. Scaling B makes up any
        # difference, which only alpha_pattern entries leave.
        rank = lora_a.shape[0]
        correction = _peft_scale(adapter.peft_config, module, rank) / (alpha / rank)
        if not math.isclose(correction, 1.0, rel_tol=1e-6):
            lora_b = lora_b * np.float32(correction)

        block = _block_index(gguf_name)
        if permuted and gguf_name.endswith(".attn_q"):
            lora_b = permute_for_rope(lora_b, layout.head_counts[block])
        elif permuted and gguf_name.endswith(".attn_k"):
            lora_b = permute_for_rope(lora_b, layout.kv_head_counts[block])

        tensors[f"{gguf_name}.weight.lora_a"] = np.ascontiguousarray(lora_a, dtype=np.float32)
        tensors[f"{gguf_name}.weight.lora_b"] = np.ascontiguousarray(lora_b, dtype=np.float32)
    return tensors


def _check_shapes(adapter: AdapterInfo, module: str, gguf_name: str, lora_a, lora_b, layout: BaseLayout) -> None:
    if lora_a.ndim != 2 or lora_b.ndim != 2 or lora_a.shape[0] != lora_b.shape[1]:
        raise ModelError(
            f"Adapter '{adapter.name}' has lora_A {tuple(lora_a.shape)} and lora_B {tuple(lora_b.shape)} for {module}, "
            "which do not form a LoRA pair, so the file is damaged. Save the adapter again."
        )
    if not layout.tensor_shapes:
        return
    base_shape = layout.tensor_shapes.get(f"{gguf_name}.weight")
    expected = (lora_a.shape[1], lora_b.shape[0])
    if base_shape is None or tuple(base_shape) != expected:
        found = f"has shape {tuple(base_shape)}" if base_shape else "does not exist"
        raise ModelError(
            f"Adapter '{adapter.name}' does not fit the base model {layout.model_id}: {module} needs {gguf_name}.weight "
            f"with {expected[0]} inputs and {expected[1]} outputs, but that tensor {found} in {layout.model_id}. "
            "Pass the model the adapter was trained on."
        )


def _block_index(gguf_name: str) -> int:
    match = re.match(r"blk\.(\d+)\.", gguf_name)
    return int(match[1]) if match else 0


def _write_gguf(output: Path, architecture: str, name: str, alpha: float, tensors: dict[str, np.ndarray]) -> None:
    """Write the LoRA GGUF to a temporary file beside `output`, then rename it into place."""
    import gguf

    output.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    os.close(handle)
    try:
        writer = gguf.GGUFWriter(temporary, architecture)
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        writer.add_name(name)
        for tensor_name, tensor in tensors.items():
            writer.add_tensor(tensor_name, tensor)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(temporary, output)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    """Convert one adapter folder from the command line; prints the written file's path."""
    parser = argparse.ArgumentParser(
        prog="python -m chatty.finetune.gguf_lora",
        description="Convert a PEFT LoRA adapter folder to a LoRA GGUF (adapter.gguf) for the llama.cpp backend.",
    )
    parser.add_argument("adapter", type=Path, help="adapter folder with adapter_config.json and adapter_model.safetensors")
    parser.add_argument("--base", metavar="MODEL", help="base model id or path (default: the base recorded in the adapter's metadata)")
    parser.add_argument("--output", type=Path, metavar="FILE", help=f"file to write (default: ADAPTER/{GGUF_FILE})")
    args = parser.parse_args(argv)

    from chatty.config import load_config, resolve_paths
    from chatty.logs import setup_logging

    try:
        paths = resolve_paths(load_config())
        setup_logging(paths.log_file)
        catalog = ModelCatalog(paths.model_dirs)
        base = catalog.resolve(args.base) if args.base else recorded_base(read_adapter(args.adapter), catalog)
        written = convert_peft_to_gguf(args.adapter, args.output, base)
    except ChattyError as error:
        print(f"chatty: {error}", file=sys.stderr)
        return error.exit_status
    print(written)
    return 0


if __name__ == "__main__":
    sys.exit(main())
