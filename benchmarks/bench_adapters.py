"""Adapter switching on llama.cpp: the adapter API against reloading the model with the adapter."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from benchmarks.common import Record, median, ratio_record


def make_adapter(folder: Path, cache_dir: Path) -> Path:
    """Save a LoRA with random non-zero weights for the embedded model and convert it to GGUF."""
    import torch
    from peft import LoraConfig, get_peft_model

    from chatty.backends.torch_loading import load_model
    from chatty.finetune.gguf_lora import convert_peft_to_gguf
    from chatty.models.adapters import base_model_record, write_metadata
    from chatty.models.catalog import ModelCatalog

    model_info = ModelCatalog().default()
    loaded = load_model(model_info, "cpu", torch.float32, cache_dir / "torch")
    torch.manual_seed(0)
    peft_model = get_peft_model(loaded.model, LoraConfig(r=8, lora_alpha=16, task_type="CAUSAL_LM",
                                                         target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.02)
    peft_model.save_pretrained(folder)
    write_metadata(folder, {"base_model": base_model_record(model_info)})
    return convert_peft_to_gguf(folder)


def run(quick: bool, runs: int, cache_dir: Path) -> list[Record]:
    import llama_cpp

    from chatty.backends.base import LoadOptions
    from chatty.backends.llama import LlamaBackend
    from chatty.models.adapters import read_adapter
    from chatty.models.catalog import ModelCatalog

    model = ModelCatalog().default()
    with tempfile.TemporaryDirectory(prefix="chatty-bench-adapter-") as folder:
        gguf = make_adapter(Path(folder) / "random", cache_dir)
        adapter = read_adapter(Path(folder) / "random")
        backend = LlamaBackend(LoadOptions(n_ctx=2048))
        backend.load(model)
        backend.set_adapter(adapter)  # reads the file once; later switches reuse the handle
        backend.set_adapter(None)

        switches, reloads = [], []
        repeats = 3 if quick else max(5, runs)
        for _ in range(repeats):
            started = time.perf_counter()
            backend.set_adapter(adapter)
            switches.append((time.perf_counter() - started) * 1000)
            backend.set_adapter(None)

            started = time.perf_counter()
            llm = llama_cpp.Llama(model_path=str(model.path), n_ctx=2048, lora_path=str(gguf), verbose=False)
            reloads.append((time.perf_counter() - started) * 1000)
            llm.close()
        backend.close()
    note = "rank-8 LoRA on the attention projections; the model file is in the page cache"
    return [
        Record("Adapter switch, llama.cpp adapter API", median(switches), "ms", switches, note=note),
        Record("Adapter switch by reloading the model with the adapter", median(reloads), "ms", reloads, note=note),
        ratio_record("Adapter switch: reload time / switch time", reloads, switches, 5.0),
    ]
