"""The next-token view: a reply's tokens, each with the candidates the model ranked at its position."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Static

from chatty.backends.candidates import HIGH_ENTROPY_BITS
from chatty.inspect import ReplyInspection
from chatty.tui.screens.backend_task import BackendTaskScreen
from chatty.tui.widgets.candidates_panel import CandidatesPanel
from chatty.tui.widgets.token_strip import TokenCell, TokenStrip


class NextTokenScreen(BackendTaskScreen):
    """Shows a ReplyInspection: the reply as a token grid, low-confidence tokens highlighted, and a panel
    with the top candidates for the token under the cursor."""

    DEFAULT_CSS = BackendTaskScreen.css_for("NextTokenScreen") + """
    NextTokenScreen #columns {
        height: 1fr;
    }
    NextTokenScreen #token-scroll {
        width: 1fr;
        border: round $panel;
    }
    """

    def __init__(self, title: str, compute, written_by: str | None = None):
        super().__init__(title, compute)
        self.written_by = written_by

    def compose_result(self) -> ComposeResult:
        with Horizontal(id="columns"):
            with VerticalScroll(id="token-scroll"):
                yield TokenStrip([])
            yield CandidatesPanel()

    @property
    def strip(self) -> TokenStrip:
        return self.query_one(TokenStrip)

    @property
    def panel(self) -> CandidatesPanel:
        return self.query_one(CandidatesPanel)

    def show_result(self, inspection: ReplyInspection) -> None:
        # describe where the odds come from and what the highlight means
        candidates = inspection.candidates
        uncertain = sum(1 for token in candidates if token.uncertain)
        source = f"{inspection.model} on {inspection.backend}"
        if inspection.adapter:
            source += f" with adapter {inspection.adapter}"
        summary = (
            f"{len(candidates)} tokens. The odds are recomputed by {source} from the prompt and the reply, "
            f"at temperature 1. {uncertain} tokens with entropy above {HIGH_ENTROPY_BITS:g} bits are highlighted; "
            "the line under each token is its probability."
        )
        if self.written_by and self.written_by != source:
            summary += f" The reply itself came from {self.written_by}."
        if inspection.dropped_turns:
            summary += f" The oldest {inspection.dropped_turns} turns of the conversation are left out, as the reply left them out."
        self.query_one("#summary", Static).update(summary)

        # fill the grid; moving its cursor fills the panel
        cells = [
            TokenCell(token.piece, f"{token.probability:.0%}", "uncertain" if token.uncertain else "text")
            for token in candidates
        ]
        self.strip.set_cells(cells)
        self.strip.focus()

    def on_token_strip_moved(self, event: TokenStrip.Moved) -> None:
        inspection: ReplyInspection | None = self.result
        if inspection is None or not inspection.candidates:
            return
        self.panel.token = inspection.candidates[event.index]
