"""The prompt and token view: the text the model reads after the chat template, and its tokens."""

from __future__ import annotations

import re

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Label, Static

from chatty.inspect import PromptInspection
from chatty.text import show_controls
from chatty.tui.screens.backend_task import BackendTaskScreen
from chatty.tui.widgets.token_strip import TokenCell, TokenStrip, visible_piece


class PromptTokensScreen(BackendTaskScreen):
    """Shows a PromptInspection: the rendered prompt with special tokens highlighted, then every token."""

    COMPONENT_CLASSES = {"prompt-tokens--special", "prompt-tokens--template"}
    DEFAULT_CSS = BackendTaskScreen.css_for("PromptTokensScreen") + """
    PromptTokensScreen > .prompt-tokens--special {
        color: $warning;
        text-style: bold;
    }
    PromptTokensScreen > .prompt-tokens--template {
        color: $text-muted;
        text-style: italic;
    }
    PromptTokensScreen #prompt-text {
        height: 1fr;
        border: round $panel;
    }
    PromptTokensScreen #token-scroll {
        height: 2fr;
        border: round $panel;
    }
    PromptTokensScreen .section {
        text-style: bold;
        margin-top: 1;
    }
    PromptTokensScreen #token-detail {
        height: 1;
    }
    """

    def compose_result(self) -> ComposeResult:
        yield Label("Prompt text", classes="section")
        with VerticalScroll(id="prompt-text"):
            yield Static(id="rendered")
        yield Label("Tokens (piece above id)", classes="section")
        with VerticalScroll(id="token-scroll"):
            yield TokenStrip([])
        yield Static("", id="token-detail")

    @property
    def strip(self) -> TokenStrip:
        return self.query_one(TokenStrip)

    def show_result(self, inspection: PromptInspection) -> None:
        # summarize the size and the share of the context window
        summary = (
            f"{inspection.token_count:,} tokens, {inspection.context_fraction:.1%} of the "
            f"{inspection.context_length:,}-token context window."
        )
        if inspection.dropped_turns:
            turns = "turn is" if inspection.dropped_turns == 1 else "turns are"
            summary += f" The oldest {inspection.dropped_turns} {turns} left out to leave room for the reply."
        summary += " Special tokens are highlighted and template text is in italics; message text is plain."
        self.query_one("#summary", Static).update(summary)

        # show the rendered prompt, then its tokens
        self.query_one("#rendered", Static).update(self.highlighted_prompt(inspection))
        cells = [TokenCell(token.piece, str(token.id), "special" if token.special else "text") for token in inspection.tokens]
        self.strip.set_cells(cells)
        self.strip.focus()

    def highlighted_prompt(self, inspection: PromptInspection) -> Text:
        """Style the rendered prompt: special-token strings in template text, template text, message text."""
        special_style = self.get_component_rich_style("prompt-tokens--special", partial=True)
        template_style = self.get_component_rich_style("prompt-tokens--template", partial=True)
        specials = sorted(inspection.special_texts(), key=len, reverse=True)
        pattern = re.compile("|".join(re.escape(text) for text in specials)) if specials else None

        text = Text()
        tokens = inspection.tokens
        # tokenize_prompt adds a BOS token that the template did not write, for models that want one.
        if tokens and tokens[0].special and not inspection.rendered.text.startswith(tokens[0].piece):
            text.append(tokens[0].piece, special_style)
        for segment in inspection.rendered.segments:
            if segment.kind == "content":
                # Message text never becomes a special token, even where it spells one.
                text.append(show_controls(segment.text))
                continue
            position = 0
            for match in pattern.finditer(segment.text) if pattern else ():
                text.append(show_controls(segment.text[position : match.start()]), template_style)
                text.append(match[0], special_style)
                position = match.end()
            text.append(show_controls(segment.text[position:]), template_style)
        return text

    def on_token_strip_moved(self, event: TokenStrip.Moved) -> None:
        inspection: PromptInspection | None = self.result
        if inspection is None or not inspection.tokens:
            return
        token = inspection.tokens[event.index]
        detail = Text()
        detail.append(f"Token {event.index + 1} of {inspection.token_count}: ", style="bold")
        detail.append(visible_piece(token.piece), style="reverse")
        detail.append(f" · id {token.id} · bytes {token.data.hex(' ') or 'none'}")
        if token.special:
            detail.append(" · special token")
        self.query_one("#token-detail", Static).update(detail)
