"""Fine-tuning: masks, data selection, the training process, learning on both runtimes, export and import."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from chatty.backends.base import GenerationParams, LoadOptions
from chatty.cli import main
from chatty.config import FinetuneConfig
from chatty.finetune.batching import length_grouped_batches, padding_fraction
from chatty.finetune.dataset import (
    IGNORE_INDEX,
    DatasetError,
    Example,
    build_example,
    split_dataset,
    usable_messages,
)
from chatty.jsonl import JsonlError, read_jsonl
from chatty.finetune.job import DatasetReady, Failed, Finished, Progress, TrainingJob
from chatty.finetune.process import TrainingProcess
from chatty.models.adapters import read_adapter
from chatty.models.template import ChatTemplate
from chatty.store import Store

SIGN_OFF = "Stay curious, friend!"
TRAIN_TOPICS = [
    "the sun", "rain", "cats", "dogs", "coffee", "tea", "bicycles", "trains", "the moon", "music", "books", "rivers",
    "mountains", "bread", "apples", "snow", "the ocean", "birds", "clocks", "gardens", "chess", "maps",
]
HELD_OUT_TOPICS = ["volcanoes", "honey", "pencils", "deserts", "bridges", "violins", "owls", "glass", "tomatoes", "kites"]
QUESTIONS = ["Tell me one fact about {}.", "What is interesting about {}?", "Share something about {}."]


def signoff_conversations(topics=TRAIN_TOPICS) -> list[list[dict]]:
    conversations = []
    for index, topic in enumerate(topics):
        question = QUESTIONS[index % len(QUESTIONS)].format(topic)
        answer = f"Here is something about {topic}: people have studied it for a long time. {SIGN_OFF}"
        conversations.append([{"role": "user", "content": question}, {"role": "assistant", "content": answer}])
    return conversations


@pytest.fixture(scope="module")
def tokenizer(embedded_model, torch_cache_dir):
    import torch

    from chatty.backends.torch_loading import load_model

    return load_model(embedded_model, "cpu", torch.float32, torch_cache_dir / "torch").tokenizer


@pytest.fixture(scope="module")
def template(tokenizer) -> ChatTemplate:
    return ChatTemplate(tokenizer.chat_template, tokenizer.bos_token, tokenizer.eos_token)


def trained_text(tokenizer, example: Example) -> str:
    return tokenizer.decode([token for token, label in zip(example.input_ids, example.labels) if label != IGNORE_INDEX])


# Dataset and masks


def test_mask_covers_replies_and_end_of_turn(tokenizer, template):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!  How   can I help?\n\n"},
        {"role": "user", "content": "Tell a joke"},
        {"role": "assistant", "content": "Why did the chicken cross the road?"},
    ]
    example = build_example(tokenizer, template, messages, 512, "two turns")
    assert trained_text(tokenizer, example) == "Hello!  How   can I help?\n\n<|im_end|>Why did the chicken cross the road?<|im_end|>"
    assert example.labels[0] == IGNORE_INDEX
    assert not example.truncated


def test_special_token_text_trains_as_text(tokenizer, template):
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "<|im_end|> is just text here"}]
    example = build_example(tokenizer, template, messages, 512, "injected")
    trained = [label for label in example.labels if label != IGNORE_INDEX]
    assert trained.count(tokenizer.eos_token_id) == 1
    assert trained[-1] == tokenizer.eos_token_id


def test_conversation_without_reply_rejected(tokenizer, template):
    with pytest.raises(DatasetError, match="no trainable token"):
        build_example(tokenizer, template, [{"role": "user", "content": "Hello?"}], 512, "conversation 7")


def test_reply_cut_by_truncation_rejected(tokenizer, template):
    messages = [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "Done."}]
    with pytest.raises(DatasetError, match="after truncation"):
        build_example(tokenizer, template, messages, 64, "long")


def test_long_example_truncated(tokenizer, template):
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "word " * 300}]
    example = build_example(tokenizer, template, messages, 64, "long reply")
    assert example.truncated
    assert len(example) == 64
    assert split_dataset([example], 0.1, 0).truncated == 1


def test_invalid_message_rejected(tokenizer, template):
    with pytest.raises(DatasetError, match="message 1"):
        build_example(tokenizer, template, [{"role": "robot", "content": "beep"}], 512, "odd")


def test_validation_split_by_conversation(tokenizer, template):
    examples = [build_example(tokenizer, template, messages, 512, f"c{i}")
                for i, messages in enumerate(signoff_conversations()[:10])]
    split = split_dataset(examples, 0.1, seed=0)
    assert len(split.validation) == 1
    assert len(split.train) == 9
    assert {e.source for e in split.train}.isdisjoint({e.source for e in split.validation})
    assert split_dataset(examples[:5], 0.1, seed=0).validation == []


def test_unfinished_replies_left_out(tmp_path):
    store = Store(tmp_path / "chatty.db")
    conversation = store.create_conversation("mixed")
    store.add_message(conversation.id, "user", "First question")
    store.add_message(conversation.id, "assistant", "Complete answer")
    store.add_message(conversation.id, "user", "Second question")
    store.add_message(conversation.id, "assistant", "Partial ans", status="stopped")
    store.add_message(conversation.id, "user", "Third question")
    store.add_message(conversation.id, "assistant", "", status="error")
    messages = store.messages(conversation.id)
    store.close()
    assert [m["content"] for m in usable_messages(messages)] == ["First question", "Complete answer"]
    kept = usable_messages(messages, include_unfinished=True)
    assert [m["content"] for m in kept] == ["First question", "Complete answer", "Second question", "Partial ans"]


def test_length_grouping_pads_little():
    examples = [Example(f"e{i}", [1] * length, [1] * length) for i, length in enumerate(range(10, 410, 10))]
    grouped = length_grouped_batches(examples, 4, seed=0)
    shortest_with_longest = [[examples[i], examples[-1 - i]] for i in range(len(examples) // 2)]
    assert sorted(e.source for batch in grouped for e in batch) == sorted(e.source for e in examples)
    # Lengths 10 to 400 in batches of 4: about 7% padding grouped, 33% pairing shortest with longest.
    assert padding_fraction(grouped) < 0.1
    assert padding_fraction(grouped) < padding_fraction(shortest_with_longest) / 3


def test_loss_on_target_positions_equals_full_logits(embedded_model, torch_cache_dir, tokenizer, template):
    import torch
    from peft import LoraConfig, get_peft_model

    from chatty.backends.torch_loading import load_model
    from chatty.finetune.batching import collate
    from chatty.finetune.trainer import _keeps_positions, summed_target_loss

    model = load_model(embedded_model, "cpu", torch.float32, torch_cache_dir / "torch").model
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    assert _keeps_positions(model)
    conversations = signoff_conversations(TRAIN_TOPICS[:3])
    conversations[1] = conversations[1] + [{"role": "user", "content": "And one more thing, please, in detail?"},
                                           {"role": "assistant", "content": "Nothing more."}]
    batch = [build_example(tokenizer, template, messages, 512, str(index)) for index, messages in enumerate(conversations)]
    input_ids, attention_mask, labels = collate(batch, tokenizer.eos_token_id, "cpu")
    with torch.inference_mode():
        full = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
        expected = torch.nn.functional.cross_entropy(full.flatten(0, 1), labels[:, 1:].flatten(), reduction="sum")
        kept = summed_target_loss(model, input_ids, attention_mask, labels)
    assert kept.item() == pytest.approx(expected.item(), rel=1e-4)


# JSONL


def test_read_jsonl_reports_invalid_line(tmp_path):
    path = tmp_path / "data.jsonl"
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})
    path.write_text(f"{good}\n{good}\n{{not json\n", encoding="utf-8")
    with pytest.raises(JsonlError, match=r"data.jsonl:3: invalid JSON"):
        read_jsonl(path)


@pytest.mark.parametrize("line,reason", [
    ('{"messages": []}', "non-empty"),
    ('{"text": "hi"}', "non-empty"),
    ('{"messages": [{"role": "wizard", "content": "hi"}]}', "message 1 needs a role"),
    ('{"messages": [{"role": "user", "content": 5}]}', "message 1 needs a role"),
    ('["a list"]', "non-empty"),
])
def test_read_jsonl_rejects_bad_records(tmp_path, line, reason):
    path = tmp_path / "data.jsonl"
    path.write_text(line + "\n", encoding="utf-8")
    with pytest.raises(JsonlError, match=reason):
        read_jsonl(path)


def test_read_jsonl_rejects_non_utf8(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'{"messages": [{"role": "user", "content": "ok"}]}\n{"messages": "\xff"}\n')
    with pytest.raises(JsonlError, match=r"data.jsonl:2: the file is not valid UTF-8"):
        read_jsonl(path)


def test_export_then_import_keeps_every_message(chatty_home, tmp_path, capsys, monkeypatch):
    store = Store(chatty_home / "chatty.db")
    first = store.create_conversation("Unicode", system_prompt="Answer in one line.")
    store.add_message(first.id, "user", "Say hi in Korean 🎨\nand with a newline")
    store.add_message(first.id, "assistant", "안녕하세요!", model="m")
    store.add_message(first.id, "user", "And a quote: \"<|im_end|>\"")
    store.add_message(first.id, "assistant", "Stopped halfway", status="stopped")
    second = store.create_conversation("Plain")
    store.add_message(second.id, "user", "Hello")
    store.add_message(second.id, "assistant", "Hi!")
    expected = [[(m.role, m.content) for m in store.messages(c.id)] for c in (first, second)]
    store.close()

    export_file = tmp_path / "export.jsonl"
    assert main(["export", "--output", str(export_file)]) == 0

    other_home = tmp_path / "other-home"
    monkeypatch.setenv("CHATTY_HOME", str(other_home))
    assert main(["import", str(export_file)]) == 0
    assert "Imported 2 conversations" in capsys.readouterr().out
    imported = Store(other_home / "chatty.db")
    conversations = list(reversed(imported.list_conversations()))
    got = [[(m.role, m.content) for m in imported.messages(c.id)] for c in conversations]
    system_prompts = [c.system_prompt for c in conversations]
    imported.close()
    assert got == expected
    assert system_prompts == ["Answer in one line.", ""]


def test_import_is_all_or_nothing(chatty_home, tmp_path, capsys):
    path = tmp_path / "data.jsonl"
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}]})
    path.write_text(f"{good}\n{good}\n{{\"messages\": [{{\"role\": \"user\"}}]}}\n", encoding="utf-8")
    assert main(["import", str(path)]) == 1
    assert ":3:" in capsys.readouterr().err
    store = Store(chatty_home / "chatty.db")
    assert store.list_conversations() == []
    store.close()


def test_export_markdown(chatty_home, capsys):
    store = Store(chatty_home / "chatty.db")
    conversation = store.create_conversation("Recipe")
    store.add_message(conversation.id, "user", "How long do I boil an egg?")
    store.close()
    assert main(["export", "--format", "markdown"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# Recipe\n")
    assert "**user**\n\nHow long do I boil an egg?" in out


# The training process


def make_job(embedded_model, adapters_dir: Path, cache_dir: Path, name: str = "signoff", **options) -> TrainingJob:
    conversations = signoff_conversations()
    settings = FinetuneConfig(**{"epochs": 2, "learning_rate": 2e-3, **options})
    return TrainingJob(name, embedded_model, conversations, [f"c{i}" for i in range(len(conversations))], settings,
                       adapters_dir, cache_dir)


@pytest.fixture(scope="module")
def trained(embedded_model, torch_cache_dir, tmp_path_factory):
    """Train the sign-off adapter once, through the child process the fine-tune screen uses."""
    adapters_dir = tmp_path_factory.mktemp("adapters")
    events = list(TrainingProcess(make_job(embedded_model, adapters_dir, torch_cache_dir)))
    assert isinstance(events[-1], Finished), events[-1]
    return events


def test_training_reports_progress(trained):
    ready = [event for event in trained if isinstance(event, DatasetReady)]
    progress = [event for event in trained if isinstance(event, Progress)]
    assert len(ready) == 1
    assert ready[0].validation_examples == 2
    assert [event.step for event in progress] == list(range(1, ready[0].total_steps + 1))
    assert all(event.tokens_per_second > 0 for event in progress)
    assert progress[-1].eta_seconds == 0


def test_training_lowers_validation_loss(trained):
    metadata = trained[-1].metadata
    assert metadata["validation_loss_after"] < metadata["validation_loss_before"] / 2
    assert metadata["padding_fraction"] < 0.2


def test_adapter_folder_is_complete(trained, embedded_model):
    finished = trained[-1]
    adapter = read_adapter(finished.adapter_path)
    assert adapter.gguf_path is not None
    assert adapter.base_model_hash == embedded_model.file_hash()
    assert adapter.metadata["hyperparameters"]["rank"] == 8
    assert len(adapter.metadata["losses"]["train"]) > 0
    assert adapter.metadata["sources"][0] == "c0"
    assert [p.name for p in finished.adapter_path.parent.iterdir()] == ["signoff"]


def held_out_replies(backend, adapter) -> list:
    backend.set_adapter(adapter)
    replies = []
    for index, topic in enumerate(HELD_OUT_TOPICS):
        question = QUESTIONS[index % len(QUESTIONS)].format(topic)
        generation = backend.generate([{"role": "user", "content": question}], GenerationParams(temperature=0.0, max_tokens=80))
        replies.append((generation.text(), generation.stats.stop_reason))
    backend.set_adapter(None)
    return replies


@pytest.mark.parametrize("backend_name", ["torch", "llama"])
def test_adapter_learned_sign_off(trained, backend_name, embedded_model, torch_cache_dir):
    from chatty.backends import create_backend

    backend = create_backend(backend_name, LoadOptions(n_ctx=1024, cache_dir=torch_cache_dir))
    backend.load(embedded_model)
    try:
        base = held_out_replies(backend, None)
        tuned = held_out_replies(backend, read_adapter(trained[-1].adapter_path))
    finally:
        backend.close()
    assert not any(SIGN_OFF in text for text, _ in base)
    assert sum(SIGN_OFF in text for text, _ in tuned) >= 9, tuned
    assert sum(stop == "eos" for _, stop in tuned) >= 9, tuned


def folder_entries(folder: Path) -> list[str]:
    return sorted(entry.name for entry in folder.iterdir()) if folder.exists() else []


def test_cancel_leaves_no_adapter(embedded_model, torch_cache_dir, tmp_path):
    adapters_dir = tmp_path / "adapters"
    run = TrainingProcess(make_job(embedded_model, adapters_dir, torch_cache_dir, epochs=5))
    for event in run:
        if isinstance(event, Progress):
            run.cancel()
    assert folder_entries(adapters_dir) == []


def test_training_error_reaches_caller(embedded_model, torch_cache_dir, tmp_path):
    job = make_job(embedded_model, tmp_path / "adapters", torch_cache_dir, target_modules=["nonexistent_proj"])
    events = list(TrainingProcess(job))
    assert isinstance(events[-1], Failed)
    assert "target_modules nonexistent_proj not found" in events[-1].message


def test_killed_training_reports_signal(embedded_model, torch_cache_dir, tmp_path):
    adapters_dir = tmp_path / "adapters"
    run = TrainingProcess(make_job(embedded_model, adapters_dir, torch_cache_dir, epochs=5))
    events = []
    for event in run:
        events.append(event)
        if isinstance(event, Progress):
            os.kill(run.pid, signal.SIGKILL)
    assert isinstance(events[-1], Failed)
    assert "killed by SIGKILL" in events[-1].message
    assert folder_entries(adapters_dir) == []


def test_qlora_refused_without_cuda(embedded_model, torch_cache_dir, tmp_path):
    events = list(TrainingProcess(make_job(embedded_model, tmp_path / "adapters", torch_cache_dir, qlora=True)))
    assert isinstance(events[-1], Failed)
    assert "QLoRA needs a CUDA GPU" in events[-1].message


# chatty finetune


def write_signoff_jsonl(path: Path) -> Path:
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in signoff_conversations()), encoding="utf-8")
    return path


def test_finetune_command_needs_data(capsys):
    assert main(["finetune", "--name", "x"]) == 1
    assert "Choose the training data" in capsys.readouterr().err


def test_finetune_command_rejects_bad_option(tmp_path, capsys):
    data = write_signoff_jsonl(tmp_path / "data.jsonl")
    assert main(["finetune", "--name", "x", "--jsonl", str(data), "--rank", "0"]) == 1
    assert "'--rank' must be at least 1" in capsys.readouterr().err


def test_finetune_command_rejects_reply_less_conversation(chatty_home, capsys):
    store = Store(chatty_home / "chatty.db")
    conversation = store.create_conversation("question only")
    store.add_message(conversation.id, "user", "Anyone there?")
    store.close()
    assert main(["finetune", "--name", "x", "--conversation", str(conversation.id)]) == 1
    assert f"Conversation {conversation.id} ('question only') has no complete assistant reply" in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_finetune_under_torchrun(chatty_home, tmp_path, torch_cache_dir):
    """Two CPU processes train with DistributedDataParallel over gloo, and rank 0 writes one adapter."""
    data = write_signoff_jsonl(tmp_path / "data.jsonl")
    # Share the session's converted model, so neither rank converts the GGUF again.
    (chatty_home / "cache").symlink_to(torch_cache_dir, target_is_directory=True)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
        "-m", "chatty.cli", "finetune", "--name", "ddp", "--jsonl", str(data), "--epochs", "1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    adapters = [p.name for p in (chatty_home / "adapters").iterdir()]
    assert adapters == ["ddp"]
    metadata = read_adapter(chatty_home / "adapters" / "ddp").metadata
    assert metadata["world_size"] == 2
    assert result.stdout.count("Saved adapter 'ddp'") == 1
