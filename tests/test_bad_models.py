"""Model files that chatty cannot run, and Hugging Face folders that ship their own Python code.

Every refusal is one sentence that names the file and what to do: a ModelError from the backends,
one line on stderr with a non-zero exit status from `chatty ask`, a notification in the TUI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from chatty.backends.base import LoadOptions
from chatty.cli import main
from chatty.errors import ModelError
from chatty.models.catalog import describe_path
from chatty.store import Store
from chatty.tui.widgets.message import AssistantMessage

from tui_helpers import SIZE, make_app, notifications, send, wait_for_model, wait_until

# clip is the architecture of the vision projector files (mmproj) published next to multimodal
# models, which llama.cpp rejects as a chat model. chattylm is an architecture that no runtime supports.
ARCHITECTURES = ["clip", "chattylm"]


def write_gguf(path: Path, architecture: str) -> Path:
    """Write a small, well-formed GGUF file of the given architecture with one tensor."""
    import gguf

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name(f"tiny {architecture}")
    writer.add_context_length(256)
    writer.add_embedding_length(8)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((32, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def saved_conversations(chatty_home: Path) -> list:
    store = Store(chatty_home / "chatty.db")
    conversations = store.list_conversations()
    store.close()
    return conversations


# Unsupported architectures


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_llama_backend_names_architecture(tmp_path, architecture):
    from chatty.backends.llama import LlamaBackend

    path = write_gguf(tmp_path / f"{architecture}.gguf", architecture)
    backend = LlamaBackend(LoadOptions(n_ctx=256))
    with pytest.raises(ModelError) as raised:
        backend.load(describe_path(path))
    message = str(raised.value)
    assert str(path) in message
    assert f"'{architecture}'" in message
    assert "\n" not in message
    assert backend.model is None


def test_llama_backend_says_architecture_is_unknown(tmp_path):
    from chatty.backends.llama import LlamaBackend

    path = write_gguf(tmp_path / "chattylm.gguf", "chattylm")
    with pytest.raises(ModelError, match="its architecture 'chattylm' is unknown to this build"):
        LlamaBackend(LoadOptions(n_ctx=256)).load(describe_path(path))


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_torch_backend_names_architecture(tmp_path, architecture):
    from chatty.backends.torch import TorchBackend

    path = write_gguf(tmp_path / f"{architecture}.gguf", architecture)
    with pytest.raises(ModelError) as raised:
        TorchBackend(LoadOptions(cache_dir=tmp_path / "cache")).load(describe_path(path))
    message = str(raised.value)
    assert str(path) in message
    assert f"not '{architecture}'" in message
    assert "\n" not in message


def test_ask_unsupported_architecture(tmp_path, chatty_home):
    path = write_gguf(tmp_path / "chattylm.gguf", "chattylm")
    result = subprocess.run(
        [sys.executable, "-m", "chatty.cli", "ask", "--model", str(path), "Hi"],
        capture_output=True, text=True, timeout=120, env=os.environ.copy(),
    )
    assert result.returncode == 1
    assert result.stdout == ""
    # One line: no traceback, and none of llama.cpp's own log lines, which go to the log file.
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("chatty: llama.cpp cannot run")
    assert str(path) in result.stderr
    assert "'chattylm'" in result.stderr
    assert saved_conversations(chatty_home) == []


def test_ask_torch_unsupported_architecture(tmp_path, chatty_home, capsys):
    path = write_gguf(tmp_path / "clip.gguf", "clip")
    assert main(["ask", "--backend", "torch", "--model", str(path), "Hi"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("chatty: The torch backend cannot run")
    assert "not 'clip'" in err
    assert saved_conversations(chatty_home) == []


async def test_tui_unsupported_architecture(tmp_path):
    path = write_gguf(tmp_path / "chattylm.gguf", "chattylm")
    app = make_app(generation__max_tokens=5)
    app.initial_model = str(path)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.status.model == "no model loaded")
        failures = [n for n in app._notifications if n.title == "Model not loaded"]
        assert len(failures) == 1
        assert str(path) in failures[0].message
        assert "'chattylm'" in failures[0].message
        assert failures[0].severity == "error"

        # The app keeps running: it loads the embedded model on request and replies with it.
        app.load_model(None, None)
        await wait_for_model(pilot, app)
        await send(pilot, app, "Hi")
        await wait_until(pilot, lambda: bool(app.query(AssistantMessage)) and not app._generating)
        assert app.query(AssistantMessage).last().details.status == "complete"
        assert not any("Reply failed" in message for message in notifications(app))
    app.services.close()


# Hugging Face folders that ship their own model code

MODEL_ID = "marker-model"
CONFIGURATION_CODE = '''
from transformers import LlamaConfig


class MarkerConfig(LlamaConfig):
    model_type = "chatty_marker"
'''
MODELING_CODE = '''
from pathlib import Path

from transformers import LlamaForCausalLM

from .configuration_marker import MarkerConfig


class MarkerForCausalLM(LlamaForCausalLM):
    config_class = MarkerConfig

    def __init__(self, config):
        super().__init__(config)
        Path(config.marker_file).write_text("the model's own code ran", encoding="utf-8")
'''
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_byte_tokenizer(folder: Path) -> int:
    """Save a byte-level tokenizer of 258 tokens with a ChatML template; return its vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocabulary = {character: index for index, character in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab=vocabulary, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>")
    tokenizer.chat_template = CHATML
    tokenizer.save_pretrained(folder)
    return len(tokenizer)


def write_remote_code_model(folder: Path, model_type: str, marker: Path) -> None:
    """Write a 2-layer Llama with tiny sizes whose config.json points auto_map at the folder's own code."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder.mkdir(parents=True)
    vocabulary_size = write_byte_tokenizer(folder)
    sizes = dict(
        vocab_size=vocabulary_size, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=256, bos_token_id=256, eos_token_id=257, tie_word_embeddings=True,
    )
    LlamaForCausalLM(LlamaConfig(**sizes)).save_pretrained(folder, safe_serialization=True)
    (folder / "configuration_marker.py").write_text(CONFIGURATION_CODE, encoding="utf-8")
    (folder / "modeling_marker.py").write_text(MODELING_CODE, encoding="utf-8")

    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config.update(
        model_type=model_type,
        architectures=["MarkerForCausalLM"],
        auto_map={
            "AutoConfig": "configuration_marker.MarkerConfig",
            "AutoModelForCausalLM": "modeling_marker.MarkerForCausalLM",
        },
        marker_file=str(marker),
    )
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")


@pytest.fixture
def modules_cache(tmp_path, monkeypatch) -> Path:
    """Send the copies of model code that transformers makes to a temporary folder instead of ~/.cache."""
    import transformers.dynamic_module_utils as dynamic_modules

    cache = tmp_path / "hf-modules"
    monkeypatch.setattr(dynamic_modules, "HF_MODULES_CACHE", str(cache))
    monkeypatch.setattr(sys, "path", list(sys.path))
    return cache


@pytest.mark.parametrize("config_text", ["", '[model]\ntrust_remote_code = ["another-model"]\n'],
                         ids=["nothing listed", "another model listed"])
def test_remote_code_refused_unless_listed(chatty_home, tmp_path, modules_cache, capsys, config_text):
    marker = tmp_path / "marker.txt"
    write_remote_code_model(chatty_home / "models" / MODEL_ID, "chatty_marker", marker)
    (chatty_home / "config.toml").write_text(config_text, encoding="utf-8")
    capsys.readouterr()  # the progress bar of save_pretrained

    assert main(["ask", "--backend", "torch", "--model", MODEL_ID, "Hi"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "modeling_marker.py" in err
    assert "[model] trust_remote_code" in err
    assert f'add "{MODEL_ID}" to trust_remote_code under [model] in config.toml' in err
    assert not marker.exists()
    assert saved_conversations(chatty_home) == []


def test_remote_code_runs_when_listed(chatty_home, tmp_path, modules_cache, capsys):
    marker = tmp_path / "marker.txt"
    write_remote_code_model(chatty_home / "models" / MODEL_ID, "chatty_marker", marker)
    (chatty_home / "config.toml").write_text(f'[model]\ntrust_remote_code = ["{MODEL_ID}"]\n', encoding="utf-8")

    status = main(["ask", "--backend", "torch", "--model", MODEL_ID, "--temperature", "0", "--max-tokens", "3", "Hi"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert marker.read_text(encoding="utf-8") == "the model's own code ran"
    store = Store(chatty_home / "chatty.db")
    reply = store.messages(store.list_conversations()[0].id)[-1]
    store.close()
    assert (reply.role, reply.model, reply.backend, reply.status) == ("assistant", MODEL_ID, "torch", "complete")


def test_known_model_type_ignores_shipped_code(chatty_home, tmp_path, modules_cache, capsys):
    """A folder whose model_type transformers defines loads with transformers' own class, so its code never runs."""
    marker = tmp_path / "marker.txt"
    write_remote_code_model(chatty_home / "models" / MODEL_ID, "llama", marker)

    status = main(["ask", "--backend", "torch", "--model", MODEL_ID, "--temperature", "0", "--max-tokens", "3", "Hi"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert not marker.exists()
