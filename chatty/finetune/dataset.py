"""Training examples from saved conversations: chat template rendering and assistant-only loss masks.

Each conversation becomes one example, rendered with the base model's own chat template through
the same ChatTemplate that chatting uses. The loss mask comes from character spans: the rendered
text's assistant contents, each extended by the end-of-turn token that follows it, mapped onto
tokens through the tokenizer's offsets. Stock chat templates carry no `{% generation %}` markers,
so the spans come from ChatTemplate's segments instead.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field

from chatty.errors import ChattyError
from chatty.models.template import ChatTemplate, RenderedPrompt

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # the label value that torch.nn.functional.cross_entropy skips
ROLES = ("system", "user", "assistant")
# Below this many conversations every one is trained on and no validation split is held out.
MIN_CONVERSATIONS_FOR_VALIDATION = 8


class DatasetError(ChattyError):
    """Training data that cannot be used, with the conversation or line that is at fault."""


@dataclass
class Example:
    """One tokenized conversation with its loss mask."""

    source: str
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False

    @property
    def trainable_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class Dataset:
    """Examples split by conversation into training and validation sets."""

    train: list[Example]
    validation: list[Example] = field(default_factory=list)

    @property
    def truncated(self) -> int:
        return sum(example.truncated for example in self.train + self.validation)

    @property
    def trainable_tokens(self) -> int:
        return sum(example.trainable_tokens for example in self.train)


def tokenize_rendered(tokenizer, rendered: RenderedPrompt) -> tuple[list[int], list[tuple[int, int]]]:
    """Tokenize a rendered prompt segment by segment, with character offsets into its full text.

    Template text may produce special tokens; message contents are split like plain text, so the
    string "<|im_end|>" inside a message never becomes the special token.
    """
    ids: list[int] = []
    offsets: list[tuple[int, int]] = []
    position = 0
    for segment in rendered.segments:
        encoded = tokenizer(
            segment.text,
            add_special_tokens=False,
            return_offsets_mapping=True,
            split_special_tokens=segment.kind == "content",
        )
        ids += encoded["input_ids"]
        offsets += [(position + start, position + end) for start, end in encoded["offset_mapping"]]
        position += len(segment.text)
    return ids, offsets


def trainable_spans(rendered: RenderedPrompt, end_of_turn: str) -> list[tuple[int, int]]:
    """Return character spans that carry loss: each assistant content plus the end-of-turn text after it."""
    spans = []
    text = rendered.text
    for start, end, segment in rendered.content_spans():
        if segment.role != "assistant":
            continue
        if end_of_turn and text.startswith(end_of_turn, end):
            end += len(end_of_turn)
        spans.append((start, end))
    return spans


def build_example(
    tokenizer,
    template: ChatTemplate,
    messages: list[dict],
    max_length: int,
    source: str,
    bos_id: int | None = None,
    end_of_turn: str | None = None,
) -> Example:
    """Render, tokenize and mask one conversation.

    Raises DatasetError when no assistant token remains trainable, before or after truncation.
    """
    _check_messages(messages, source)
    rendered = template.render(messages, add_generation_prompt=False)
    ids, offsets = tokenize_rendered(tokenizer, rendered)
    spans = trainable_spans(rendered, end_of_turn if end_of_turn is not None else template.eos_token)

    # A token counts where it starts: byte-level tokenizers trim whitespace from offsets, so a
    # token of spaces can have an empty span.
    labels = []
    for token_id, (start, _end) in zip(ids, offsets):
        inside = any(span_start <= start < span_end for span_start, span_end in spans)
        labels.append(token_id if inside else IGNORE_INDEX)

    if bos_id is not None and (not ids or ids[0] != bos_id):
        ids.insert(0, bos_id)
        labels.insert(0, IGNORE_INDEX)

    truncated = len(ids) > max_length
    example = Example(source, ids[:max_length], labels[:max_length], truncated)
    if example.trainable_tokens == 0:
        reason = "after truncation to max_seq_length" if truncated else "because it has no assistant reply"
        raise DatasetError(f"{source} has no trainable token {reason}. Remove it from the selection.")
    return example


def _check_messages(messages: list[dict], source: str) -> None:
    if not messages:
        raise DatasetError(f"{source} has no messages.")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES or not isinstance(message.get("content"), str):
            raise DatasetError(
                f"{source}: message {index + 1} must be an object with a role (system, user or assistant) and text content."
            )


def split_dataset(examples: list[Example], validation_fraction: float, seed: int) -> Dataset:
    """Hold out whole conversations for validation when there are enough of them."""
    if len(examples) < MIN_CONVERSATIONS_FOR_VALIDATION or validation_fraction <= 0:
        return Dataset(train=list(examples))
    shuffled = list(examples)
    random.Random(seed).shuffle(shuffled)
    count = max(1, round(len(shuffled) * validation_fraction))
    return Dataset(train=shuffled[count:], validation=shuffled[:count])


# Selecting conversations from the store


def usable_messages(stored_messages, system_prompt: str = "", include_unfinished: bool = False) -> list[dict]:
    """Return a stored conversation as chat messages for training.

    Replies that were stopped, interrupted or failed are left out with the user turn they answer,
    unless include_unfinished is set.
    """
    messages = [{"role": "system", "content": system_prompt}] if system_prompt.strip() else []
    pending_user: list[dict] = []
    for message in stored_messages:
        if message.role == "user":
            pending_user = [message.as_chat()]
        elif message.role == "assistant":
            if message.status == "complete" or (include_unfinished and message.content):
                messages += pending_user + [message.as_chat()]
            pending_user = []
    return messages

