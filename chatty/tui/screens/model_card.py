"""The model card view: architecture, size and quantization of every model, and the LoRA settings of every adapter."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, LoadingIndicator, OptionList, Static
from textual.widgets.option_list import Option

from chatty.errors import ChattyError
from chatty.models.adapters import AdapterInfo
from chatty.models.card import AdapterCard, ModelCard, adapter_card, model_card
from chatty.models.catalog import ModelInfo
from chatty.runtime import Runtime
from chatty.text import show_controls
from chatty.tui.screens.dialogs import DIALOG_CSS
from chatty.tui.threads import call_soon

MODEL_PREFIX = "model:"
ADAPTER_PREFIX = "adapter:"


class ModelCardScreen(ModalScreen[None]):
    """Lists the models and adapters chatty finds; the card of the highlighted one is shown beside the list."""

    DEFAULT_CSS = DIALOG_CSS.replace("{name}", "ModelCardScreen") + """
    ModelCardScreen > Vertical {
        width: 95%;
        height: 90%;
    }
    ModelCardScreen .title {
        text-style: bold;
    }
    ModelCardScreen #columns {
        height: 1fr;
    }
    ModelCardScreen OptionList {
        width: 36;
        height: 100%;
    }
    ModelCardScreen #card-scroll {
        width: 1fr;
        padding: 0 1;
    }
    ModelCardScreen LoadingIndicator {
        height: 1;
    }
    ModelCardScreen .hint {
        color: $text-muted;
    }
    """
    BINDINGS = [Binding("escape", "close", "Close", show=False)]

    def __init__(self, runtime: Runtime):
        super().__init__()
        self.runtime = runtime
        self.models: dict[str, ModelInfo] = {}
        self.adapters: dict[str, AdapterInfo] = {}
        # The card on show, or None before the first one arrives.
        self.card: ModelCard | AdapterCard | None = None

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Model and adapter cards", classes="title")
            with Horizontal(id="columns"):
                yield OptionList(id="cards")
                with VerticalScroll(id="card-scroll"):
                    yield Static(id="card")
            yield LoadingIndicator()
            yield Label("● marks what the chat runs now. Every value comes from file headers. Esc closes.", classes="hint")

    def on_mount(self) -> None:
        self.scan()

    @work(thread=True, exclusive=True, group="scan")
    def scan(self) -> None:
        """List models and adapters off the event loop, because the scan reads file headers."""
        models = self.runtime.catalog.models()
        adapters = self.runtime.adapters.adapters() if self.runtime.adapters else []
        call_soon(self, self._show_entries, models, adapters)

    def _show_entries(self, models: list[ModelInfo], adapters: list[AdapterInfo]) -> None:
        loaded = self.runtime.model
        # A model opened by path is not in the catalog, but its card still belongs in the list.
        if loaded is not None and all(model.id != loaded.id for model in models):
            models = [loaded, *models]
        choice = self.runtime.choice
        self.models = {model.id: model for model in models}
        self.adapters = {adapter.name: adapter for adapter in adapters}

        options = self.query_one(OptionList)
        options.clear_options()
        options.add_option(Option(Text("Models", style="bold"), disabled=True))
        for model in models:
            mark = "● " if choice and choice.model == model.id else "  "
            label = show_controls(f"{mark}{model.id}")
            options.add_option(Option(Text(label, no_wrap=True, overflow="ellipsis"), id=MODEL_PREFIX + model.id))
        options.add_option(Option(Text("Adapters", style="bold"), disabled=True))
        if not adapters:
            options.add_option(Option(Text("  none yet", style="dim"), disabled=True))
        for adapter in adapters:
            mark = "● " if choice and choice.adapter == adapter.name else "  "
            label = show_controls(f"{mark}{adapter.name}")
            options.add_option(Option(Text(label, no_wrap=True, overflow="ellipsis"), id=ADAPTER_PREFIX + adapter.name))

        # highlight the loaded model, else the first one
        ids = [options.get_option_at_index(index).id for index in range(options.option_count)]
        model_ids = [option_id for option_id in ids if option_id and option_id.startswith(MODEL_PREFIX)]
        current = MODEL_PREFIX + choice.model if choice else None
        if current in ids:
            options.highlighted = ids.index(current)
        elif model_ids:
            options.highlighted = ids.index(model_ids[0])
        options.focus()

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        if event.option.id:
            self.query_one(LoadingIndicator).display = True
            self.read_card(event.option.id)

    @work(thread=True, exclusive=True, group="card")
    def read_card(self, option_id: str) -> None:
        try:
            if option_id.startswith(MODEL_PREFIX):
                card = model_card(self.models[option_id.removeprefix(MODEL_PREFIX)])
            else:
                card = adapter_card(self.adapters[option_id.removeprefix(ADAPTER_PREFIX)])
        except (ChattyError, OSError) as error:
            call_soon(self, self._show_error, str(error))
            return
        call_soon(self, self._show_card, card)

    def _show_card(self, card: ModelCard | AdapterCard) -> None:
        self.card = card
        self.query_one(LoadingIndicator).display = False
        table = Table(box=None, show_header=False, pad_edge=False, expand=True)
        table.add_column(style="bold", no_wrap=True)
        table.add_column(overflow="fold")
        for label, value in card.rows():
            # Text, not markup: a path or a model name may contain "[". Values come from file
            # headers, which may contain escape sequences.
            table.add_row(Text(label), Text(show_controls(value)))
        self.query_one("#card", Static).update(table)

    def _show_error(self, message: str) -> None:
        self.card = None
        self.query_one(LoadingIndicator).display = False
        self.query_one("#card", Static).update(Text(show_controls(message), style="bold red"))

    def action_close(self) -> None:
        self.dismiss(None)
