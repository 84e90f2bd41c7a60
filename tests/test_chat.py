"""ChatService: saving replies as they stream, stopping, failures and fitting the context window."""

from __future__ import annotations

import pytest

from chatty import chat as chat_module
from chatty.chat import ChatService, title_from
from chatty.config import Config
from chatty.errors import ChattyError, ContextOverflow
from chatty.models.catalog import ModelCatalog
from chatty.runtime import Runtime
from chatty.store import Store


def make_service(tmp_path, n_ctx: int = 2048, temperature: float = 0.0, backend: str = "llama",
                 cache_dir=None) -> ChatService:
    config = Config()
    config.model.n_ctx = n_ctx
    config.model.backend = backend
    config.generation.temperature = temperature
    runtime = Runtime(config, ModelCatalog(), cache_dir)
    runtime.load()
    return ChatService(config, Store(tmp_path / "chatty.db"), runtime)


@pytest.fixture
def service(tmp_path):
    service = make_service(tmp_path)
    yield service
    service.runtime.close()
    service.store.close()


def test_reply_is_saved_complete(service):
    conversation = service.new_conversation()
    reply = service.reply(conversation.id, "Name three colors.")
    text = "".join(reply)
    messages = service.store.messages(conversation.id)
    assert [m.role for m in messages] == ["user", "assistant"]
    assert messages[1].content == text
    assert messages[1].status == "complete"
    assert messages[1].model == "smollm2-135m-instruct"
    assert messages[1].backend == "llama"
    assert messages[1].completion_tokens == reply.stats.completion_tokens
    assert service.store.get_conversation(conversation.id).title == "Name three colors."


def test_reply_row_exists_while_streaming(service):
    conversation = service.new_conversation()
    reply = service.reply(conversation.id, "Write a story about a cat.")
    stored = service.store.get_message(reply.message.id)
    assert stored.status == "interrupted"
    reply.cancel()
    list(reply)


def test_streaming_text_is_saved_periodically(service, monkeypatch):
    monkeypatch.setattr(chat_module, "SAVE_INTERVAL_SECONDS", 0.0)
    conversation = service.new_conversation()
    reply = service.reply(conversation.id, "Write a story about a cat.")
    seen = []
    for index, piece in enumerate(reply):
        if index == 10:
            seen.append(service.store.get_message(reply.message.id))
            reply.cancel()
    assert seen[0].status == "interrupted"
    assert len(seen[0].content) > 0
    assert reply.text.startswith(seen[0].content)


def test_stopped_reply_keeps_partial_text(service):
    conversation = service.new_conversation()
    reply = service.reply(conversation.id, "Write a very long story about a dragon.")
    for index, _ in enumerate(reply):
        if index == 5:
            reply.cancel()
    stored = service.store.get_message(reply.message.id)
    assert stored.status == "stopped"
    assert stored.content == reply.text
    assert stored.content


def test_history_keeps_turns_in_order(service):
    conversation = service.new_conversation()
    list(service.reply(conversation.id, "My name is Ada."))
    list(service.reply(conversation.id, "What is my name?"))
    history = service.history(service.store.get_conversation(conversation.id))
    assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]
    assert history[0]["content"] == "My name is Ada."


def test_system_prompt_leads_history(service):
    conversation = service.new_conversation()
    service.store.update_conversation(conversation.id, system_prompt="Answer in French.")
    list(service.reply(conversation.id, "Hello"))
    history = service.history(service.store.get_conversation(conversation.id))
    assert history[0] == {"role": "system", "content": "Answer in French."}


def test_empty_message_is_rejected(service):
    conversation = service.new_conversation()
    with pytest.raises(ChattyError, match="empty"):
        service.reply(conversation.id, "  \n\t ")
    assert service.store.messages(conversation.id) == []


def test_too_long_message_saves_nothing(tmp_path):
    service = make_service(tmp_path, n_ctx=256)
    conversation = service.new_conversation()
    with pytest.raises(ContextOverflow, match="too long"):
        service.reply(conversation.id, "word " * 400)
    assert service.store.messages(conversation.id) == []
    service.runtime.close()
    service.store.close()


@pytest.mark.parametrize("backend", ["llama", "torch"])
def test_overflow_drops_oldest_turns(tmp_path, backend, torch_cache_dir):
    service = make_service(tmp_path, n_ctx=512, backend=backend, cache_dir=torch_cache_dir)
    store = service.store
    conversation = service.new_conversation()
    service.store.update_conversation(conversation.id, system_prompt="You are terse.",
                                      params={"temperature": 0.0, "max_tokens": 64})
    # Each message is about 120 tokens, so eight turns of two need far more than 512.
    filler = " ".join(f"fact{index}" for index in range(55))
    for turn in range(8):
        store.add_message(conversation.id, "user", f"Turn {turn}: {filler}")
        store.add_message(conversation.id, "assistant", f"Noted turn {turn}: {filler}")

    reply = service.reply(conversation.id, "Say OK.")
    text = "".join(reply)
    assert reply.plan.dropped_turns > 0
    assert reply.plan.messages[0] == {"role": "system", "content": "You are terse."}
    assert reply.plan.messages[-1] == {"role": "user", "content": "Say OK."}
    assert len(reply.plan.prompt_ids) + reply.plan.max_tokens <= 512
    assert reply.status == "complete"
    assert text
    service.runtime.close()
    service.store.close()


def test_switching_backend_keeps_history(tmp_path, torch_cache_dir):
    service = make_service(tmp_path, cache_dir=torch_cache_dir)
    conversation = service.new_conversation()
    list(service.reply(conversation.id, "My name is Ada."))
    service.runtime.load(backend_name="torch")
    reply = service.reply(conversation.id, "What is my name?")
    list(reply)
    messages = service.store.messages(conversation.id)
    assert [m.backend for m in messages if m.role == "assistant"] == ["llama", "torch"]
    assert reply.plan.messages[0] == {"role": "user", "content": "My name is Ada."}
    assert len(reply.plan.messages) == 3
    service.runtime.close()
    service.store.close()


def test_title_from_first_line():
    assert title_from("  Hello there\nsecond line") == "Hello there"
    long_title = title_from("x" * 200)
    assert len(long_title) == 60
    assert long_title.endswith("…")
