"""A text area that never sends the control characters in its text to the terminal."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import TextArea

from chatty.text import show_controls_in_place


class ControlSafeTextArea(TextArea):
    """A TextArea that shows control and bidi characters as visible pictures.

    Textual 8's TextArea writes its lines to the terminal as they are, so an escape sequence in a
    pasted or imported text would reach the terminal. Only the display changes: the text, the
    cursor and the selection keep the real characters.
    """

    def get_line(self, line_index: int) -> Text:
        line = super().get_line(line_index)
        line.plain = show_controls_in_place(line.plain)
        return line
