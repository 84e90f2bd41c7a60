"""Pick one of a reply's code blocks to copy."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList
from textual.widgets.option_list import Option

from chatty.text import show_controls
from chatty.tui.screens.dialogs import DIALOG_CSS


class CodePickerScreen(ModalScreen[int | None]):
    """Dismisses with the index of the chosen code block, or None."""

    DEFAULT_CSS = DIALOG_CSS.replace("{name}", "CodePickerScreen") + """
    CodePickerScreen > Vertical {
        width: 90;
    }
    CodePickerScreen OptionList {
        height: auto;
        max-height: 20;
    }
    """
    BINDINGS = [Binding("escape", "cancel", "Cancel", show=False)]

    def __init__(self, blocks: list[tuple[str, str]]):
        super().__init__()
        self.blocks = blocks

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Copy which code block?")
            options = []
            for index, (language, code) in enumerate(self.blocks):
                first_line = code.strip().splitlines()[0] if code.strip() else "(empty)"
                label = f"{index + 1}. [{language or 'text'}] {first_line}"
                options.append(Option(Text(show_controls(label), no_wrap=True, overflow="ellipsis"), id=str(index)))
            yield OptionList(*options)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(int(event.option.id))

    def action_cancel(self) -> None:
        self.dismiss(None)
