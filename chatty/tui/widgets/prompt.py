"""The prompt box: several lines of text, Enter sends, a second key inserts a newline."""

from __future__ import annotations

from dataclasses import dataclass

from textual import events
from textual.binding import Binding
from textual.message import Message
from textual.widgets.text_area import Edit, EditResult

from chatty.tui.widgets.text_area import ControlSafeTextArea

# Above this many characters the prompt stops wrapping lines. Textual 8's TextArea wraps a whole line
# again on every edit, and one pasted line of 1 MB held the event loop for about 2 s per keystroke
# (Textual 8.2 on 2 CPU cores).
SOFT_WRAP_MAX_CHARACTERS = 20_000


class PromptInput(ControlSafeTextArea):
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

    def edit(self, edit: Edit) -> EditResult:
        # Wrapping stops before a large text arrives, since wrapping it once would already stall.
        if self.soft_wrap and len(self.text) + len(edit.text) > SOFT_WRAP_MAX_CHARACTERS:
            self.soft_wrap = False
        result = super().edit(edit)
        self._wrap_if_short()
        return result

    def load_text(self, text: str) -> None:
        if len(text) > SOFT_WRAP_MAX_CHARACTERS:
            self.soft_wrap = False
        super().load_text(text)
        self._wrap_if_short()

    def _wrap_if_short(self) -> None:
        """Turn wrapping back on once the text is short enough, so that a long text is never wrapped."""
        if not self.soft_wrap and len(self.text) <= SOFT_WRAP_MAX_CHARACTERS:
            self.soft_wrap = True

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
