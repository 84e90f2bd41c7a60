"""The token views and the model card in the real app, driven with Pilot on the embedded model."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from chatty.tui.screens.model_card import ModelCardScreen
from chatty.tui.screens.next_tokens import NextTokenScreen
from chatty.tui.screens.prompt_tokens import PromptTokensScreen
from chatty.tui.widgets.candidates_panel import CandidatesPanel
from chatty.tui.widgets.message import AssistantMessage, UserMessage
from chatty.tui.widgets.token_strip import TokenStrip

from tui_helpers import SIZE, make_app, send, wait_for_model, wait_until


async def test_token_views_follow_cursor():
    app = make_app(generation__max_tokens=30)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_model(pilot, app)
        await send(pilot, app, "Name three colors.")
        await wait_until(pilot, lambda: bool(app.query(AssistantMessage)) and not app._generating)

        # the next-token view of the reply: the panel follows the cursor
        await pilot.press("ctrl+g")
        await wait_until(pilot, lambda: isinstance(app.screen, NextTokenScreen) and not app.screen.computing)
        screen = app.screen
        candidates = screen.result.candidates
        strip = screen.query_one(TokenStrip)
        panel = screen.query_one(CandidatesPanel)
        assert len(candidates) > 2
        assert len(strip.cells) == len(candidates)
        assert "".join(token.piece for token in candidates) == app.query(AssistantMessage).last().text
        assert [cell.kind == "uncertain" for cell in strip.cells] == [token.uncertain for token in candidates]
        assert panel.token == candidates[0]
        await pilot.press("right", "right")
        assert strip.cursor == 2
        assert panel.token == candidates[2]
        assert len(panel.token.candidates) == 5
        await pilot.pause()
        # three header lines, a blank line, the table header and five candidates
        assert panel.size.height >= 10
        await pilot.press("escape")
        await wait_until(pilot, lambda: not isinstance(app.screen, NextTokenScreen))

        # the prompt view of the user message: special tokens highlighted in the text and in the tokens
        app.query(UserMessage).last().focus()
        await pilot.press("f3")
        await wait_until(pilot, lambda: isinstance(app.screen, PromptTokensScreen) and not app.screen.computing)
        screen = app.screen
        inspection = screen.result
        rendered: Text = screen.query_one("#rendered", Static).visual
        special_spans = {rendered.plain[span.start : span.end] for span in rendered.spans}
        strip = screen.query_one(TokenStrip)
        assert inspection.rendered.text.endswith("Name three colors.<|im_end|>\n<|im_start|>assistant\n")
        assert {"<|im_start|>", "<|im_end|>"} <= special_spans
        assert [cell.kind for cell in strip.cells][:1] == ["special"]
        assert [cell.label for cell in strip.cells] == [str(token.id) for token in inspection.tokens]
        assert f"of the {app.services.runtime.backend.context_length:,}-token context window" in str(
            screen.query_one("#summary", Static).visual)
        await pilot.press("end")
        detail = str(screen.query_one("#token-detail", Static).visual)
        assert detail.startswith(f"Token {inspection.token_count} of {inspection.token_count}")
        await pilot.press("escape")
        await wait_until(pilot, lambda: not isinstance(app.screen, PromptTokensScreen))

        # the prompt view of the text in the prompt box, after the conversation so far
        app.prompt.text = "And three animals?"
        app.prompt.focus()
        await pilot.press("f3")
        await wait_until(pilot, lambda: isinstance(app.screen, PromptTokensScreen) and not app.screen.computing)
        prompt_text = app.screen.result.rendered.text
        assert "Name three colors.<|im_end|>" in prompt_text
        assert prompt_text.endswith("And three animals?<|im_end|>\n<|im_start|>assistant\n")
        await pilot.press("escape")
        await wait_until(pilot, lambda: not isinstance(app.screen, PromptTokensScreen))

        # the model card of the loaded model
        await pilot.press("f10")
        await wait_until(pilot, lambda: isinstance(app.screen, ModelCardScreen) and app.screen.card is not None)
        assert app.screen.card.quantization == "Q4_1"
        assert app.screen.card.layers == 30
    app.services.close()


async def test_inspection_commands_in_palette():
    app = make_app()
    async with app.run_test(size=SIZE):
        titles = {command.title for command in app.get_system_commands(app.screen)}
    assert {"Show prompt and tokens", "Show next-token odds", "Show model card"} <= titles
    app.services.close()
