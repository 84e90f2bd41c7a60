"""Conversation storage in SQLite: schema, migrations, conversations, messages and search."""

from chatty.store.store import STATUSES, Conversation, ConversationNotFound, SearchHit, Store, StoredMessage

__all__ = ["STATUSES", "Conversation", "ConversationNotFound", "SearchHit", "Store", "StoredMessage"]
