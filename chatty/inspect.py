"""Looking inside the model: the prompt a message becomes, its tokens, and a reply's next-token odds.

The TUI's token views and `chatty tokenize` build on these functions. They take the loaded backend
and the chat service, so what they show is what the model receives: the same chat template, the
same tokenization and the same dropping of old turns as a real reply.
"""

from __future__ import annotations

from dataclasses import dataclass

from chatty.backends.base import Backend
from chatty.backends.candidates import DEFAULT_TOP_K, TokenCandidates
from chatty.backends.tokens import TokenPiece
from chatty.chat import ChatService
from chatty.errors import ChattyError
from chatty.models.template import RenderedPrompt
from chatty.store import StoredMessage


@dataclass(frozen=True)
class PromptInspection:
    """A prompt as the model receives it: the rendered template, its tokens and the context it fills."""

    rendered: RenderedPrompt
    tokens: list[TokenPiece]
    context_length: int
    # Oldest turns left out so that the prompt and a reply fit the context window.
    dropped_turns: int = 0

    @property
    def token_count(self) -> int:
        return len(self.tokens)

    @property
    def context_fraction(self) -> float:
        return self.token_count / self.context_length if self.context_length else 0.0

    def special_texts(self) -> set[str]:
        """Return the text of every special token in the prompt, such as "<|im_start|>"."""
        return {token.piece for token in self.tokens if token.special and token.piece}


@dataclass(frozen=True)
class ReplyInspection:
    """A reply's next-token candidates, recomputed by the loaded backend."""

    candidates: list[TokenCandidates]
    dropped_turns: int
    backend: str
    model: str
    adapter: str | None


def inspect_prompt(backend: Backend, messages: list[dict], add_generation_prompt: bool = True,
                   dropped_turns: int = 0) -> PromptInspection:
    """Render and tokenize messages exactly as a reply to them would be."""
    rendered = backend.render(messages, add_generation_prompt)
    token_ids = backend.tokenize_prompt(messages, add_generation_prompt)
    return PromptInspection(rendered, backend.token_pieces(token_ids), backend.context_length, dropped_turns)


def inspect_message(chat: ChatService, backend: Backend, conversation_id: int, message_id: int) -> PromptInspection:
    """Inspect the prompt around a stored message.

    For a user message it is the prompt that the reply to it reads, with old turns dropped as a
    reply drops them. For an assistant message it is the conversation up to and including that
    reply, as the next prompt will contain it.
    """
    before, message = messages_before(chat, conversation_id, message_id)
    messages = before + [message.as_chat()]
    if message.role == "assistant":
        return inspect_prompt(backend, messages, add_generation_prompt=False)
    return _planned_prompt(chat, backend, conversation_id, messages)


def inspect_draft(chat: ChatService, backend: Backend, conversation_id: int | None, draft: str) -> PromptInspection:
    """Inspect the prompt that sending `draft` would produce; an empty draft shows the conversation so far."""
    history = []
    if conversation_id is not None:
        history = chat.history(chat.store.get_conversation(conversation_id))
    elif chat.config.generation.system_prompt.strip():
        history = [{"role": "system", "content": chat.config.generation.system_prompt}]
    if not draft.strip():
        return inspect_prompt(backend, history, add_generation_prompt=False)
    return _planned_prompt(chat, backend, conversation_id, history + [{"role": "user", "content": draft}])


def inspect_reply(chat: ChatService, backend: Backend, conversation_id: int, message_id: int,
                  k: int = DEFAULT_TOP_K) -> ReplyInspection:
    """Recompute the next-token candidates of a stored assistant reply on the loaded backend."""
    before, message = messages_before(chat, conversation_id, message_id)
    if message.role != "assistant":
        raise ChattyError("Next-token odds exist only for assistant replies. Select a reply first.")
    if not message.content:
        raise ChattyError("The reply is empty, so it has no tokens to inspect.")

    conversation = chat.store.get_conversation(conversation_id)
    plan = chat.plan_prompt(backend, before, chat.params_for(conversation).max_tokens)
    # A reply streaming from the same model finishes first: both would move its KV cache.
    with backend.in_use:
        candidates = backend.token_candidates(plan.messages, message.content, k)
    return ReplyInspection(candidates, plan.dropped_turns, backend.name, backend.model.id, backend.adapter_name)


def messages_before(chat: ChatService, conversation_id: int, message_id: int) -> tuple[list[dict], StoredMessage]:
    """Return the chat messages that precede a stored message, as ChatService.history builds them, and the message."""
    conversation = chat.store.get_conversation(conversation_id)
    message = next((m for m in chat.store.messages(conversation_id) if m.id == message_id), None)
    if message is None:
        raise ChattyError(f"Message {message_id} is not in conversation {conversation_id}; it may have been deleted.")
    return chat.history(conversation, before=message_id), message


def _planned_prompt(chat: ChatService, backend: Backend, conversation_id: int | None, messages: list[dict]) -> PromptInspection:
    """Inspect messages that end with a user message, after dropping old turns as a reply would."""
    if conversation_id is not None:
        max_tokens = chat.params_for(chat.store.get_conversation(conversation_id)).max_tokens
    else:
        max_tokens = chat.params_for_defaults().max_tokens
    plan = chat.plan_prompt(backend, messages, max_tokens)
    return inspect_prompt(backend, plan.messages, add_generation_prompt=True, dropped_turns=plan.dropped_turns)


def printable_piece(piece: str) -> str:
    """Write a token piece on one line: backslash, newline, carriage return and tab as escapes."""
    return piece.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
