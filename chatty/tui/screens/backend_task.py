"""A dialog whose content the loaded backend computes on a worker thread: the base of the token views."""

from __future__ import annotations

import logging
from collections.abc import Callable

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, LoadingIndicator, Static

from chatty.errors import ChattyError
from chatty.tui.screens.dialogs import DIALOG_CSS
from chatty.tui.threads import call_soon

log = logging.getLogger(__name__)

TASK_CSS = """
{name} > Vertical {
    width: 95%;
    height: 90%;
}
{name} .title {
    text-style: bold;
}
{name} .summary {
    color: $text-muted;
    margin-bottom: 1;
}
{name} LoadingIndicator {
    height: 3;
}
{name} #result {
    height: 1fr;
    display: none;
}
{name} .error {
    color: $error;
}
{name} .hint {
    color: $text-muted;
    margin-top: 1;
}
"""


class BackendTaskScreen(ModalScreen[None]):
    """Runs `compute` with the backend on a worker thread, then shows the result with `show_result`.

    The dialog closes only after the worker has ended. While it is open the chat cannot start a
    reply or switch the model, and neither may happen while the worker still uses the backend.
    """

    BINDINGS = [Binding("escape", "close", "Close", show=False)]

    def __init__(self, title: str, compute: Callable[[], object]):
        super().__init__()
        self.title_text = title
        self.compute = compute
        self.result = None
        self.computing = True
        self._close_requested = False

    @classmethod
    def css_for(cls, name: str) -> str:
        return (DIALOG_CSS + TASK_CSS).replace("{name}", name)

    def compose(self) -> ComposeResult:
        with Vertical(id="body"):
            yield Label(self.title_text, classes="title", markup=False)
            yield Static("", classes="summary", id="summary")
            yield LoadingIndicator()
            with Vertical(id="result"):
                yield from self.compose_result()
            yield Label("Esc closes.", classes="hint", id="hint")

    def compose_result(self) -> ComposeResult:
        """Yield the widgets that show the result; their container stays hidden until the result arrives."""
        yield from ()

    def on_mount(self) -> None:
        self._run()

    @work(thread=True, exit_on_error=False)
    def _run(self) -> None:
        try:
            result = self.compute()
        except ChattyError as error:
            call_soon(self, self._finish, None, str(error))
            return
        except Exception as error:  # shown in the dialog; the chat goes on
            log.exception("%s failed", type(self).__name__)
            call_soon(self, self._finish, None, f"{error}. The log has the details.")
            return
        call_soon(self, self._finish, result, None)

    def _finish(self, result, error: str | None) -> None:
        self.computing = False
        self.result = result
        self.query_one(LoadingIndicator).display = False
        if self._close_requested:
            self.dismiss(None)
            return
        if error is not None:
            summary = self.query_one("#summary", Static)
            summary.update(error)
            summary.add_class("error")
            return
        self.query_one("#result").display = True
        self.show_result(result)

    def show_result(self, result) -> None:
        raise NotImplementedError

    def action_close(self) -> None:
        if self.computing:
            # The worker cannot be interrupted, so the dialog closes when it ends.
            self._close_requested = True
            self.query_one("#hint", Label).update("Closing when the model has finished…")
            return
        self.dismiss(None)
