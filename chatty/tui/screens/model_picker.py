"""The model picker: a model, a backend that can run it, and an adapter that fits it."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label, LoadingIndicator, OptionList
from textual.widgets.option_list import Option

from chatty.models.adapters import AdapterInfo
from chatty.models.catalog import ModelInfo
from chatty.runtime import Runtime, RuntimeChoice
from chatty.text import show_controls
from chatty.tui.screens.dialogs import DIALOG_CSS
from chatty.tui.threads import call_soon

NO_ADAPTER = "-"


@dataclass(frozen=True)
class Choice:
    model: str
    backend: str
    adapter: str | None


class ModelPickerScreen(ModalScreen[Choice | None]):
    """Lists models, their backends and the adapters that fit; dismisses with the choice, or None."""

    DEFAULT_CSS = DIALOG_CSS.replace("{name}", "ModelPickerScreen") + """
    ModelPickerScreen > Vertical {
        width: 110;
        height: 24;
    }
    ModelPickerScreen .columns {
        height: 1fr;
    }
    ModelPickerScreen .column {
        width: 1fr;
        height: 100%;
    }
    ModelPickerScreen #models {
        width: 2fr;
    }
    ModelPickerScreen OptionList {
        height: 1fr;
    }
    ModelPickerScreen LoadingIndicator {
        height: 1;
    }
    """
    BINDINGS = [Binding("escape", "cancel", "Cancel", show=False)]

    def __init__(self, runtime: Runtime):
        super().__init__()
        self.runtime = runtime
        self.current: RuntimeChoice | None = runtime.choice
        self.models: list[ModelInfo] = []
        self.adapters: list[AdapterInfo] = []

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Switch model, backend and adapter. The next reply uses them.")
            with Horizontal(classes="columns"):
                with Vertical(classes="column", id="models"):
                    yield Label("Model")
                    yield OptionList(id="model-list")
                with Vertical(classes="column"):
                    yield Label("Backend")
                    yield OptionList(id="backend-list")
                with Vertical(classes="column"):
                    yield Label("Adapter")
                    yield OptionList(id="adapter-list")
            yield LoadingIndicator(id="scanning")
            with Horizontal(classes="buttons"):
                yield Button("Cancel", id="cancel")
                yield Button("Switch", id="switch", variant="primary")

    def on_mount(self) -> None:
        self.scan()

    @work(thread=True, exclusive=True)
    def scan(self) -> None:
        """Find models and adapters off the event loop: it reads file headers and hashes weights."""
        self.runtime.catalog.rescan()
        models = self.runtime.catalog.models()
        adapters = self.runtime.adapters.adapters() if self.runtime.adapters else []
        call_soon(self, self._show_models, models, adapters)

    def _show_models(self, models: list[ModelInfo], adapters: list[AdapterInfo]) -> None:
        self.models, self.adapters = models, adapters
        self.query_one("#scanning").display = False
        model_list = self.query_one("#model-list", OptionList)
        model_list.clear_options()
        for model in models:
            label = f"{model.id}  ({model.size_bytes / 1e6:,.0f} MB, {model.source})"
            model_list.add_option(Option(Text(show_controls(label), no_wrap=True, overflow="ellipsis"), id=model.id))
        current = self.current.model if self.current else None
        index = next((i for i, model in enumerate(models) if model.id == current), 0)
        if models:
            model_list.highlighted = index
        model_list.focus()

    @property
    def selected_model(self) -> ModelInfo | None:
        index = self.query_one("#model-list", OptionList).highlighted
        return self.models[index] if index is not None and index < len(self.models) else None

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        if event.option_list.id == "model-list":
            self.fill_choices()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        # Enter in the model list moves on to the backend list, and so on; Enter in the last one switches.
        order = ["model-list", "backend-list", "adapter-list"]
        position = order.index(event.option_list.id)
        if position < len(order) - 1:
            self.query_one(f"#{order[position + 1]}", OptionList).focus()
        else:
            self.action_switch()

    @work(thread=True, exclusive=True, group="fits")
    def fill_choices(self) -> None:
        model = self.selected_model
        if model is None:
            return
        # fits() may hash the model file the first time, so it runs here, on a worker thread.
        fitting = [adapter for adapter in self.adapters if adapter.fits(model)]
        call_soon(self, self._show_choices, model, fitting)

    def _show_choices(self, model: ModelInfo, fitting: list[AdapterInfo]) -> None:
        backend_list = self.query_one("#backend-list", OptionList)
        backend_list.clear_options()
        for backend in model.backends:
            backend_list.add_option(Option(backend, id=backend))
        current_backend = self.current.backend if self.current else None
        backend_list.highlighted = model.backends.index(current_backend) if current_backend in model.backends else 0

        adapter_list = self.query_one("#adapter-list", OptionList)
        adapter_list.clear_options()
        adapter_list.add_option(Option("no adapter", id=NO_ADAPTER))
        for adapter in fitting:
            note = "" if adapter.gguf_path else "  (torch only)"
            label = show_controls(f"{adapter.name}{note}")
            adapter_list.add_option(Option(Text(label, no_wrap=True, overflow="ellipsis"), id=adapter.name))
        names = [NO_ADAPTER] + [adapter.name for adapter in fitting]
        current_adapter = self.current.adapter if self.current and self.current.model == model.id else None
        adapter_list.highlighted = names.index(current_adapter) if current_adapter in names else 0

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "switch":
            self.action_switch()
        else:
            self.dismiss(None)

    def action_switch(self) -> None:
        model = self.selected_model
        backend_list = self.query_one("#backend-list", OptionList)
        adapter_list = self.query_one("#adapter-list", OptionList)
        if model is None or backend_list.highlighted is None:
            self.notify("Choose a model and a backend first.", severity="warning")
            return
        backend = backend_list.get_option_at_index(backend_list.highlighted).id
        adapter_option = adapter_list.get_option_at_index(adapter_list.highlighted or 0).id
        adapter = None if adapter_option == NO_ADAPTER else adapter_option
        if adapter is not None and backend == "llama":
            info = next(a for a in self.adapters if a.name == adapter)
            if info.gguf_path is None:
                self.notify(f"Adapter '{adapter}' has no LoRA GGUF, so only the torch backend can use it.", severity="error")
                return
        self.dismiss(Choice(model.id, backend, adapter))

    def action_cancel(self) -> None:
        self.dismiss(None)
