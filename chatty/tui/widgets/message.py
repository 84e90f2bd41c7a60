"""One chat message: a header naming who or what wrote it, and the text.

Assistant replies render as Markdown and stream through Textual's MarkdownStream, which appends
new blocks instead of re-parsing the whole reply for every token; the reply is rendered once in
full when it ends.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Markdown, Static
from textual.widgets.markdown import MarkdownStream

from chatty.text import show_controls

# A message longer than this shows only its start, because laying out a 1 MB message held the event
# loop for seconds (Textual 8.2 on 2 CPU cores). The whole text stays in the store and in
# MessageView.text, where copying reads it.
DISPLAY_MAX_CHARACTERS = 20_000


def displayed(text: str) -> str:
    """Return the part of a message that is shown, with control characters made visible."""
    if len(text) <= DISPLAY_MAX_CHARACTERS:
        return show_controls(text)
    hidden = len(text) - DISPLAY_MAX_CHARACTERS
    return show_controls(text[:DISPLAY_MAX_CHARACTERS]) + f"\n\n… {hidden:,} more characters are not shown."


@dataclass
class ReplyDetails:
    """What produced a reply and how it ended, shown in its header."""

    model: str | None = None
    backend: str | None = None
    adapter: str | None = None
    status: str = "complete"
    tokens_per_second: float | None = None
    completion_tokens: int | None = None
    error: str | None = None

    def describe(self) -> str:
        parts = ["assistant"]
        if self.model:
            parts.append(self.model)
        if self.backend:
            parts.append(self.backend)
        if self.adapter:
            parts.append(f"adapter {self.adapter}")
        if self.tokens_per_second:
            parts.append(f"{self.tokens_per_second:.1f} tok/s")
        if self.status == "streaming":
            parts.append("generating…")
        elif self.status == "error":
            parts.append(f"error: {self.error}" if self.error else "error")
        elif self.status != "complete":
            parts.append(self.status)
        return " · ".join(parts)


class MessageView(Vertical, can_focus=True):
    """A message in the chat; focus it to copy it."""

    DEFAULT_CSS = """
    MessageView {
        height: auto;
        margin: 0 1 1 1;
        padding: 0 1;
        border-left: wide $panel;
    }
    MessageView:focus {
        border-left: wide $accent;
        background: $boost;
    }
    MessageView > .header {
        color: $text-muted;
        text-style: bold;
    }
    """

    def __init__(self, text: str, message_id: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.text = text
        self.message_id = message_id

    def header_text(self) -> str:
        raise NotImplementedError


class UserMessage(MessageView):
    DEFAULT_CSS = """
    UserMessage {
        border-left: wide $primary;
    }
    """

    def header_text(self) -> str:
        return "you"

    def compose(self) -> ComposeResult:
        yield Static(Text(show_controls(self.header_text())), classes="header")
        # Text, not markup or Markdown: what the user typed is shown exactly.
        yield Static(Text(displayed(self.text)), classes="body")


class AssistantMessage(MessageView):
    DEFAULT_CSS = """
    AssistantMessage {
        border-left: wide $success;
    }
    AssistantMessage.-error {
        border-left: wide $error;
    }
    AssistantMessage > Markdown {
        margin: 0;
        padding: 0;
    }
    """

    def __init__(self, text: str, details: ReplyDetails, message_id: int | None = None, **kwargs):
        super().__init__(text, message_id, **kwargs)
        self.details = details
        self._stream: MarkdownStream | None = None

    def header_text(self) -> str:
        return self.details.describe()

    def compose(self) -> ComposeResult:
        yield Static(Text(show_controls(self.header_text())), classes="header")
        yield Markdown(displayed(self.text))

    @property
    def markdown(self) -> Markdown:
        return self.query_one(Markdown)

    def update_details(self, details: ReplyDetails) -> None:
        self.details = details
        self.query_one(".header", Static).update(Text(show_controls(self.header_text())))
        self.set_class(details.status == "error", "-error")

    def start_stream(self) -> None:
        self._stream = Markdown.get_stream(self.markdown)

    async def write(self, piece: str) -> None:
        self.text += piece
        if self._stream is not None:
            await self._stream.write(show_controls(piece))

    async def finish(self, text: str | None = None) -> None:
        """End streaming and render the whole reply once, which fixes any block split mid-stream."""
        if text is not None:
            self.text = text
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None
        await self.markdown.update(displayed(self.text))
