"""The prompt box: several lines of text, Enter sends, a second key inserts a newline."""

from __future__ import annotations

from dataclasses import dataclass

from textual import events
from textual.binding import Binding
from textual.message import Message
from textual.widgets import TextArea


class PromptInput(TextArea):
    """A multi-line input whose Enter key sends the text instead of breaking the line."""

    BINDINGS = [
        Binding("enter", "send", "Send", id="send"),
        Binding("ctrl+j,shift+enter", "newline", "Newline", id="newline", show=False),
    ]

    @dataclass
    class Submitted(Message):
        """The user sent the prompt."""

        prompt: PromptInput
        text: str

    def __init__(self, **kwargs):
        super().__init__(soft_wrap=True, tab_behavior="focus", show_line_numbers=False, **kwargs)

    async def _on_key(self, event: events.Key) -> None:
        # Send and newline run here, in the order the keys arrived. Through the binding system they
        # would run when the key has bubbled up to the app, after keys typed later in a fast burst
        # (a paste without bracketed paste, or typing over SSH) were already inserted. The
        # bindings still declare the keys, so the footer, the help screen and the keymap see them.
        action = self._key_actions().get(event.key)
        if action is not None:
            event.stop()
            event.prevent_default()
            await self.run_action(action)
            return
        await super()._on_key(event)

    def _key_actions(self) -> dict[str, str]:
        """Return key -> action for this widget's bindings, after the app's keymap."""
        keymap = self.app._keymap
        actions = {}
        for binding in self.BINDINGS:
            for key in keymap.get(binding.id, binding.key).split(","):
                actions[key.strip()] = binding.action
        return actions

    def action_send(self) -> None:
        """Post the text and clear the box at once, so keys typed next start a new prompt."""
        if self.text.strip():
            self.post_message(self.Submitted(self, self.text))
            self.clear()

    def action_newline(self) -> None:
        self.insert("\n")

    def put_back(self, text: str) -> None:
        """Restore a prompt that could not be sent, keeping anything typed since."""
        current = self.text
        self.text = text if not current.strip() else f"{text}\n{current}"
        self.move_cursor(self.document.end)
        self.focus()
