"""Choosing training data: saved conversations from the store, or a messages JSONL file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from chatty.finetune.dataset import DatasetError, usable_messages
from chatty.jsonl import read_jsonl


@dataclass
class Selection:
    """Conversations ready for a TrainingJob, and the store conversations left out for lack of a reply."""

    conversations: list[list[dict]] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)

    def describe(self) -> str:
        text = f"{len(self.conversations)} conversations selected"
        if self.skipped:
            text += f"; {len(self.skipped)} without a complete reply are left out"
        return text + "."


def from_store(store, conversation_ids, include_unfinished: bool = False, required: set[int] | None = None) -> Selection:
    """Collect stored conversations as training messages.

    A conversation with no usable assistant reply is skipped and listed in `skipped`, except one
    named in `required` (picked by id on purpose), which raises DatasetError instead.
    """
    required = required or set()
    selection = Selection()
    for conversation_id in dict.fromkeys(conversation_ids):
        conversation = store.get_conversation(conversation_id)
        messages = usable_messages(store.messages(conversation_id), conversation.system_prompt, include_unfinished)
        if not any(message["role"] == "assistant" for message in messages):
            if conversation_id in required:
                raise DatasetError(
                    f"Conversation {conversation_id} ('{conversation.title}') has no complete assistant reply to train on. "
                    "Leave it out of the selection."
                )
            selection.skipped.append((conversation_id, conversation.title))
            continue
        selection.conversations.append(messages)
        selection.sources.append(f"conversation {conversation_id}")
        selection.ids.append(conversation_id)
    return selection


def from_jsonl(path: Path) -> Selection:
    selection = Selection()
    for line, messages in enumerate(read_jsonl(path), start=1):
        selection.conversations.append(messages)
        selection.sources.append(f"{path}:{line}")
    return selection
