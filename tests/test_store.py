"""SQLite storage: round trip, migrations, full-text search and concurrent writers."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from chatty.errors import ChattyError
from chatty.store import ConversationNotFound, Store
from chatty.store.database import latest_version, split_statements


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "chatty.db")
    yield store
    store.close()


def test_round_trip(tmp_path):
    path = tmp_path / "chatty.db"
    store = Store(path)
    conversation = store.create_conversation("Colors", system_prompt="Be brief.", model="m", backend="llama",
                                             params={"temperature": 0.0, "max_tokens": 64})
    store.add_message(conversation.id, "user", "Name three colors. 🎨")
    store.add_message(conversation.id, "assistant", "Red, green, blue.", status="stopped", model="m", backend="llama",
                      adapter="signoff", prompt_tokens=20, completion_tokens=6, tokens_per_second=99.5)
    store.close()

    reopened = Store(path)
    loaded = reopened.get_conversation(conversation.id)
    messages = reopened.messages(conversation.id)
    reopened.close()
    assert loaded.title == "Colors"
    assert loaded.system_prompt == "Be brief."
    assert loaded.params == {"temperature": 0.0, "max_tokens": 64}
    assert [m.role for m in messages] == ["user", "assistant"]
    assert messages[0].content == "Name three colors. 🎨"
    assert messages[1].status == "stopped"
    assert messages[1].adapter == "signoff"
    assert messages[1].completion_tokens == 6
    assert messages[1].tokens_per_second == 99.5


def test_migration_from_empty_file(tmp_path):
    path = tmp_path / "chatty.db"
    path.touch()
    store = Store(path)
    version = store.db.connection.execute("PRAGMA user_version").fetchone()[0]
    journal = store.db.connection.execute("PRAGMA journal_mode").fetchone()[0]
    tables = {row[0] for row in store.db.connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    store.close()
    assert version == latest_version()
    assert journal == "wal"
    assert {"conversations", "messages", "messages_fts"} <= tables


def test_migration_runs_once(tmp_path):
    path = tmp_path / "chatty.db"
    Store(path).close()
    store = Store(path)
    assert store.db.connection.execute("PRAGMA user_version").fetchone()[0] == latest_version()
    store.close()


def test_newer_schema_is_rejected(tmp_path):
    path = tmp_path / "chatty.db"
    connection = sqlite3.connect(path)
    connection.execute(f"PRAGMA user_version = {latest_version() + 1}")
    connection.close()
    with pytest.raises(ChattyError, match="newer than this chatty"):
        Store(path)


def test_split_statements_keeps_triggers():
    script = "CREATE TABLE a (x);\nCREATE TRIGGER t AFTER INSERT ON a BEGIN\n  SELECT 1;\n  SELECT 2;\nEND;\n"
    statements = split_statements(script)
    assert len(statements) == 2
    assert statements[1].endswith("END;")


def test_list_newest_first(store):
    first = store.create_conversation("first")
    second = store.create_conversation("second")
    store.add_message(first.id, "user", "bump")
    assert [c.id for c in store.list_conversations()] == [first.id, second.id]


def test_delete_removes_messages(store):
    conversation = store.create_conversation("gone")
    store.add_message(conversation.id, "user", "unique-word-zebra")
    store.delete_conversation(conversation.id)
    assert store.messages(conversation.id) == []
    assert store.search("unique-word-zebra") == []
    with pytest.raises(ConversationNotFound):
        store.get_conversation(conversation.id)


def test_search_finds_words_and_prefixes(store):
    conversation = store.create_conversation("Kitchen")
    message = store.add_message(conversation.id, "assistant", "Preheat the oven to 200 degrees.")
    store.add_message(store.create_conversation("Other").id, "user", "Nothing here.")
    hits = store.search("oven")
    assert [hit.message_id for hit in hits] == [message.id]
    assert "[oven]" in hits[0].snippet
    assert [hit.message_id for hit in store.search("prehe")] == [message.id]
    assert [c.id for c in store.search_conversations("degrees")] == [conversation.id]


def test_search_follows_updates(store):
    conversation = store.create_conversation("stream")
    message = store.add_message(conversation.id, "assistant", "", status="interrupted")
    store.update_message(message.id, content="partial text about giraffes")
    assert [hit.message_id for hit in store.search("giraffes")] == [message.id]


@pytest.mark.parametrize("query", ['"', "AND", "NEAR(", "*", "col:umn", "a OR", "(((", "'"])
def test_search_survives_fts_syntax(store, query):
    conversation = store.create_conversation("x")
    store.add_message(conversation.id, "user", "plain text")
    store.search(query)
    store.search_conversations(query)


def test_search_matches_title(store):
    conversation = store.create_conversation("Recipe for 100% rye")
    assert [c.id for c in store.search_conversations("100%")] == [conversation.id]


def test_concurrent_writers_lose_nothing(tmp_path):
    path = tmp_path / "chatty.db"
    stores = [Store(path), Store(path)]
    conversation = stores[0].create_conversation("shared")
    errors = []

    def write(store: Store, writer: int) -> None:
        try:
            for index in range(100):
                message = store.add_message(conversation.id, "user", f"writer {writer} message {index}")
                store.update_message(message.id, content=f"writer {writer} message {index} edited")
        except Exception as error:  # collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=write, args=(store, number)) for number, store in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    contents = {message.content for message in stores[0].messages(conversation.id)}
    for store in stores:
        store.close()
    assert errors == []
    assert len(contents) == 200
    assert all(content.endswith("edited") for content in contents)


def test_finished_threads_release_connections(store):
    """The TUI runs each background task on a new thread, so the connections of finished threads must be closed."""
    waiting = threading.Event()
    release = threading.Event()
    results = []

    def long_task() -> None:
        store.create_conversation("long task")
        waiting.set()
        release.wait(timeout=30)
        results.append(len(store.list_conversations()))

    long_thread = threading.Thread(target=long_task)
    long_thread.start()
    waiting.wait(timeout=30)
    for _ in range(50):
        thread = threading.Thread(target=store.list_conversations)
        thread.start()
        thread.join()

    # The fixture's thread, the long task and the last short task: finished ones are closed on the next open.
    assert len(store.db.open_connections) == 3
    release.set()
    long_thread.join()
    assert results == [1]
