"""LoRA adapters on the PyTorch backend: real PEFT adapters made here on the embedded model."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest

from chatty.errors import ModelError
from chatty.models.adapters import PEFT_WEIGHTS, base_model_record, read_adapter, write_metadata

MESSAGES = [{"role": "user", "content": "Name three colors."}]


@pytest.fixture(scope="module")
def base_copy(torch_backend, embedded_model, torch_cache_dir):
    """A second copy of the base weights to make adapters on, read from the backend's safetensors cache."""
    from transformers import AutoModelForCausalLM

    folder = torch_cache_dir / "torch" / embedded_model.file_hash()
    return AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)


@pytest.fixture(autouse=True)
def detached(torch_backend):
    """Start and end every test with no adapter attached."""
    torch_backend.set_adapter(None)
    yield
    torch_backend.set_adapter(None)


def make_lora(base, folder: Path, seed: int, target_modules: list[str], base_record: dict) -> Path:
    """Save a PEFT LoRA adapter whose lora_B weights are random, so it changes the model's output."""
    import torch
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, lora_alpha=8, target_modules=target_modules))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    peft_model.save_pretrained(folder)
    write_metadata(folder, {"base_model": base_record})
    return folder


@pytest.fixture(scope="module")
def adapter_folders(tmp_path_factory, base_copy, embedded_model) -> dict[str, Path]:
    record = base_model_record(embedded_model)
    root = tmp_path_factory.mktemp("adapters")
    return {
        "colors": make_lora(base_copy, root / "colors", 1, ["q_proj", "v_proj"], record),
        "shapes": make_lora(base_copy, root / "shapes", 2, ["q_proj", "k_proj", "o_proj"], record),
    }


@pytest.fixture(scope="module")
def mismatched_folder(tmp_path_factory, embedded_model) -> Path:
    """A LoRA made for a tiny random Llama (hidden size 64), with metadata that names the real base."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=256,
    )
    root = tmp_path_factory.mktemp("mismatched")
    LlamaForCausalLM(config).save_pretrained(root / "tiny-llama")
    tiny = LlamaForCausalLM.from_pretrained(root / "tiny-llama", local_files_only=True)
    return make_lora(tiny, root / "tiny-lora", 3, ["q_proj", "v_proj"], base_model_record(embedded_model))


@pytest.fixture(scope="module")
def prompt(torch_backend) -> list[int]:
    return torch_backend.tokenize_prompt(MESSAGES)


def logits(backend, prompt: list[int]):
    import torch

    with torch.inference_mode():
        return backend.torch_model(torch.tensor([prompt], device=backend.device)).logits.clone()


@pytest.fixture(scope="module")
def base_logits(torch_backend, prompt):
    return logits(torch_backend, prompt)


def test_adapter_changes_logits(torch_backend, adapter_folders, prompt, base_logits):
    torch_backend.set_adapter(read_adapter(adapter_folders["colors"]))

    assert torch_backend.adapter_name == "colors"
    assert not logits(torch_backend, prompt).equal(base_logits)


def test_detach_restores_base_exactly(torch_backend, adapter_folders, prompt, base_logits):
    torch_backend.set_adapter(read_adapter(adapter_folders["colors"]))
    torch_backend.set_adapter(None)

    assert torch_backend.adapter is None
    assert logits(torch_backend, prompt).equal(base_logits)


def test_switch_between_adapters(torch_backend, adapter_folders, prompt, base_logits):
    torch_backend.set_adapter(read_adapter(adapter_folders["colors"]))
    colors = logits(torch_backend, prompt)
    torch_backend.set_adapter(read_adapter(adapter_folders["shapes"]))
    shapes = logits(torch_backend, prompt)
    torch_backend.set_adapter(read_adapter(adapter_folders["colors"]))
    colors_again = logits(torch_backend, prompt)

    assert torch_backend.adapter_name == "colors"
    assert not shapes.equal(colors)
    assert not shapes.equal(base_logits)
    assert colors_again.equal(colors)


def test_adapter_reply_streams(torch_backend, adapter_folders):
    from chatty.backends.base import GenerationParams

    torch_backend.set_adapter(read_adapter(adapter_folders["colors"]))
    reply = torch_backend.generate(MESSAGES, GenerationParams(temperature=0, max_tokens=8))
    text = reply.text()

    assert reply.token_ids
    assert text == torch_backend.detokenize(reply.token_ids)


def test_mismatched_adapter_rejected(torch_backend, mismatched_folder, embedded_model, prompt, base_logits):
    adapter = read_adapter(mismatched_folder)

    with pytest.raises(ModelError) as raised:
        torch_backend.set_adapter(adapter)
    message = str(raised.value)

    assert "'tiny-lora'" in message
    assert embedded_model.id in message
    assert "(4, 64)" in message
    assert "(4, 576)" in message
    assert torch_backend.adapter is None
    assert logits(torch_backend, prompt).equal(base_logits)


def test_mismatched_adapter_keeps_active_one(torch_backend, adapter_folders, mismatched_folder, prompt):
    torch_backend.set_adapter(read_adapter(adapter_folders["colors"]))
    colors = logits(torch_backend, prompt)

    with pytest.raises(ModelError):
        torch_backend.set_adapter(read_adapter(mismatched_folder))

    assert torch_backend.adapter_name == "colors"
    assert logits(torch_backend, prompt).equal(colors)


def test_adapter_for_other_base_rejected(torch_backend, adapter_folders, tmp_path, prompt, base_logits):
    folder = tmp_path / "other-base"
    shutil.copytree(adapter_folders["colors"], folder)
    write_metadata(folder, {"base_model": {"id": "some-other-model", "sha256": "0" * 64}})

    with pytest.raises(ModelError, match="some-other-model"):
        torch_backend.set_adapter(read_adapter(folder))
    assert torch_backend.adapter is None
    assert logits(torch_backend, prompt).equal(base_logits)


def test_pickle_next_to_safetensors_unread(torch_backend, adapter_folders, tmp_path, prompt):
    torch_backend.set_adapter(read_adapter(adapter_folders["colors"]))
    colors = logits(torch_backend, prompt)
    torch_backend.set_adapter(None)

    folder = tmp_path / "with-pickle"
    shutil.copytree(adapter_folders["colors"], folder)
    # Not a real pickle: attaching must never open it, or torch.load would fail on these bytes.
    (folder / "adapter_model.bin").write_bytes(b"never unpickled")
    torch_backend.set_adapter(read_adapter(folder))

    assert logits(torch_backend, prompt).equal(colors)


def test_changed_adapter_reloaded(torch_backend, adapter_folders, tmp_path, prompt):
    torch_backend.set_adapter(read_adapter(adapter_folders["shapes"]))
    shapes = logits(torch_backend, prompt)
    torch_backend.set_adapter(read_adapter(adapter_folders["colors"]))
    colors = logits(torch_backend, prompt)

    # Retrain "retrained" in place: first it contains the colors weights, then the shapes weights.
    folder = tmp_path / "retrained"
    shutil.copytree(adapter_folders["colors"], folder)
    torch_backend.set_adapter(read_adapter(folder))
    before = logits(torch_backend, prompt)
    shutil.rmtree(folder)
    shutil.copytree(adapter_folders["shapes"], folder)
    torch_backend.set_adapter(read_adapter(folder))
    after = logits(torch_backend, prompt)

    assert before.equal(colors)
    assert after.equal(shapes)
    assert (folder / PEFT_WEIGHTS).is_file()


def test_adapter_needs_loaded_model(adapter_folders):
    from chatty.backends.torch import TorchBackend

    with pytest.raises(ModelError, match="Load a model"):
        TorchBackend().set_adapter(read_adapter(adapter_folders["colors"]))
