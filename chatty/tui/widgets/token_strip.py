"""A grid of token cells, each a piece over a label, with a cursor that the arrow keys move."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rich.cells import cell_len
from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.geometry import Region, Size
from textual.message import Message
from textual.reactive import reactive
from textual.widget import Widget

from chatty.text import show_controls

# Each row of cells takes a piece line, a label line and a blank line.
LINES_PER_ROW = 3
GAP = 1

CellKind = Literal["text", "special", "uncertain"]


@dataclass(frozen=True)
class TokenCell:
    """One token as the strip shows it."""

    piece: str
    label: str
    kind: CellKind = "text"

    @property
    def shown(self) -> str:
        return visible_piece(self.piece)

    @property
    def ends_line(self) -> bool:
        return "\n" in self.piece


def visible_piece(piece: str) -> str:
    """Return a piece with line breaks, tabs and control characters made visible, and ∅ for no text."""
    visible = piece.replace("\r\n", "↵").replace("\n", "↵").replace("\t", "→")
    return show_controls(visible) or "∅"


@dataclass(frozen=True)
class _Placed:
    index: int
    x: int
    width: int


class TokenStrip(Widget, can_focus=True):
    """Tokens in rows like the text they spell, with visible boundaries; a newline token ends a row."""

    COMPONENT_CLASSES = {
        "token-strip--even",
        "token-strip--odd",
        "token-strip--special",
        "token-strip--uncertain",
        "token-strip--cursor",
        "token-strip--label",
    }
    DEFAULT_CSS = """
    TokenStrip {
        height: auto;
        padding: 0 1;
    }
    TokenStrip > .token-strip--even {
        background: $primary 30%;
    }
    TokenStrip > .token-strip--odd {
        background: $secondary 30%;
    }
    TokenStrip > .token-strip--special {
        color: $warning;
        text-style: bold;
    }
    TokenStrip > .token-strip--uncertain {
        background: $error 60%;
    }
    TokenStrip > .token-strip--cursor {
        text-style: reverse bold;
    }
    TokenStrip > .token-strip--label {
        color: $text-muted;
    }
    """
    BINDINGS = [
        Binding("left", "move(-1)", "Previous token", show=False),
        Binding("right", "move(1)", "Next token", show=False),
        Binding("up", "move_row(-1)", "Row above", show=False),
        Binding("down", "move_row(1)", "Row below", show=False),
        Binding("home", "move_to(0)", "First token", show=False),
        Binding("end", "move_to(-1)", "Last token", show=False),
    ]

    cursor: reactive[int] = reactive(0)

    @dataclass
    class Moved(Message):
        """The cursor moved onto another token."""

        strip: TokenStrip
        index: int

    def __init__(self, cells: list[TokenCell], **kwargs):
        super().__init__(**kwargs)
        self.cells = cells
        self._layout_width = -1
        self._rows: list[list[_Placed]] = []

    def set_cells(self, cells: list[TokenCell]) -> None:
        """Show other tokens, with the cursor on the first."""
        self.cells = cells
        self._layout_width = -1
        self.refresh(layout=True)
        # The watcher runs only on a change, so the first token is announced here when the cursor stays at 0.
        if self.cursor == 0:
            self.post_message(self.Moved(self, 0))
        self.cursor = 0

    # Layout

    def rows(self, width: int) -> list[list[_Placed]]:
        """Place the cells in rows that fit `width` columns; cached per width."""
        if width != self._layout_width:
            self._rows = _place(self.cells, max(width, 1))
            self._layout_width = width
        return self._rows

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return max(1, len(self.rows(width)) * LINES_PER_ROW - 1)

    def _row_of(self, index: int) -> tuple[int, _Placed]:
        for row_number, row in enumerate(self.rows(self.content_size.width)):
            for placed in row:
                if placed.index == index:
                    return row_number, placed
        raise IndexError(index)

    # Rendering

    def render(self) -> Text:
        if not self.cells:
            return Text("No tokens.")
        styles = {name: self.get_component_rich_style(f"token-strip--{name}", partial=True)
                  for name in ("even", "odd", "special", "uncertain", "cursor", "label")}
        text = Text(no_wrap=True, overflow="crop")
        for row_number, row in enumerate(self.rows(self.content_size.width)):
            if row_number:
                text.append("\n\n")
            pieces, labels = Text(), Text()
            for placed in row:
                cell = self.cells[placed.index]
                style = styles["even" if placed.index % 2 == 0 else "odd"]
                if cell.kind != "text":
                    style += styles[cell.kind]
                if placed.index == self.cursor:
                    style += styles["cursor"]
                pieces.append(_fit(cell.shown, placed.width), style)
                pieces.append(" " * GAP)
                labels.append(_fit(cell.label, placed.width), styles["label"])
                labels.append(" " * GAP)
            text.append_text(pieces)
            text.append("\n")
            text.append_text(labels)
        return text

    # Cursor

    def validate_cursor(self, value: int) -> int:
        return max(0, min(value, len(self.cells) - 1))

    def watch_cursor(self, index: int) -> None:
        # tell the screen which token is under the cursor, then keep that token in view
        self.post_message(self.Moved(self, index))
        self.call_after_refresh(self._scroll_to_cursor)

    def _scroll_to_cursor(self) -> None:
        if not self.cells or self.parent is None:
            return
        row_number, _ = self._row_of(self.cursor)
        top = self.virtual_region.y + self.styles.padding.top + row_number * LINES_PER_ROW
        self.parent.scroll_to_region(Region(0, top, 1, 2), animate=False, immediate=True)

    def action_move(self, step: int) -> None:
        self.cursor += step

    def action_move_to(self, index: int) -> None:
        self.cursor = index if index >= 0 else len(self.cells) - 1

    def action_move_row(self, step: int) -> None:
        """Move to the token in the next or previous row whose columns are nearest to the cursor's."""
        if not self.cells:
            return
        rows = self.rows(self.content_size.width)
        row_number, current = self._row_of(self.cursor)
        target_row = row_number + step
        if not 0 <= target_row < len(rows):
            return
        middle = current.x + current.width / 2
        nearest = min(rows[target_row], key=lambda placed: abs(placed.x + placed.width / 2 - middle))
        self.cursor = nearest.index

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None:
            return
        rows = self.rows(self.content_size.width)
        row_number = offset.y // LINES_PER_ROW
        if row_number >= len(rows):
            return
        for placed in rows[row_number]:
            if placed.x <= offset.x < placed.x + placed.width:
                self.cursor = placed.index
                return


def _place(cells: list[TokenCell], width: int) -> list[list[_Placed]]:
    rows: list[list[_Placed]] = [[]]
    x = 0
    for index, cell in enumerate(cells):
        cell_width = min(max(cell_len(cell.shown), cell_len(cell.label), 1), width)
        if rows[-1] and x + cell_width > width:
            rows.append([])
            x = 0
        rows[-1].append(_Placed(index, x, cell_width))
        x += cell_width + GAP
        if cell.ends_line:
            rows.append([])
            x = 0
    if not rows[-1]:
        rows.pop()
    return rows


def _fit(text: str, width: int) -> str:
    """Pad text to `width` cells, or cut it with an ellipsis when it is wider."""
    if cell_len(text) <= width:
        return text + " " * (width - cell_len(text))
    cut = Text(text)
    cut.truncate(width, overflow="ellipsis")
    return cut.plain + " " * (width - cell_len(cut.plain))

