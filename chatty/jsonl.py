"""Conversations as OpenAI-style messages JSONL: one {"messages": [{"role", "content"}, ...]} object per line.

Reading is all or nothing: the first invalid line raises an error that names it, before anything
is imported. Lines end at "\n" only, so U+2028, U+0085 and the other characters that str.splitlines
also treats as line breaks stay inside the JSON strings that contain them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from chatty.errors import ChattyError

ROLES = ("system", "user", "assistant")
_SURROGATE = re.compile("[\ud800-\udfff]")


class JsonlError(ChattyError):
    """A messages JSONL file that cannot be read, with the line at fault."""


def read_jsonl(path: Path) -> list[list[dict]]:
    """Read conversations from a messages JSONL file, or raise JsonlError naming the first invalid line."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise JsonlError(f"Cannot read {path}: {error.strerror}.") from None
    try:
        # utf-8-sig drops the byte order mark that some Windows editors write.
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise JsonlError(f"{path}:{line}: the file is not valid UTF-8. Save it as UTF-8.") from None

    conversations = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        conversations.append(_parse_line(line, f"{path}:{number}"))
    if not conversations:
        raise JsonlError(f"{path} contains no conversations.")
    return conversations


def _parse_line(line: str, where: str) -> list[dict]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise JsonlError(f"{where}: invalid JSON ({error.msg}).") from None
    except RecursionError:
        raise JsonlError(f"{where}: invalid JSON (nested too deeply).") from None
    messages = record.get("messages") if isinstance(record, dict) else None
    if not isinstance(messages, list) or not messages:
        raise JsonlError(f"{where}: expected an object with a non-empty \"messages\" list.")
    for index, message in enumerate(messages, start=1):
        valid = isinstance(message, dict) and message.get("role") in ROLES and isinstance(message.get("content"), str)
        if not valid:
            raise JsonlError(f"{where}: message {index} needs a role (system, user or assistant) and string content.")
        surrogate = _SURROGATE.search(message["content"])
        if surrogate:
            raise JsonlError(
                f"{where}: message {index} contains \\u{ord(surrogate[0]):04x}, a lone surrogate that is not valid "
                "Unicode text. Remove it or replace it with the character it was meant to be."
            )
    return [{"role": message["role"], "content": message["content"]} for message in messages]


def write_jsonl_lines(conversations: list[list[dict]]) -> str:
    """Return conversations as messages JSONL text, one conversation per line."""
    return "".join(json.dumps({"messages": messages}, ensure_ascii=False) + "\n" for messages in conversations)
