"""The side panel of the next-token view: the top candidates at the token under the cursor."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from chatty.backends.candidates import HIGH_ENTROPY_BITS, TokenCandidates
from chatty.tui.widgets.token_strip import visible_piece

BAR_WIDTH = 12


class CandidatesPanel(Widget):
    """Shows one position's distribution: the reply's token, its rank, the entropy and the top k."""

    DEFAULT_CSS = """
    CandidatesPanel {
        width: 46;
        height: auto;
        padding: 0 1;
        border-left: wide $panel;
    }
    """

    # layout=True: the panel grows or shrinks with the number of lines the new token needs.
    token: reactive[TokenCandidates | None] = reactive(None, layout=True)

    def render(self) -> Group | Text:
        token = self.token
        if token is None:
            return Text("Move the cursor onto a token to see what else the model considered.")

        verdict = "low confidence" if token.uncertain else "confident"
        header = Text()
        header.append(f"Token {token.position + 1}: ", style="bold")
        header.append(visible_piece(token.piece), style="bold reverse")
        header.append(f" · id {token.id}\n")
        header.append(f"probability {token.probability:.1%} · rank {token.rank}\n")
        header.append(f"entropy {token.entropy:.2f} bits ({verdict}; the threshold is {HIGH_ENTROPY_BITS:g})")

        table = Table(box=None, pad_edge=False, show_header=True, header_style="bold", expand=True)
        table.add_column("#", justify="right", width=2)
        table.add_column("token", ratio=1, overflow="ellipsis", no_wrap=True)
        table.add_column("id", justify="right")
        table.add_column("p", justify="right")
        table.add_column("", width=BAR_WIDTH, no_wrap=True)
        for rank, candidate in enumerate(token.candidates, start=1):
            # The reply's own token is bold, so a reply that took a lower-ranked token shows it.
            style = "bold" if candidate.id == token.id else ""
            bar = "█" * round(candidate.probability * BAR_WIDTH)
            table.add_row(str(rank), Text(visible_piece(candidate.piece)), str(candidate.id),
                          f"{candidate.probability:.1%}", bar, style=style)
        return Group(header, Text(), table)
