"""The scrolling list of messages in the open conversation."""

from __future__ import annotations

from textual.containers import VerticalScroll
from textual.widgets import Button, Static

from chatty.store import StoredMessage
from chatty.tui.widgets.message import AssistantMessage, MessageView, ReplyDetails, UserMessage

# Messages mounted when a conversation opens; older ones load in pages on request.
PAGE_SIZE = 40


def details_of(message: StoredMessage) -> ReplyDetails:
    return ReplyDetails(
        model=message.model,
        backend=message.backend,
        adapter=message.adapter,
        status=message.status,
        tokens_per_second=message.tokens_per_second,
        completion_tokens=message.completion_tokens,
        error=message.error,
    )


def message_widget(message: StoredMessage) -> MessageView:
    if message.role == "assistant":
        return AssistantMessage(message.content, details_of(message), message_id=message.id)
    return UserMessage(message.content, message_id=message.id)


class ChatView(VerticalScroll):
    """Messages, oldest at the top; follows new text while the user is at the bottom."""

    DEFAULT_CSS = """
    ChatView {
        height: 1fr;
    }
    ChatView > .empty {
        color: $text-muted;
        padding: 1 2;
    }
    ChatView > #older {
        width: 100%;
        margin: 0 1 1 1;
    }
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._hidden: list[StoredMessage] = []
        self._loading_older = False

    async def show_messages(self, messages: list[StoredMessage]) -> None:
        """Replace the view with a conversation's messages; only the newest page is mounted."""
        await self.remove_children()
        self._hidden = messages[:-PAGE_SIZE] if len(messages) > PAGE_SIZE else []
        shown = messages[len(self._hidden) :]
        if not shown:
            await self.mount(Static("Type a message below and press Enter. F1 lists the keys.", classes="empty"))
            return
        if self._hidden:
            await self.mount(Button(f"Show {min(PAGE_SIZE, len(self._hidden))} earlier messages", id="older"))
        await self.mount_all([message_widget(message) for message in shown])
        self.anchor()

    async def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "older":
            event.stop()
            await self.load_older()

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        # Reaching the top loads the previous page, as chat apps do.
        if new_value <= 0 < old_value and self._hidden and not self._loading_older:
            self._loading_older = True
            self.call_later(self.load_older)

    async def load_older(self) -> None:
        """Mount the previous page of messages above the first one shown, keeping that one in view."""
        try:
            if not self._hidden:
                return
            page = self._hidden[-PAGE_SIZE:]
            self._hidden = self._hidden[: -len(page)]
            first = self.query(MessageView).first()
            await self.mount_all([message_widget(message) for message in page], before=first)
            button = self.query_one("#older", Button)
            if self._hidden:
                button.label = f"Show {min(PAGE_SIZE, len(self._hidden))} earlier messages"
            else:
                await button.remove()
            # Once the new messages are laid out, scroll so the message that was first stays in view.
            self.call_after_refresh(lambda: self.scroll_to(y=first.virtual_region.y, animate=False, immediate=True))
        finally:
            self._loading_older = False

    async def add_user(self, text: str) -> UserMessage:
        await self.query(".empty").remove()
        widget = UserMessage(text)
        await self.mount(widget)
        return widget

    async def add_assistant(self, details: ReplyDetails) -> AssistantMessage:
        widget = AssistantMessage("", details)
        await self.mount(widget)
        self.anchor()
        return widget

    def selected_or_last_reply(self) -> AssistantMessage | None:
        """Return the focused reply, else the newest one."""
        focused = self.screen.focused
        if isinstance(focused, AssistantMessage):
            return focused
        replies = self.query(AssistantMessage)
        return replies.last() if replies else None
