"""Chat turns: build the prompt from a stored conversation, stream a reply and save it as it grows.

The TUI and `chatty ask` both go through ChatService, so a reply is saved the same way whichever
interface produced it.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass

from chatty.backends import Backend, Generation, GenerationParams, GenerationStats
from chatty.config import Config
from chatty.errors import ChattyError, ContextOverflow
from chatty.runtime import Runtime, RuntimeChoice
from chatty.store import Conversation, Store, StoredMessage, check_text

log = logging.getLogger(__name__)

# A streaming reply is written to the database at least this often, so a crash loses at most this much.
SAVE_INTERVAL_SECONDS = 1.0
DEFAULT_TITLE = "New chat"
TITLE_LENGTH = 60


@dataclass(frozen=True)
class PromptPlan:
    """The messages sent to the model after fitting the conversation into the context window."""

    messages: list[dict]
    prompt_ids: list[int]
    dropped_turns: int
    max_tokens: int


class Reply:
    """A reply being generated and saved. Iterate it (on a worker thread) for the text pieces.

    The assistant message is already in the database, with status 'interrupted' until the reply
    ends. Iteration saves the text at least every SAVE_INTERVAL_SECONDS, then the final status.
    """

    def __init__(self, store: Store, message: StoredMessage, user_message: StoredMessage, generation: Generation, plan: PromptPlan):
        self.store = store
        self.message = message
        self.user_message = user_message
        self.generation = generation
        self.plan = plan
        self.text = ""
        self.status = "interrupted"
        self.error: str | None = None
        # Why the reply could not be saved (a full disk, a read-only folder); the reply still streams.
        self.save_error: str | None = None

    @property
    def stats(self) -> GenerationStats | None:
        return self.generation.stats

    def cancel(self) -> None:
        self.generation.cancel()

    def __iter__(self) -> Iterator[str]:
        last_save = time.monotonic()
        try:
            for piece in self.generation:
                self.text += piece
                yield piece
                if time.monotonic() - last_save >= SAVE_INTERVAL_SECONDS:
                    self._save(content=self.text)
                    last_save = time.monotonic()
        except Exception as error:
            self._fail(error)
            raise
        except BaseException:
            # KeyboardInterrupt, or GeneratorExit when the caller stops iterating: keep what came.
            self._stop()
            raise
        self._finish()

    def _stop(self) -> None:
        self.generation.cancel()
        self.status = "stopped"
        stats = self.generation.stats
        self._save(
            content=self.text,
            status="stopped",
            completion_tokens=len(self.generation.token_ids),
            prompt_tokens=stats.prompt_tokens if stats else len(self.plan.prompt_ids),
        )

    def _finish(self) -> None:
        stats = self.generation.stats
        self.status = "stopped" if stats and stats.stop_reason == "cancelled" else "complete"
        self._save(
            content=self.text,
            status=self.status,
            prompt_tokens=stats.prompt_tokens if stats else None,
            completion_tokens=stats.completion_tokens if stats else None,
            tokens_per_second=round(stats.tokens_per_second, 2) if stats else None,
        )

    def _fail(self, error: Exception) -> None:
        """Record a failed reply: with no text yet, remove the turn so the prompt can be sent again."""
        self.status = "error"
        self.error = str(error)
        log.error("reply %d in conversation %d failed: %s", self.message.id, self.message.conversation_id, error, exc_info=error)
        try:
            if not self.text:
                self.store.delete_message(self.message.id)
                self.store.delete_message(self.user_message.id)
            else:
                self.store.update_message(self.message.id, content=self.text, status="error", error=self.error)
        except sqlite3.Error as save_error:
            self._record_save_error(save_error)

    def _save(self, **changes) -> None:
        """Write the reply's row; a database error is recorded, not raised, so the reply keeps streaming."""
        try:
            self.store.update_message(self.message.id, **changes)
        except sqlite3.Error as error:
            self._record_save_error(error)

    def _record_save_error(self, error: sqlite3.Error) -> None:
        if self.save_error is None:
            log.error("could not save reply %d in conversation %d: %s", self.message.id, self.message.conversation_id, error)
        self.save_error = f"{error}. {storage_advice(self.store)}"


class ChatService:
    """Conversations and replies on top of the store and the active runtime."""

    def __init__(self, config: Config, store: Store, runtime: Runtime):
        self.config = config
        self.store = store
        self.runtime = runtime

    def new_conversation(self, title: str = DEFAULT_TITLE) -> Conversation:
        defaults = self.config.generation
        choice = self.runtime.choice
        return self.store.create_conversation(
            title=title,
            system_prompt=defaults.system_prompt,
            model=choice.model if choice else None,
            backend=choice.backend if choice else None,
            adapter=choice.adapter if choice else None,
            params={"temperature": defaults.temperature, "top_p": defaults.top_p, "max_tokens": defaults.max_tokens},
        )

    def params_for_defaults(self) -> GenerationParams:
        """Return the generation parameters that a new conversation starts with."""
        defaults = self.config.generation
        return GenerationParams(defaults.temperature, defaults.top_p, defaults.max_tokens)

    def params_for(self, conversation: Conversation) -> GenerationParams:
        defaults = self.config.generation
        params = conversation.params
        return GenerationParams(
            temperature=float(params.get("temperature", defaults.temperature)),
            top_p=float(params.get("top_p", defaults.top_p)),
            max_tokens=int(params.get("max_tokens", defaults.max_tokens)),
            seed=params.get("seed"),
        )

    def history(self, conversation: Conversation, before: int | None = None) -> list[dict]:
        """Return the conversation as chat messages: the system prompt, then every kept turn.

        Replies that failed before producing text are left out; stopped and interrupted replies
        count with the text they have. With `before`, only the messages ahead of that message id.
        """
        messages = []
        if conversation.system_prompt.strip():
            messages.append({"role": "system", "content": conversation.system_prompt})
        for message in self.store.messages(conversation.id):
            if message.id == before:
                break
            if message.role == "system" or not message.content:
                continue
            messages.append(message.as_chat())
        return messages

    def plan_prompt(self, backend: Backend, messages: list[dict], max_tokens: int) -> PromptPlan:
        """Drop the oldest turns until the prompt and the reply fit the context window.

        The system prompt and the last user message are always kept. When even they leave no
        room for max_tokens, the reply gets what room there is; when they do not fit at all,
        ContextOverflow is raised.
        """
        n_ctx = backend.context_length
        system = messages[:1] if messages and messages[0]["role"] == "system" else []
        turns = _split_turns(messages[len(system) :])

        def prompt_for(first_turn: int) -> list[dict]:
            return system + [message for turn in turns[first_turn:] for message in turn]

        # Binary search for the fewest dropped turns that fit: the token count falls as turns drop.
        low, high = 0, len(turns) - 1
        while low < high:
            middle = (low + high) // 2
            if backend.count_tokens(prompt_for(middle)) + max_tokens <= n_ctx:
                high = middle
            else:
                low = middle + 1
        kept = prompt_for(low)
        prompt_ids = backend.tokenize_prompt(kept)
        room = n_ctx - len(prompt_ids)
        if room < 1:
            raise ContextOverflow(
                f"The message is too long: the prompt needs {len(prompt_ids)} tokens but the context window holds {n_ctx}. "
                "Shorten the message or the system prompt, or raise [model] n_ctx."
            )
        return PromptPlan(kept, prompt_ids, low, min(max_tokens, room))

    def _save_turn(self, conversation: Conversation, text: str, choice: RuntimeChoice) -> tuple[StoredMessage, StoredMessage]:
        """Save the user's message and the empty assistant row, or raise ChattyError and leave neither."""
        saved: list[int] = []
        try:
            user_message = self.store.add_message(conversation.id, "user", text)
            saved.append(user_message.id)
            if conversation.title == DEFAULT_TITLE:
                self.store.update_conversation(conversation.id, title=title_from(text))
            self.store.update_conversation(conversation.id, model=choice.model, backend=choice.backend, adapter=choice.adapter)
            assistant = self.store.add_message(
                conversation.id, "assistant", "", status="interrupted",
                model=choice.model, backend=choice.backend, adapter=choice.adapter,
            )
        except sqlite3.Error as error:
            log.error("could not save a message in conversation %d: %s", conversation.id, error)
            _delete_quietly(self.store, saved)
            raise ChattyError(f"The message could not be saved: {error}. {storage_advice(self.store)}, then send it again.") from None
        return user_message, assistant

    def reply(self, conversation_id: int, text: str) -> Reply:
        """Save the user's message and start the reply.

        Raises ChattyError for an empty message or one the database cannot take, InvalidText for
        one with a lone surrogate, and ContextOverflow for one that does not fit the context window.
        Nothing is saved in any of these cases.
        """
        if not text.strip():
            raise ChattyError("The message is empty. Type something to send.")
        # Checked before tokenizing, which would fail on the same character with a UnicodeEncodeError.
        check_text("content", text)
        backend = self.runtime.backend
        if backend is None:
            # Loading a default here would hide a failed load behind another model's answer.
            raise ChattyError("No model is loaded. Load one before sending a message.")
        choice: RuntimeChoice = self.runtime.choice
        conversation = self.store.get_conversation(conversation_id)
        params = self.params_for(conversation)

        messages = self.history(conversation) + [{"role": "user", "content": text}]
        plan = self.plan_prompt(backend, messages, params.max_tokens)
        if plan.dropped_turns:
            log.info("conversation %d: %d old turns left out to fit n_ctx", conversation_id, plan.dropped_turns)

        user_message, assistant = self._save_turn(conversation, text, choice)
        generation_params = GenerationParams(params.temperature, params.top_p, plan.max_tokens, params.seed)
        try:
            generation = backend.generate_from_tokens(plan.prompt_ids, generation_params)
        except Exception:
            self.store.delete_message(assistant.id)
            self.store.delete_message(user_message.id)
            raise
        return Reply(self.store, assistant, user_message, generation, plan)


def _delete_quietly(store: Store, message_ids: list[int]) -> None:
    """Delete messages of a turn that could not be saved whole; on a read-only database that fails too."""
    try:
        for message_id in message_ids:
            store.delete_message(message_id)
    except sqlite3.Error as error:
        log.error("could not remove messages %s of an unsaved turn: %s", message_ids, error)


def storage_advice(store: Store) -> str:
    """Return what to do when a write fails, which on a working database means a full disk or a read-only folder."""
    return f"Free disk space or make {store.path.parent} writable"


def _split_turns(messages: list[dict]) -> list[list[dict]]:
    """Group messages into turns that each start at a user message."""
    turns: list[list[dict]] = []
    for message in messages:
        if message["role"] == "user" or not turns:
            turns.append([])
        turns[-1].append(message)
    return turns


def title_from(text: str) -> str:
    """Make a conversation title from the first line of a message."""
    first_line = text.strip().splitlines()[0].strip()
    if len(first_line) <= TITLE_LENGTH:
        return first_line
    return first_line[: TITLE_LENGTH - 1].rstrip() + "…"
