"""LoRA adapters on the llama.cpp backend: agreement with PEFT, switching, detaching and rejection.

Adapters are made with real PEFT on the embedded model as transformers dequantizes it, converted
to LoRA GGUF, and attached to the Q4_1 model in llama.cpp. Their lora_B values are random and
large enough to change the next-token logits clearly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from chatty.backends.base import GenerationParams, LoadOptions
from chatty.backends.llama import LlamaBackend
from chatty.errors import ModelError
from chatty.finetune.gguf_lora import convert_peft_to_gguf
from chatty.models.adapters import AdapterInfo, base_model_record, read_adapter, write_metadata
from chatty.models.catalog import describe_path

PROMPT = [{"role": "user", "content": "Name three colors of the rainbow."}]
GREEDY = GenerationParams(temperature=0.0, max_tokens=12, seed=0)
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# Adapter name -> LoRA settings and the standard deviation of its random lora_B values. Adapters on
# q_proj or k_proj alone need larger values: they change the logits less, and a smaller change is
# lost in the difference between Q4_1 in llama.cpp and float32 in torch.
ADAPTER_SPECS = {
    "all_linear": ({"target_modules": ALL_LINEAR}, 0.1),
    "q_proj": ({"target_modules": ["q_proj"]}, 0.5),
    "k_proj": ({"target_modules": ["k_proj"]}, 0.5),
    "rslora": ({"target_modules": ALL_LINEAR, "use_rslora": True}, 0.05),
    "mlp": ({"target_modules": ["gate_proj", "up_proj", "down_proj"]}, 0.1),
}


@dataclass
class BuiltAdapter:
    info: AdapterInfo
    torch_logits: np.ndarray  # next-token logits of the PEFT model for the prompt


@pytest.fixture(scope="module")
def backend(embedded_model):
    """A backend of its own: these tests attach adapters, which would change the shared llama_backend."""
    backend = LlamaBackend(LoadOptions(n_ctx=512))
    backend.load(embedded_model)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def prompt_ids(backend) -> list[int]:
    return backend.tokenize_prompt(PROMPT)


@pytest.fixture(scope="module")
def hf_model(embedded_model):
    """The embedded model as transformers dequantizes it, in float32 (loading took 12 to 18 s on 2 CPU cores)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        embedded_model.path.parent, gguf_file=embedded_model.path.name, dtype=torch.float32, local_files_only=True
    )
    return model.eval()


def torch_logits(model, prompt_ids: list[int]) -> np.ndarray:
    import torch

    # One thread: on 2 CPU cores shared with other test runs, a forward pass took about 0.9 s on
    # two threads and 0.13 s on one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            return model(torch.tensor([prompt_ids]), logits_to_keep=1).logits[0, -1].numpy().copy()
    finally:
        torch.set_num_threads(threads)


def llama_logits(backend: LlamaBackend, prompt_ids: list[int]) -> np.ndarray:
    """Evaluate the prompt from an empty cache and return llama.cpp's next-token logits."""
    import llama_cpp

    llm = backend.llm
    llm.reset()
    llm.eval(prompt_ids)
    row = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
    return np.ctypeslib.as_array(row, shape=(llm.n_vocab(),)).copy()


def make_adapter(model, folder: Path, lora_options: dict, b_std: float, base=None, seed: int = 0) -> None:
    """Save a PEFT adapter of `model` with random lora_B values, leaving `model` unchanged."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, **lora_options))
    try:
        with torch.no_grad():
            for name, parameter in peft_model.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(std=b_std)
        peft_model.save_pretrained(folder)
    finally:
        peft_model.unload()
    if base is not None:
        write_metadata(folder, {"base_model": base_model_record(base)})


@pytest.fixture(scope="module")
def torch_base_logits(hf_model, prompt_ids) -> np.ndarray:
    return torch_logits(hf_model, prompt_ids)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, hf_model, embedded_model, prompt_ids) -> dict[str, BuiltAdapter]:
    from peft import PeftModel

    built = {}
    folder = tmp_path_factory.mktemp("adapters")
    for seed, (name, (lora_options, b_std)) in enumerate(ADAPTER_SPECS.items()):
        make_adapter(hf_model, folder / name, lora_options, b_std, embedded_model, seed)
        convert_peft_to_gguf(folder / name)

        # Reload the saved adapter, so torch computes with exactly what the converter read.
        peft_model = PeftModel.from_pretrained(hf_model, folder / name)
        logits = torch_logits(peft_model, prompt_ids)
        peft_model.unload()
        built[name] = BuiltAdapter(read_adapter(folder / name), logits)
    return built


@pytest.fixture(scope="module")
def tiny_adapter(tmp_path_factory):
    """A converted adapter for a tiny random Llama whose shapes differ from the embedded model's, and that model.

    Tests rewrite the adapter's metadata to what they need.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=256, tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    base_folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(base_folder)
    base = describe_path(base_folder)

    folder = tmp_path_factory.mktemp("tiny-adapter")
    make_adapter(model, folder, {"target_modules": ["q_proj", "v_proj"]}, 0.1, base)
    convert_peft_to_gguf(folder, base=base)
    return folder, base


@pytest.mark.parametrize("name", ["all_linear", "q_proj", "k_proj", "rslora"])
def test_logit_change_matches_torch(name, backend, adapters, prompt_ids, torch_base_logits):
    base_logits = llama_logits(backend, prompt_ids)
    backend.set_adapter(adapters[name].info)
    try:
        adapted_logits = llama_logits(backend, prompt_ids)
    finally:
        backend.set_adapter(None)

    torch_delta = adapters[name].torch_logits - torch_base_logits
    llama_delta = adapted_logits - base_logits
    correlation = np.corrcoef(torch_delta, llama_delta)[0, 1]
    # The least-squares slope of llama.cpp's change against torch's. A wrong scale moves it away from 1.
    slope = float(torch_delta @ llama_delta / (torch_delta @ torch_delta))
    assert correlation > 0.95
    assert 0.8 < slope < 1.25


def test_detach_restores_base_logits(backend, adapters, prompt_ids):
    before = llama_logits(backend, prompt_ids)
    backend.set_adapter(adapters["all_linear"].info)
    adapted = llama_logits(backend, prompt_ids)
    backend.set_adapter(None)
    after = llama_logits(backend, prompt_ids)
    assert not np.allclose(adapted, before)
    assert np.array_equal(after, before)
    assert backend.adapter is None


def test_switch_back_repeats_logits(backend, adapters, prompt_ids):
    backend.set_adapter(adapters["all_linear"].info)
    first = llama_logits(backend, prompt_ids)
    backend.set_adapter(adapters["mlp"].info)
    other = llama_logits(backend, prompt_ids)
    backend.set_adapter(adapters["all_linear"].info)
    again = llama_logits(backend, prompt_ids)
    backend.set_adapter(None)
    assert not np.allclose(other, first)
    assert np.array_equal(again, first)


def test_switching_keeps_model_loaded(backend, adapters):
    llm = backend.llm
    model_pointer = llm._model.model
    for name in ["q_proj", "k_proj", "q_proj", None, "k_proj"]:
        backend.set_adapter(adapters[name].info if name else None)
    backend.set_adapter(None)
    assert backend.llm is llm
    assert backend.llm._model.model == model_pointer


def test_switching_back_reads_no_file(backend, adapters, caplog):
    backend.set_adapter(adapters["q_proj"].info)
    backend.set_adapter(adapters["k_proj"].info)
    caplog.set_level(logging.DEBUG, logger="chatty.llama_cpp")
    backend.set_adapter(adapters["q_proj"].info)
    backend.set_adapter(adapters["k_proj"].info)
    backend.set_adapter(None)
    # llama.cpp logs "loading lora adapter from '<path>'" each time it reads a LoRA GGUF.
    native_lines = [record.getMessage() for record in caplog.records if record.name == "chatty.llama_cpp"]
    assert not [line for line in native_lines if "loading lora adapter" in line]


def test_adapter_name_follows_switches(backend, adapters):
    backend.set_adapter(adapters["mlp"].info)
    assert backend.adapter_name == "mlp"
    backend.set_adapter(None)
    assert backend.adapter_name is None


def test_switch_drops_cached_prompt(backend, adapters):
    base_text = backend.generate(PROMPT, GREEDY).text()
    # The prompt is now in the KV cache, computed without the adapter.
    backend.set_adapter(adapters["all_linear"].info)
    adapted_text = backend.generate(PROMPT, GREEDY).text()
    backend.llm.reset()
    fresh_text = backend.generate(PROMPT, GREEDY).text()
    backend.set_adapter(None)
    assert adapted_text != base_text
    assert adapted_text == fresh_text


def test_mismatched_gguf_rejected(backend, embedded_model, tiny_adapter, prompt_ids):
    folder, _ = tiny_adapter
    text_before = backend.generate(PROMPT, GREEDY).text()
    logits_before = llama_logits(backend, prompt_ids)
    # Metadata that claims the embedded model leaves only llama.cpp's own shape check to catch it.
    write_metadata(folder, {"base_model": base_model_record(embedded_model)})
    adapter = read_adapter(folder)

    with pytest.raises(ModelError) as error:
        backend.set_adapter(adapter)
    message = str(error.value)
    assert f"'{adapter.name}'" in message
    assert embedded_model.id in message
    assert "has shape" in message
    assert backend.adapter is None
    assert backend.generate(PROMPT, GREEDY).text() == text_before
    assert np.array_equal(llama_logits(backend, prompt_ids), logits_before)


def test_failed_switch_keeps_current_adapter(backend, adapters, embedded_model, tiny_adapter, prompt_ids):
    folder, _ = tiny_adapter
    write_metadata(folder, {"base_model": base_model_record(embedded_model)})
    backend.set_adapter(adapters["mlp"].info)
    expected = llama_logits(backend, prompt_ids)
    with pytest.raises(ModelError):
        backend.set_adapter(read_adapter(folder))
    assert backend.adapter_name == "mlp"
    assert np.array_equal(llama_logits(backend, prompt_ids), expected)
    backend.set_adapter(None)


def test_adapter_for_other_base_rejected(backend, tiny_adapter, embedded_model):
    folder, tiny_base = tiny_adapter
    write_metadata(folder, {"base_model": base_model_record(tiny_base)})
    with pytest.raises(ModelError, match="was trained on") as error:
        backend.set_adapter(read_adapter(folder))
    assert tiny_base.id in str(error.value)
    assert embedded_model.id in str(error.value)
    assert backend.adapter is None


def test_adapter_without_gguf_rejected(backend, hf_model, embedded_model, tmp_path):
    make_adapter(hf_model, tmp_path, {"target_modules": ["q_proj"]}, 0.1, embedded_model)
    with pytest.raises(ModelError, match="python -m chatty.finetune.gguf_lora"):
        backend.set_adapter(read_adapter(tmp_path))
    assert backend.adapter is None


def test_close_frees_adapters(embedded_model, adapters, prompt_ids):
    backend = LlamaBackend(LoadOptions(n_ctx=256))
    backend.load(embedded_model)
    backend.set_adapter(adapters["q_proj"].info)
    backend.close()
    assert backend.adapter is None

    # A fresh load reads the file again and attaches it, with no handle left over from before.
    backend.load(embedded_model)
    backend.set_adapter(adapters["q_proj"].info)
    assert backend.adapter_name == "q_proj"
    assert llama_logits(backend, prompt_ids).shape == (backend.llm.n_vocab(),)
    backend.close()
