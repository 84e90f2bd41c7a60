"""Conversations and messages in SQLite. The store knows nothing of the screen or the models."""

from __future__ import annotations

import json
import re
import sqlite3
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from chatty.errors import ChattyError
from chatty.store.database import Database

Role = Literal["system", "user", "assistant"]
Status = Literal["complete", "stopped", "interrupted", "error"]
STATUSES: tuple[Status, ...] = ("complete", "stopped", "interrupted", "error")


def now() -> str:
    """Return the current UTC time as ISO 8601 with microseconds, which sorts as text."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


@dataclass
class Conversation:
    id: int
    title: str
    system_prompt: str
    model: str | None
    backend: str | None
    adapter: str | None
    params: dict = field(default_factory=dict)
    starred: bool = False
    created_at: str = ""
    updated_at: str = ""

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Conversation:
        return cls(
            id=row["id"],
            title=row["title"],
            system_prompt=row["system_prompt"],
            model=row["model"],
            backend=row["backend"],
            adapter=row["adapter"],
            params=json.loads(row["params"] or "{}"),
            starred=bool(row["starred"]),
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )


@dataclass
class StoredMessage:
    id: int
    conversation_id: int
    role: Role
    content: str
    status: Status = "complete"
    model: str | None = None
    backend: str | None = None
    adapter: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    tokens_per_second: float | None = None
    error: str | None = None
    created_at: str = ""
    updated_at: str = ""

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> StoredMessage:
        return cls(**{key: row[key] for key in row.keys()})

    def as_chat(self) -> dict:
        """Return the {"role", "content"} form that chat templates take."""
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class SearchHit:
    conversation_id: int
    message_id: int
    title: str
    snippet: str


class ConversationNotFound(ChattyError):
    pass


class InvalidText(ChattyError):
    """Text that cannot be saved: it contains a lone surrogate, which has no UTF-8 encoding."""


# Lone surrogates reach Python strings through JSON escapes such as "\ud800" and through command-line
# arguments that are not valid UTF-8; SQLite stores text as UTF-8, which cannot encode them.
_SURROGATE = re.compile("[\ud800-\udfff]")
_FIELD_NAMES = {
    "title": "title", "system_prompt": "system prompt", "content": "message", "model": "model name",
    "backend": "backend name", "adapter": "adapter name", "error": "error text",
}


def check_text(field: str, text) -> None:
    """Raise InvalidText when a text field contains a lone surrogate. NUL and every other character are stored as they are."""
    if not isinstance(text, str):
        return
    match = _SURROGATE.search(text)
    if match:
        raise InvalidText(
            f"The {_FIELD_NAMES.get(field, field)} contains U+{ord(match[0]):04X} at character {match.start() + 1}, "
            "a lone surrogate that is not valid Unicode, so it cannot be saved. Remove that character and try again."
        )


def _check_fields(fields: dict) -> None:
    for name, value in fields.items():
        check_text(name, value)


_CONVERSATION_FIELDS = {"title", "system_prompt", "model", "backend", "adapter", "params", "starred"}
_MESSAGE_FIELDS = {
    "content", "status", "model", "backend", "adapter", "prompt_tokens", "completion_tokens", "tokens_per_second", "error",
}


class Store:
    """Conversation storage in one SQLite file."""

    def __init__(self, path: Path):
        self.db = Database(path).open()

    @property
    def path(self) -> Path:
        return self.db.path

    def close(self) -> None:
        self.db.close()

    # Conversations

    def create_conversation(
        self,
        title: str = "New chat",
        system_prompt: str = "",
        model: str | None = None,
        backend: str | None = None,
        adapter: str | None = None,
        params: dict | None = None,
    ) -> Conversation:
        _check_fields({"title": title, "system_prompt": system_prompt, "model": model, "backend": backend, "adapter": adapter})
        timestamp = now()
        cursor = self.db.connection.execute(
            "INSERT INTO conversations (title, system_prompt, model, backend, adapter, params, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (title, system_prompt, model, backend, adapter, json.dumps(params or {}), timestamp, timestamp),
        )
        return self.get_conversation(cursor.lastrowid)

    def get_conversation(self, conversation_id: int) -> Conversation:
        row = self.db.connection.execute("SELECT * FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
        if row is None:
            raise ConversationNotFound(f"Conversation {conversation_id} not found. Run `chatty list` to see the ids.")
        return Conversation.from_row(row)

    def list_conversations(self, limit: int | None = None, starred: bool = False) -> list[Conversation]:
        """Return conversations, most recently updated first; only starred ones when `starred` is set."""
        where = "WHERE starred = 1" if starred else ""
        rows = self.db.connection.execute(
            f"SELECT * FROM conversations {where} ORDER BY updated_at DESC, id DESC LIMIT ?", (limit if limit else -1,)
        )
        return [Conversation.from_row(row) for row in rows]

    def message_counts(self) -> dict[int, int]:
        """Return the number of messages in each conversation, by conversation id."""
        rows = self.db.connection.execute("SELECT conversation_id, COUNT(*) FROM messages GROUP BY conversation_id")
        return {row[0]: row[1] for row in rows}

    def import_conversations(self, conversations: list[tuple[str, list[dict]]]) -> list[int]:
        """Insert (title, messages) pairs in one transaction: all of them are saved, or none."""
        for title, messages in conversations:
            check_text("title", title)
            for message in messages:
                check_text("content", message["content"])
        ids = []
        with self.db.transaction() as connection:
            for title, messages in conversations:
                timestamp = now()
                system = "".join(m["content"] for m in messages[:1] if m["role"] == "system")
                cursor = connection.execute(
                    "INSERT INTO conversations (title, system_prompt, params, created_at, updated_at) VALUES (?, ?, '{}', ?, ?)",
                    (title, system, timestamp, timestamp),
                )
                conversation_id = cursor.lastrowid
                for message in messages[1:] if system else messages:
                    connection.execute(
                        "INSERT INTO messages (conversation_id, role, content, status, created_at, updated_at)"
                        " VALUES (?, ?, ?, 'complete', ?, ?)",
                        (conversation_id, message["role"], message["content"], timestamp, timestamp),
                    )
                ids.append(conversation_id)
        return ids

    def update_conversation(self, conversation_id: int, **changes) -> Conversation:
        unknown = set(changes) - _CONVERSATION_FIELDS
        if unknown:
            raise TypeError(f"unknown conversation fields: {', '.join(sorted(unknown))}")
        _check_fields(changes)
        if "params" in changes:
            changes["params"] = json.dumps(changes["params"])
        if "starred" in changes:
            changes["starred"] = int(bool(changes["starred"]))
        # updated_at tracks new messages only, so renaming or starring keeps a conversation's place.
        assignments = ", ".join(f"{name} = ?" for name in changes)
        self.db.connection.execute(
            f"UPDATE conversations SET {assignments} WHERE id = ?", (*changes.values(), conversation_id)
        )
        return self.get_conversation(conversation_id)

    def rename_conversation(self, conversation_id: int, title: str) -> Conversation:
        return self.update_conversation(conversation_id, title=title)

    def delete_conversation(self, conversation_id: int) -> None:
        self.db.connection.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))

    # Messages

    def add_message(self, conversation_id: int, role: Role, content: str, status: Status = "complete", **details) -> StoredMessage:
        """Insert a message and mark its conversation as updated, in one transaction."""
        unknown = set(details) - _MESSAGE_FIELDS
        if unknown:
            raise TypeError(f"unknown message fields: {', '.join(sorted(unknown))}")
        _check_fields({"content": content, **details})
        timestamp = now()
        columns = ["conversation_id", "role", "content", "status", "created_at", "updated_at", *details]
        values = [conversation_id, role, content, status, timestamp, timestamp, *details.values()]
        with self.db.transaction() as connection:
            cursor = connection.execute(
                f"INSERT INTO messages ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})", values
            )
            connection.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", (timestamp, conversation_id))
        return self.get_message(cursor.lastrowid)

    def update_message(self, message_id: int, **changes) -> None:
        unknown = set(changes) - _MESSAGE_FIELDS
        if unknown:
            raise TypeError(f"unknown message fields: {', '.join(sorted(unknown))}")
        _check_fields(changes)
        assignments = ", ".join(f"{name} = ?" for name in changes)
        self.db.connection.execute(
            f"UPDATE messages SET {assignments}, updated_at = ? WHERE id = ?", (*changes.values(), now(), message_id)
        )

    def get_message(self, message_id: int) -> StoredMessage:
        row = self.db.connection.execute("SELECT * FROM messages WHERE id = ?", (message_id,)).fetchone()
        if row is None:
            raise ChattyError(f"Message {message_id} not found.")
        return StoredMessage.from_row(row)

    def messages(self, conversation_id: int) -> list[StoredMessage]:
        rows = self.db.connection.execute(
            "SELECT * FROM messages WHERE conversation_id = ? ORDER BY id", (conversation_id,)
        )
        return [StoredMessage.from_row(row) for row in rows]

    def delete_message(self, message_id: int) -> None:
        self.db.connection.execute("DELETE FROM messages WHERE id = ?", (message_id,))

    # Search

    def search(self, query: str, limit: int = 50) -> list[SearchHit]:
        """Full-text search over message contents; every word must match, the last one as a prefix."""
        match = fts_query(query)
        if not match:
            return []
        rows = self.db.connection.execute(
            "SELECT m.conversation_id, m.id, c.title,"
            " snippet(messages_fts, 0, '[', ']', '…', 12) AS snippet"
            " FROM messages_fts JOIN messages m ON m.id = messages_fts.rowid"
            " JOIN conversations c ON c.id = m.conversation_id"
            " WHERE messages_fts MATCH ? ORDER BY rank LIMIT ?",
            (match, limit),
        )
        return [SearchHit(row[0], row[1], row[2], row[3]) for row in rows]

    def search_conversations(self, query: str, limit: int = 50) -> list[Conversation]:
        """Return conversations with a message matching the query, or whose title matches, newest first."""
        match = fts_query(query)
        if not match:
            return self.list_conversations(limit)
        rows = self.db.connection.execute(
            "SELECT * FROM conversations WHERE id IN ("
            "  SELECT m.conversation_id FROM messages_fts JOIN messages m ON m.id = messages_fts.rowid"
            "  WHERE messages_fts MATCH ?)"
            " OR title LIKE ? ESCAPE '\\'"
            " ORDER BY updated_at DESC, id DESC LIMIT ?",
            (match, "%" + _escape_like(query.strip()) + "%", limit),
        )
        return [Conversation.from_row(row) for row in rows]


def fts_query(text: str) -> str:
    """Turn user text into an FTS5 query that cannot be a syntax error: quoted words, last as prefix."""
    words = text.split()
    if not words:
        return ""
    quoted = ['"' + word.replace('"', '""') + '"' for word in words]
    quoted[-1] += "*"
    return " ".join(quoted)


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
