"""The help screen: every key binding with its id, for remapping in config.toml."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Label

from chatty.tui.screens.dialogs import DIALOG_CSS


class HelpScreen(ModalScreen[None]):
    """Lists key bindings as (keys, action, binding id) rows."""

    DEFAULT_CSS = DIALOG_CSS.replace("{name}", "HelpScreen") + """
    HelpScreen > Vertical {
        width: 100;
        max-height: 90%;
    }
    HelpScreen DataTable {
        height: auto;
        max-height: 30;
    }
    """
    BINDINGS = [Binding("escape,f1,q", "close", "Close", show=False)]

    def __init__(self, rows: list[tuple[str, str, str]], config_file: str):
        super().__init__()
        self.rows = rows
        self.config_file = config_file

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Key bindings", classes="title")
            table = DataTable(cursor_type="row", zebra_stripes=True)
            table.add_columns("Keys", "Action", "Binding id")
            for row in self.rows:
                table.add_row(*(Text(cell) for cell in row))
            yield table
            yield Label(
                f"Remap a key under [keys] in {self.config_file}, by binding id. "
                "Ctrl+P opens the command palette, which lists every action.",
                markup=False,
            )

    def action_close(self) -> None:
        self.dismiss(None)
