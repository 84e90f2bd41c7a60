"""Conversation storage in SQLite: schema, migrations, conversations, messages and search."""

from chatty.store.store import (
    STATUSES, Conversation, ConversationNotFound, InvalidText, SearchHit, Store, StoredMessage, check_text,
)

__all__ = ["STATUSES", "Conversation", "ConversationNotFound", "InvalidText", "SearchHit", "Store", "StoredMessage", "check_text"]
