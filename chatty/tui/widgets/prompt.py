"""The prompt box: several lines of text, Enter sends, a second key inserts a newline."""

from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding
from textual.message import Message
from textual.widgets import TextArea


class PromptInput(TextArea):
    """A multi-line input whose Enter key sends the text instead of breaking the line."""

    BINDINGS = [
        # Priority bindings run before TextArea's own key handler, which would insert a newline.
        Binding("enter", "send", "Send", id="send", priority=True),
        Binding("ctrl+j,shift+enter", "newline", "Newline", id="newline", priority=True, show=False),
    ]

    @dataclass
    class Submitted(Message):
        """The user sent the prompt."""

        prompt: PromptInput
        text: str

    def __init__(self, **kwargs):
        super().__init__(soft_wrap=True, tab_behavior="focus", show_line_numbers=False, **kwargs)

    def action_send(self) -> None:
        if self.text.strip():
            self.post_message(self.Submitted(self, self.text))

    def action_newline(self) -> None:
        self.insert("\n")

    def put_back(self, text: str) -> None:
        """Restore a prompt that could not be sent, keeping anything typed since."""
        current = self.text
        self.text = text if not current.strip() else f"{text}\n{current}"
        self.move_cursor(self.document.end)
        self.focus()
