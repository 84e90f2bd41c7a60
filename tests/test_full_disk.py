"""A full disk and a read-only database, on real SQLite: replies stay on screen, errors are one clear sentence.

SQLite's own limits stand in for the file system: `PRAGMA max_page_count` set to the file's size
makes every write that needs a new page fail with SQLITE_FULL ("database or disk is full"), and
`PRAGMA query_only` makes every write fail with SQLITE_READONLY, as a read-only file does. Both
are set on each connection that chatty opens, through a wrapper around Database._connect.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from chatty import chat
from chatty.cli import main
from chatty.store import Store
from chatty.store.database import Database
from chatty.tui.widgets.message import AssistantMessage, MessageView

from tui_helpers import LONG_PROMPT, SIZE, make_app, notifications, press_now, send, wait_for_model, wait_until


def apply_to_new_connections(monkeypatch, pragma: str) -> None:
    """Run a PRAGMA on every connection that chatty opens from now on."""
    connect = Database._connect

    def connect_with_pragma(self):
        connection = connect(self)
        connection.execute(pragma)
        return connection

    monkeypatch.setattr(Database, "_connect", connect_with_pragma)


def fill_disk(database_path: Path, monkeypatch) -> None:
    """Make the database unable to grow by a single page, for every connection chatty opens from now on.

    A reply is then saved after every piece instead of every second, so that the saves fill the
    free room in the file's pages within the first few hundred characters, whatever the speed of
    the machine.
    """
    with sqlite3.connect(database_path) as connection:
        pages = connection.execute("PRAGMA page_count").fetchone()[0]
    apply_to_new_connections(monkeypatch, f"PRAGMA max_page_count = {pages}")
    monkeypatch.setattr(chat, "SAVE_INTERVAL_SECONDS", 0.0)


def make_read_only(monkeypatch) -> None:
    """Make every write through chatty's connections fail from now on.

    The pragma is set each time a connection is handed out, so a connection that a worker thread
    was still opening when the test switched fails its writes too.
    """
    handed_out = Database.connection

    def read_only_connection(self):
        connection = handed_out.fget(self)
        connection.execute("PRAGMA query_only = ON")
        return connection

    monkeypatch.setattr(Database, "connection", property(read_only_connection))


def read_messages(database_path: Path) -> list[sqlite3.Row]:
    """Read the messages table through a connection of our own, outside chatty's limits."""
    connection = sqlite3.connect(database_path)
    connection.row_factory = sqlite3.Row
    rows = connection.execute("SELECT role, content, status FROM messages ORDER BY id").fetchall()
    connection.close()
    return rows


# Enough for a reply of several hundred characters, past the point where the saves fill the free room.
REPLY_TOKENS = 100


@pytest.fixture
def database_path(chatty_home) -> Path:
    """An empty chatty database, created before the disk fills."""
    path = chatty_home / "chatty.db"
    Store(path).close()
    return path


async def test_tui_keeps_reply_when_disk_fills(chatty_home, database_path, monkeypatch):
    fill_disk(database_path, monkeypatch)
    app = make_app(generation__max_tokens=REPLY_TOKENS)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_model(pilot, app)
        await send(pilot, app, LONG_PROMPT)
        await wait_until(pilot, lambda: bool(app.query(AssistantMessage)) and not app._generating)
        await pilot.pause(0.1)

        reply = app.query(AssistantMessage).last()
        not_saved = [n for n in app._notifications if n.title == "Not saved"]
        assert len(not_saved) == 1
        assert not_saved[0].message == (
            f"The reply could not be saved: database or disk is full. Free disk space or make {chatty_home} writable."
        )
        assert not_saved[0].severity == "error"
        # The whole reply stays on screen, although the database could not take it.
        assert reply.details.status == "complete"
        assert reply.text
        assert app.is_running
    app.services.close()

    # The saves before the disk filled kept the start of the reply, and the row's status records that it was cut short.
    user, assistant = read_messages(database_path)
    assert user["content"] == LONG_PROMPT
    assert assistant["status"] == "interrupted"
    assert reply.text.startswith(assistant["content"])
    assert len(assistant["content"]) < len(reply.text)


def test_ask_prints_reply_when_disk_fills(chatty_home, database_path, monkeypatch, capsys):
    fill_disk(database_path, monkeypatch)
    status = main(["ask", "--temperature", "0", "--max-tokens", str(REPLY_TOKENS), LONG_PROMPT])
    captured = capsys.readouterr()

    assert status == 1
    assert captured.err == (
        f"chatty: The reply above could not be saved: database or disk is full. Free disk space or make {chatty_home} "
        "writable.\n"
    )
    user, assistant = read_messages(database_path)
    printed = captured.out.strip()
    assert printed.startswith(assistant["content"].strip())
    assert len(assistant["content"]) < len(printed)
    assert assistant["status"] == "interrupted"


async def test_tui_read_only_database(chatty_home, database_path, monkeypatch):
    store = Store(database_path)
    kept = store.create_conversation("Saved before")
    store.add_message(kept.id, "user", "keep me")
    store.close()

    app = make_app(generation__max_tokens=20)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_model(pilot, app)
        assert app.conversation_id == kept.id
        make_read_only(monkeypatch)
        expected = (f"The message could not be saved: attempt to write a readonly database. Free disk space or make "
                    f"{chatty_home} writable, then send it again.")

        # A message in the open conversation comes back to the prompt box.
        await send(pilot, app, "Hello there")
        await wait_until(pilot, lambda: expected in notifications(app) and not app._generating)
        await pilot.pause(0.1)
        assert app.prompt.text == "Hello there"
        assert [widget.text for widget in app.query(MessageView)] == ["keep me"]

        # So does the first message of a new conversation, which fails before any widget appears.
        app.prompt.clear()
        await press_now(pilot, app, "ctrl+n")
        await send(pilot, app, "Start over")
        await wait_until(pilot, lambda: notifications(app).count(expected) == 2)
        await pilot.pause(0.1)
        assert app.prompt.text == "Start over"
        assert app.conversation_id is None
        assert not app.query(MessageView)

        # Starring writes too; the app reports it and keeps running.
        app.sidebar.option_list.focus()
        app.sidebar.option_list.highlighted = 0
        await pilot.press("f9")
        await pilot.pause(0.2)
        assert any(message.startswith("Could not star the conversation: attempt to write a readonly database.")
                   for message in notifications(app))
        assert app.is_running
    app.services.close()

    assert [(row["role"], row["content"]) for row in read_messages(database_path)] == [("user", "keep me")]


def test_read_only_database_at_start(chatty_home, monkeypatch, capsys):
    # A new database needs its tables created, so opening it is the first write to fail.
    apply_to_new_connections(monkeypatch, "PRAGMA query_only = ON")
    assert main(["list"]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"chatty: Cannot write the database {chatty_home / 'chatty.db'}: attempt to write a readonly database. "
        f"Free disk space or make it and {chatty_home} writable, or set CHATTY_HOME to another folder.\n"
    )


def test_tui_unusable_data_folder(tmp_path):
    """The chat screen reports an unusable data folder in one line before it takes the terminal."""
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x", encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "chatty.cli"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        env={**os.environ, "CHATTY_HOME": str(not_a_folder)},
    )
    assert result.returncode == 1
    assert result.stderr == (
        f"chatty: The data folder {not_a_folder} is a file, not a folder. Set CHATTY_HOME to a folder.\n"
    )
    assert result.stdout == ""
