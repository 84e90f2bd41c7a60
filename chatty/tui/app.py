"""The chatty Textual application: one chat screen with a sidebar, messages, prompt and status line.

Generation runs in a thread worker and reports back with messages; the app asks ChatService for
replies and renders what comes back, and never writes to the store from a widget.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable
from functools import partial
from dataclasses import dataclass

from textual import work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Footer, LoadingIndicator

from chatty.chat import Reply, storage_advice
from chatty.clipboard import copy_text
from chatty.config import KeysConfig
from chatty.errors import ChattyError
from chatty.inspect import inspect_draft, inspect_message, inspect_reply
from chatty.text import code_blocks, show_controls
from chatty.tui.screens.code_picker import CodePickerScreen
from chatty.tui.screens.dialogs import ConfirmScreen, TextInputScreen
from chatty.tui.screens.finetune import FinetuneScreen
from chatty.tui.screens.help import HelpScreen
from chatty.tui.screens.model_card import ModelCardScreen
from chatty.tui.screens.next_tokens import NextTokenScreen
from chatty.tui.screens.prompt_tokens import PromptTokensScreen
from chatty.tui.screens.model_picker import Choice, ModelPickerScreen
from chatty.tui.screens.settings import ConversationSettings, SettingsScreen
from chatty.tui.threads import call_soon
from chatty.tui.widgets.chat_view import ChatView
from chatty.tui.widgets.message import AssistantMessage, MessageView, ReplyDetails, UserMessage
from chatty.tui.widgets.prompt import PromptInput
from chatty.tui.widgets.sidebar import Sidebar
from chatty.tui.widgets.status import StatusLine

log = logging.getLogger(__name__)

KEYS = KeysConfig()
SEARCH_DELAY_SECONDS = 0.2
FLUSH_SECONDS = 1 / 30
# Actions of the chat screen: off while another screen is on top, where they would act unseen.
# Textual's own actions (focus_next, command_palette and the like) stay on everywhere.
CHAT_ACTIONS = {
    "new_conversation", "rename_conversation", "delete_conversation", "search", "settings", "switch_model",
    "star_conversation", "finetune", "copy_reply", "copy_code", "show_prompt", "show_odds", "model_card",
    "focus_prompt", "toggle_sidebar",
}


@dataclass
class ReplyStarted(Message):
    reply: Reply


@dataclass
class ReplyPiece(Message):
    text: str


@dataclass
class ReplyEnded(Message):
    reply: Reply


@dataclass
class ReplyFailed(Message):
    error: Exception
    prompt: str
    reply: Reply | None


@dataclass
class ModelLoaded(Message):
    context_size: int


@dataclass
class ModelFailed(Message):
    error: Exception


def _freeze_long_lived_objects() -> None:
    """Move the objects that live as long as the app out of the garbage collector's view.

    A full collection walks every tracked object. With a model library loaded that took up to 0.4 s
    on the event loop in the middle of a streaming reply; frozen objects are skipped.
    """
    gc.collect()
    gc.freeze()


class ChattyApp(App):
    CSS_PATH = "chatty.tcss"
    TITLE = "chatty"

    BINDINGS = [
        Binding(KEYS.stop, "stop", "Stop", id="stop"),
        Binding(KEYS.new_conversation, "new_conversation", "New", id="new_conversation"),
        Binding(KEYS.rename_conversation, "rename_conversation", "Rename", id="rename_conversation"),
        Binding(KEYS.delete_conversation, "delete_conversation", "Delete", id="delete_conversation"),
        Binding(KEYS.search, "search", "Search", id="search", show=False),
        Binding(KEYS.settings, "settings", "Settings", id="settings"),
        Binding(KEYS.switch_model, "switch_model", "Model", id="switch_model"),
        Binding(KEYS.star_conversation, "star_conversation", "Star", id="star_conversation", show=False),
        Binding(KEYS.finetune, "finetune", "Fine-tune", id="finetune"),
        Binding(KEYS.copy_reply, "copy_reply", "Copy", id="copy_reply"),
        Binding(KEYS.copy_code, "copy_code", "Copy code", id="copy_code", show=False),
        Binding(KEYS.show_prompt, "show_prompt", "Tokens", id="show_prompt", show=False),
        Binding(KEYS.show_odds, "show_odds", "Odds", id="show_odds", show=False),
        Binding(KEYS.model_card, "model_card", "Model card", id="model_card", show=False),
        Binding(KEYS.focus_prompt, "focus_prompt", "Prompt", id="focus_prompt", show=False),
        Binding(KEYS.toggle_sidebar, "toggle_sidebar", "Sidebar", id="toggle_sidebar", show=False),
        Binding(KEYS.help, "help", "Help", id="help"),
        Binding(KEYS.quit, "quit", "Quit", id="quit", priority=True),
    ]

    def __init__(self, services, model: str | None = None, backend: str | None = None):
        super().__init__()
        self.services = services
        self.initial_model = model
        self.initial_backend = backend
        self.conversation_id: int | None = None
        self.reply: Reply | None = None
        self._assistant: AssistantMessage | None = None
        self._user: UserMessage | None = None
        self._generating = False
        self._stop_requested = False
        self._search_timer: Timer | None = None
        self._search_query = ""
        # Set while no model load is in progress; a reply waits for it.
        self._model_ready = threading.Event()
        self._model_ready.set()
        self._load_error: Exception | None = None
        # Whether the open conversation was created for the reply in progress (and is empty if it fails).
        self._created_for_reply = False

    def notify(self, message: str, *, title: str = "", severity="information", timeout=None, markup: bool = True):
        # Messages carry conversation titles, paths and model names, so "[" must stay text; Textual
        # would parse it as markup and fail on a stray closing tag. The same values may contain escape
        # sequences, which Textual would pass to the terminal.
        return super().notify(show_controls(message), title=show_controls(title), severity=severity, timeout=timeout,
                              markup=False)

    @contextlib.contextmanager
    def reporting_store_errors(self, action: str):
        """Turn a failed database write into a notification, so a full disk or a read-only folder never ends the app."""
        try:
            yield
        except sqlite3.Error as error:
            log.error("could not %s: %s", action, error)
            self.notify(f"Could not {action}: {error}. {storage_advice(self.services.store)}.", title="Not saved",
                        severity="error", timeout=15)

    # Layout

    def compose(self) -> ComposeResult:
        with Horizontal(id="main"):
            yield Sidebar()
            with Vertical():
                yield ChatView()
                yield PromptInput(id="prompt")
                with Horizontal(id="statusbar"):
                    yield StatusLine()
                    yield LoadingIndicator(id="busy")
        yield Footer()

    @property
    def chat_view(self) -> ChatView:
        return self.query_one(ChatView)

    @property
    def prompt(self) -> PromptInput:
        return self.query_one(PromptInput)

    @property
    def sidebar(self) -> Sidebar:
        return self.query_one(Sidebar)

    @property
    def status(self) -> StatusLine:
        return self.query_one(StatusLine)

    async def on_mount(self) -> None:
        config = self.services.config
        self.set_keymap(config.keymap())
        if config.ui.theme in self.available_themes:
            self.theme = config.ui.theme
        else:
            self.notify(f"Theme '{config.ui.theme}' not found; using the default. Set [ui] theme to one the palette lists.",
                        severity="warning")

        conversations = self.services.store.list_conversations(limit=500)
        self.sidebar.show(conversations, None)
        if conversations:
            await self.open_conversation(conversations[0].id)
        else:
            await self.chat_view.show_messages([])
        self.prompt.focus()
        self.services.runtime.reserve_interface_core = True
        self.load_model(self.initial_model, self.initial_backend)
        _freeze_long_lived_objects()

    def set_busy(self, busy: bool) -> None:
        self.query_one("#busy").set_class(busy, "-active")

    # Model loading

    @work(thread=True, exclusive=True, group="load")
    def load_model(self, model: str | None, backend: str | None) -> None:
        self._model_ready.clear()
        call_soon(self, self._show_loading, model)
        try:
            loaded = self.services.runtime.load(model, backend)
        except Exception as error:  # shown to the user; a failed load leaves the old model in place
            log.error("model load failed: %s", error, exc_info=not isinstance(error, ChattyError))
            self._load_error = error
            self.post_message(ModelFailed(error))
            return
        finally:
            self._model_ready.set()
        self._load_error = None
        self.post_message(ModelLoaded(loaded.context_length))

    def action_switch_model(self) -> None:
        if self._generating:
            self.notify("A reply is still streaming. Press Esc to stop it first.", severity="warning")
            return

        def switch(choice: Choice | None) -> None:
            if choice is not None:
                self.switch_runtime(choice)

        self.push_screen(ModelPickerScreen(self.services.runtime), switch)

    @work(thread=True, exclusive=True, group="load")
    def switch_runtime(self, choice: Choice) -> None:
        """Load the chosen model and backend (a no-op when they are loaded already), then set the adapter."""
        self._model_ready.clear()
        call_soon(self, self._show_loading, choice.model)
        runtime = self.services.runtime
        try:
            backend = runtime.load(choice.model, choice.backend)
            runtime.set_adapter(choice.adapter)
        except Exception as error:  # shown to the user; the previous model stays loaded
            log.error("switching to %s failed: %s", choice, error, exc_info=not isinstance(error, ChattyError))
            self.post_message(ModelFailed(error))
            return
        finally:
            self._model_ready.set()
        self._load_error = None
        self.post_message(ModelLoaded(backend.context_length))

    def _show_loading(self, model: str | None) -> None:
        self.status.activity = f"loading {model or 'model'}…"
        self.set_busy(True)

    def on_model_loaded(self, event: ModelLoaded) -> None:
        choice = self.services.runtime.choice
        status = self.status
        status.model = choice.model
        status.backend = choice.backend
        status.adapter = choice.adapter
        status.context_size = event.context_size
        status.activity = ""
        self.set_busy(self._generating)
        self.update_context_use()
        _freeze_long_lived_objects()

    def on_model_failed(self, event: ModelFailed) -> None:
        self.status.activity = ""
        self.set_busy(self._generating)
        choice = self.services.runtime.choice
        if choice is None:
            self.status.model = "no model loaded"
        else:
            # Whatever is loaded after the failure, the status line says it.
            self.status.model, self.status.backend, self.status.adapter = choice.model, choice.backend, choice.adapter
        self.notify(str(event.error), title="Model not loaded", severity="error", timeout=15)

    @work(thread=True, exclusive=True, group="context")
    def update_context_use(self) -> None:
        """Count the open conversation's prompt tokens with the active model's tokenizer."""
        backend = self.services.runtime.backend
        if backend is None:
            return
        messages = []
        if self.conversation_id is not None:
            conversation = self.services.store.get_conversation(self.conversation_id)
            messages = self.services.chat.history(conversation)
        used = backend.count_tokens(messages) if messages else 0
        call_soon(self, self._show_context_use, used)

    def _show_context_use(self, used: int) -> None:
        self.status.context_used = used

    def _show_conversations(self, conversations) -> None:
        self.sidebar.show(conversations, self.conversation_id)

    # Conversations

    async def open_conversation(self, conversation_id: int) -> None:
        if self._generating:
            self.notify("A reply is still streaming. Press Esc to stop it first.", severity="warning")
            return
        self.conversation_id = conversation_id
        messages = self.services.store.messages(conversation_id)
        await self.chat_view.show_messages(messages)
        self.sidebar.highlight(conversation_id)
        self.update_context_use()

    async def on_sidebar_selected(self, event: Sidebar.Selected) -> None:
        await self.open_conversation(event.conversation_id)
        self.prompt.focus()

    def on_sidebar_search_changed(self, event: Sidebar.SearchChanged) -> None:
        self._search_query = event.query
        if self._search_timer is not None:
            self._search_timer.stop()
        self._search_timer = self.set_timer(SEARCH_DELAY_SECONDS, self.refresh_sidebar)

    @work(thread=True, exclusive=True, group="sidebar")
    def refresh_sidebar(self) -> None:
        query = self._search_query.strip()
        store = self.services.store
        conversations = store.search_conversations(query, limit=500) if query else store.list_conversations(limit=500)
        call_soon(self, self._show_conversations, conversations)

    async def action_new_conversation(self) -> None:
        if self._generating:
            self.notify("A reply is still streaming. Press Esc to stop it first.", severity="warning")
            return
        # The conversation is created with its first message, so empty chats never pile up.
        self.conversation_id = None
        await self.chat_view.show_messages([])
        self.sidebar.highlight(None)
        self.status.context_used = 0
        self.prompt.focus()

    def _target_conversation(self) -> int | None:
        """The conversation that rename and delete act on: the one highlighted in the sidebar, else the open one."""
        if self.sidebar.has_focus_within and self.sidebar.highlighted_id is not None:
            return self.sidebar.highlighted_id
        return self.conversation_id

    def action_rename_conversation(self) -> None:
        conversation_id = self._target_conversation()
        if conversation_id is None:
            self.notify("No conversation to rename yet. Send a message first.", severity="warning")
            return
        conversation = self.services.store.get_conversation(conversation_id)

        def rename(title: str | None) -> None:
            if title:
                with self.reporting_store_errors("rename the conversation"):
                    self.services.store.rename_conversation(conversation_id, title)
                self.refresh_sidebar()

        # The box starts with the title's control characters made visible, since an Input shows them raw.
        self.push_screen(TextInputScreen("Rename conversation", show_controls(conversation.title)), rename)

    def action_delete_conversation(self) -> None:
        conversation_id = self._target_conversation()
        if conversation_id is None:
            self.notify("No conversation to delete.", severity="warning")
            return
        if self._generating and conversation_id == self.conversation_id:
            self.notify("A reply is still streaming. Press Esc to stop it first.", severity="warning")
            return
        conversation = self.services.store.get_conversation(conversation_id)

        async def delete(confirmed: bool | None) -> None:
            if not confirmed:
                return
            with self.reporting_store_errors("delete the conversation"):
                self.services.store.delete_conversation(conversation_id)
                log.info("deleted conversation %d", conversation_id)
                if conversation_id == self.conversation_id:
                    await self.action_new_conversation()
                self.notify(f"Deleted '{conversation.title}'.")
            self.refresh_sidebar()

        question = f"Delete '{conversation.title}' and all its messages? This cannot be undone."
        self.push_screen(ConfirmScreen(question), delete)

    def action_finetune(self) -> None:
        import importlib.util

        missing = [name for name in ("torch", "transformers", "peft") if importlib.util.find_spec(name) is None]
        if missing:
            self.notify(f"Fine-tuning needs {', '.join(missing)}. Install them with: pip install 'chatty[torch]'",
                        title="Fine-tuning unavailable", severity="error", timeout=15)
            return
        if self._generating:
            self.notify("A reply is still streaming. Press Esc to stop it first.", severity="warning")
            return

        def use(choice: Choice | None) -> None:
            if choice is not None:
                self.switch_runtime(choice)

        self.push_screen(FinetuneScreen(self.services), use)

    def action_star_conversation(self) -> None:
        conversation_id = self._target_conversation()
        if conversation_id is None:
            self.notify("No conversation to star yet. Send a message first.", severity="warning")
            return
        conversation = self.services.store.get_conversation(conversation_id)
        with self.reporting_store_errors("star the conversation"):
            self.services.store.update_conversation(conversation_id, starred=not conversation.starred)
            self.notify(f"{'Unstarred' if conversation.starred else 'Starred'} '{conversation.title}'.")
        self.refresh_sidebar()

    def action_search(self) -> None:
        self.sidebar.remove_class("-hidden")
        self.sidebar.search_input.focus()

    def action_toggle_sidebar(self) -> None:
        self.sidebar.toggle_class("-hidden")

    def action_focus_prompt(self) -> None:
        self.prompt.focus()

    def action_settings(self) -> None:
        chat = self.services.chat
        if self.conversation_id is not None:
            conversation = self.services.store.get_conversation(self.conversation_id)
            params = chat.params_for(conversation)
            system_prompt = conversation.system_prompt
        else:
            defaults = self.services.config.generation
            params = chat.params_for_defaults()
            system_prompt = defaults.system_prompt
        current = ConversationSettings(system_prompt, params.temperature, params.top_p, params.max_tokens)

        def save(settings: ConversationSettings | None) -> None:
            if settings is None:
                return
            with self.reporting_store_errors("save the settings"):
                if self.conversation_id is None:
                    self.conversation_id = chat.new_conversation().id
                conversation = self.services.store.get_conversation(self.conversation_id)
                params = {**conversation.params, "temperature": settings.temperature, "top_p": settings.top_p,
                          "max_tokens": settings.max_tokens}
                self.services.store.update_conversation(self.conversation_id, system_prompt=settings.system_prompt,
                                                        params=params)
                self.notify("Settings saved; they apply from the next reply.")
            self.refresh_sidebar()
            self.update_context_use()

        self.push_screen(SettingsScreen(current), save)

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.binding_rows(), str(self.services.config_file)))

    def binding_rows(self) -> list[tuple[str, str, str]]:
        """Return (keys, description, binding id) for every binding that has an id."""
        keymap = self._keymap
        rows = []
        for binding in [*self.BINDINGS, *PromptInput.BINDINGS, *FinetuneScreen.BINDINGS]:
            if binding.id:
                rows.append((keymap.get(binding.id, binding.key), binding.description, binding.id))
        return rows

    # Sending and streaming

    async def on_prompt_input_submitted(self, event: PromptInput.Submitted) -> None:
        text = event.text
        if self._generating:
            event.prompt.put_back(text)
            self.notify("A reply is still streaming. Press Esc to stop it, then send.", severity="warning")
            return
        if self.conversation_id is None:
            try:
                self.conversation_id = self.services.chat.new_conversation().id
            except sqlite3.Error as error:
                log.error("could not create a conversation: %s", error)
                event.prompt.put_back(text)
                self.notify(f"The message could not be saved: {error}. {storage_advice(self.services.store)}, "
                            "then send it again.", title="Not saved", severity="error", timeout=15)
                return
            self._created_for_reply = True
        else:
            self._created_for_reply = False
        self._generating = True
        self._stop_requested = False
        self.set_busy(True)
        self._user = await self.chat_view.add_user(text)
        choice = self.services.runtime.choice
        details = ReplyDetails(
            model=choice.model if choice else None,
            backend=choice.backend if choice else None,
            adapter=choice.adapter if choice else None,
            status="streaming",
        )
        self._assistant = await self.chat_view.add_assistant(details)
        self._assistant.start_stream()
        self.generate_reply(self.conversation_id, text)

    @work(thread=True, exclusive=True, group="reply")
    def generate_reply(self, conversation_id: int, text: str) -> None:
        reply = None
        try:
            self._model_ready.wait()
            if self.services.runtime.backend is None:
                reason = f": {self._load_error}" if self._load_error else ""
                raise ChattyError(f"No model is loaded{reason}. Choose one with {self._keymap.get('switch_model', KEYS.switch_model)}.")
            reply = self.services.chat.reply(conversation_id, text)
            self.reply = reply
            if self._stop_requested:
                reply.cancel()
            self.post_message(ReplyStarted(reply))
            # Pieces are batched to at most one message per FLUSH_SECONDS: the screen cannot show
            # more, and fewer messages leave more CPU time to generation.
            pending: list[str] = []
            last_flush = 0.0
            for piece in reply:
                pending.append(piece)
                if time.monotonic() - last_flush >= FLUSH_SECONDS:
                    self.post_message(ReplyPiece("".join(pending)))
                    pending.clear()
                    last_flush = time.monotonic()
            if pending:
                self.post_message(ReplyPiece("".join(pending)))
        except Exception as error:  # every failure reaches the user as a notification
            if not isinstance(error, ChattyError):
                log.exception("reply failed in conversation %d", conversation_id)
            self.post_message(ReplyFailed(error, text, reply))
            return
        self.post_message(ReplyEnded(reply))

    def on_reply_started(self, event: ReplyStarted) -> None:
        dropped = event.reply.plan.dropped_turns
        if dropped:
            turns = "turn" if dropped == 1 else "turns"
            self.notify(f"The conversation is longer than the context window: the oldest {dropped} {turns} were left out "
                        "of this prompt.", severity="warning")
        self.status.context_used = len(event.reply.plan.prompt_ids)
        if self._assistant is not None:
            self._assistant.message_id = event.reply.message.id
        if self._user is not None:
            self._user.message_id = event.reply.user_message.id
        self.refresh_sidebar()

    async def on_reply_piece(self, event: ReplyPiece) -> None:
        if self._assistant is not None:
            await self._assistant.write(event.text)

    async def on_reply_ended(self, event: ReplyEnded) -> None:
        reply = event.reply
        stats = reply.stats
        assistant = self._assistant
        if assistant is not None:
            await assistant.finish(reply.text)
            details = assistant.details
            details.status = reply.status
            details.tokens_per_second = stats.tokens_per_second if stats else None
            details.completion_tokens = stats.completion_tokens if stats else None
            assistant.update_details(details)
        if stats:
            self.status.tokens_per_second = stats.tokens_per_second
        if reply.save_error:
            self.notify(f"The reply could not be saved: {reply.save_error}.", title="Not saved", severity="error", timeout=20)
        self._end_reply()
        self.update_context_use()
        self.refresh_sidebar()

    async def on_reply_failed(self, event: ReplyFailed) -> None:
        assistant, user = self._assistant, self._user
        partial = event.reply is not None and bool(event.reply.text)
        if partial and assistant is not None:
            await assistant.finish(event.reply.text)
            details = assistant.details
            details.status = "error"
            details.error = str(event.error)
            assistant.update_details(details)
        else:
            # Nothing was generated: the turn is gone from the store, and the prompt goes back in the box.
            if assistant is not None:
                await assistant.finish()  # ends the Markdown stream's task before the widget goes
            for widget in (assistant, user):
                if widget is not None:
                    await widget.remove()
            self.prompt.put_back(event.prompt)
            if self._created_for_reply and not self.services.store.messages(self.conversation_id):
                with self.reporting_store_errors("remove the empty conversation"):
                    self.services.store.delete_conversation(self.conversation_id)
                self.conversation_id = None
                await self.chat_view.show_messages([])
        self.notify(str(event.error), title="Reply failed", severity="error", timeout=15)
        self._end_reply()
        self.refresh_sidebar()

    def _end_reply(self) -> None:
        self._generating = False
        self.reply = None
        self._assistant = None
        self._user = None
        self.set_busy(False)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "stop":
            # Without a reply to stop, Esc goes on to the focused widget or dialog.
            return self._generating
        if action in CHAT_ACTIONS:
            return len(self.screen_stack) == 1
        return True

    def action_stop(self) -> None:
        self._stop_requested = True
        if self.reply is not None:
            self.reply.cancel()

    async def action_quit(self) -> None:
        training = [screen for screen in self.screen_stack if isinstance(screen, FinetuneScreen) and screen.process]
        if not training:
            self.action_stop()
            self.exit()
            return

        def quit_after_confirm(confirmed: bool | None) -> None:
            if confirmed:
                for screen in training:
                    screen.cancel_training()
                self.action_stop()
                self.exit()

        question = "Training is running. Stop it and quit? The adapter will not be saved."
        self.push_screen(ConfirmScreen(question, "Stop training and quit", "Keep training"), quit_after_confirm)

    # Copying

    def action_copy_reply(self) -> None:
        reply = self.chat_view.selected_or_last_reply()
        if reply is None or not reply.text:
            self.notify("There is no reply to copy yet.", severity="warning")
            return
        self.copy(reply.text, "the reply")

    def action_copy_code(self) -> None:
        reply = self.chat_view.selected_or_last_reply()
        blocks = code_blocks(reply.text) if reply is not None else []
        if not blocks:
            self.notify("The reply has no code block to copy.", severity="warning")
            return
        if len(blocks) == 1:
            self.copy(blocks[0][1], "the code block")
            return

        def copy_chosen(index: int | None) -> None:
            if index is not None:
                self.copy(blocks[index][1], f"code block {index + 1}")

        self.push_screen(CodePickerScreen(blocks), copy_chosen)

    def copy(self, text: str, what: str) -> None:
        result = copy_text(text)
        if result.copied:
            self.notify(f"Copied {what} ({len(text)} characters) with {result.method}.")
            return
        # An OSC 52 request may still reach the clipboard, but the terminal never confirms it.
        self.copy_to_clipboard(text)
        self.notify(
            f"Could not copy {what}: {result.error}. chatty also asked the terminal to copy it (OSC 52), "
            "which works only in terminals that support it.",
            title="Not copied",
            severity="error",
            timeout=10,
        )

    # Looking inside the model

    def _backend_for_inspection(self):
        """Return the loaded backend when nothing else uses it; otherwise notify the user why not and return None."""
        if self._generating:
            self.notify("A reply is still streaming. Press Esc to stop it first.", severity="warning")
            return None
        loading = any(worker.group == "load" and worker.is_running for worker in self.workers)
        backend = self.services.runtime.backend
        if loading or backend is None:
            self.notify("The model is still loading. Try again once the status line names it.", severity="warning")
            return None
        return backend

    def action_show_prompt(self) -> None:
        """Open the prompt and token view for the focused message, else for the text in the prompt box."""
        backend = self._backend_for_inspection()
        if backend is None:
            return
        chat = self.services.chat
        focused = self.screen.focused
        if isinstance(focused, MessageView) and focused.message_id is not None and self.conversation_id is not None:
            if isinstance(focused, AssistantMessage):
                title = "The conversation up to this reply, as the next prompt will contain it"
            else:
                title = "The prompt that the reply to this message reads"
            compute = partial(inspect_message, chat, backend, self.conversation_id, focused.message_id)
        else:
            draft = self.prompt.text
            title = "The prompt that sending the prompt box would produce" if draft.strip() else "The conversation so far"
            compute = partial(inspect_draft, chat, backend, self.conversation_id, draft)
        self.push_screen(PromptTokensScreen(title, compute))

    def action_show_odds(self) -> None:
        """Open the next-token view for the focused reply, else for the last one."""
        reply = self.chat_view.selected_or_last_reply()
        if reply is None or reply.message_id is None or self.conversation_id is None or not reply.text:
            self.notify("There is no reply to inspect yet.", severity="warning")
            return
        backend = self._backend_for_inspection()
        if backend is None:
            return
        details = reply.details
        written_by = None
        if details.model and details.backend:
            written_by = f"{details.model} on {details.backend}" + (f" with adapter {details.adapter}" if details.adapter else "")
        compute = partial(inspect_reply, self.services.chat, backend, self.conversation_id, reply.message_id)
        self.push_screen(NextTokenScreen("Next-token odds: what the model almost said", compute, written_by))

    def action_model_card(self) -> None:
        self.push_screen(ModelCardScreen(self.services.runtime))

    # Command palette

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        for command in super().get_system_commands(screen):
            # Textual's "Keys" panel shows the focused widget's keys; "Key bindings" below lists all.
            if command.title != "Keys":
                yield command
        yield SystemCommand("New conversation", "Start a new conversation", self.action_new_conversation)
        yield SystemCommand("Rename conversation", "Rename the selected conversation", self.action_rename_conversation)
        yield SystemCommand("Delete conversation", "Delete the selected conversation", self.action_delete_conversation)
        yield SystemCommand("Search messages", "Search all conversations", self.action_search)
        yield SystemCommand("Conversation settings", "System prompt, temperature, top p, max tokens",
                            self.action_settings)
        yield SystemCommand("Switch model", "Choose the model, backend and adapter", self.action_switch_model)
        yield SystemCommand("Fine-tune", "Train a LoRA adapter on saved conversations", self.action_finetune)
        yield SystemCommand("Star conversation", "Star or unstar the selected conversation", self.action_star_conversation)
        yield SystemCommand("Copy reply", "Copy the selected reply, or the last one", self.action_copy_reply)
        yield SystemCommand("Copy code block", "Copy a code block from the selected reply", self.action_copy_code)
        yield SystemCommand("Stop reply", "Stop the reply that is streaming", self.action_stop)
        yield SystemCommand("Toggle sidebar", "Show or hide the conversation list", self.action_toggle_sidebar)
        yield SystemCommand("Show prompt and tokens", "The selected message, or the prompt box, as the model reads it",
                            self.action_show_prompt)
        yield SystemCommand("Show next-token odds", "What the model almost said at each token of the selected reply",
                            self.action_show_odds)
        yield SystemCommand("Show model card", "Architecture, size and quantization of models; LoRA settings of adapters",
                            self.action_model_card)
        yield SystemCommand("Key bindings", "List every key binding and its id", self.action_help)
