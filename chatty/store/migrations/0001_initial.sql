-- Schema version 1: conversations, messages and full-text search over message contents.

CREATE TABLE conversations (
    id INTEGER PRIMARY KEY,
    title TEXT NOT NULL,
    system_prompt TEXT NOT NULL DEFAULT '',
    model TEXT,
    backend TEXT,
    adapter TEXT,
    -- Generation parameters as a JSON object: temperature, top_p, max_tokens.
    params TEXT NOT NULL DEFAULT '{}',
    starred INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

CREATE INDEX conversations_by_update ON conversations (updated_at DESC);

CREATE TABLE messages (
    id INTEGER PRIMARY KEY,
    conversation_id INTEGER NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
    content TEXT NOT NULL,
    -- A reply is inserted as 'interrupted' and set to its final status when it ends, so a reply
    -- cut short by a crash keeps the status that describes it with no recovery step.
    status TEXT NOT NULL DEFAULT 'complete'
        CHECK (status IN ('complete', 'stopped', 'interrupted', 'error')),
    model TEXT,
    backend TEXT,
    adapter TEXT,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    tokens_per_second REAL,
    error TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

CREATE INDEX messages_by_conversation ON messages (conversation_id, id);

CREATE VIRTUAL TABLE messages_fts USING fts5 (content, content = 'messages', content_rowid = 'id');

CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts (rowid, content) VALUES (new.id, new.content);
END;

CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
END;

CREATE TRIGGER messages_fts_update AFTER UPDATE OF content ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
    INSERT INTO messages_fts (rowid, content) VALUES (new.id, new.content);
END;
