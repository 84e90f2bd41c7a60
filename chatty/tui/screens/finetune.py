"""The fine-tune screen: choose data and settings, watch the adapter train, compare it, use it.

Training runs in a child process (chatty.finetune.process); a thread worker relays its events to
the screen, so the interface stays responsive and Cancel stops the run at once.
"""

from __future__ import annotations

import logging
import typing
from dataclasses import dataclass, fields
from datetime import datetime

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Button, Checkbox, Footer, Input, Label, ProgressBar, Select, Static

from chatty.backends import LoadOptions
from chatty.config import FinetuneConfig, KeysConfig
from chatty.errors import ChattyError
from chatty.finetune import selection as selections
from chatty.finetune.job import DatasetReady, Evaluation, Failed, Finished, Progress, TrainingJob
from chatty.finetune.options import apply_overrides
from chatty.finetune.writer import check_adapter_name
from chatty.models.adapters import read_adapter
from chatty.tui.screens.dialogs import ConfirmScreen
from chatty.tui.screens.model_picker import Choice
from chatty.tui.threads import call_soon
from chatty.tui.widgets.ab_panel import ABPanel
from chatty.tui.widgets.loss_plot import LossPlot

log = logging.getLogger(__name__)

KEYS = KeysConfig()
DATA_SOURCES = [("All conversations", "all"), ("Starred conversations", "starred"),
                ("Conversations matching a search", "search"), ("A messages JSONL file", "jsonl")]


@dataclass
class TrainingEvent(Message):
    event: object


def format_seconds(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"


class FinetuneScreen(Screen[Choice | None]):
    """Dismisses with the runtime choice that uses the new adapter, or None when closed."""

    DEFAULT_CSS = """
    FinetuneScreen #setup {
        width: 52;
        border-right: vkey $panel;
        padding: 0 1;
    }
    FinetuneScreen #form {
        height: 1fr;
    }
    FinetuneScreen #setup Label {
        margin-top: 1;
        color: $text-muted;
    }
    FinetuneScreen .option-row {
        height: 1;
        margin-bottom: 1;
    }
    FinetuneScreen #setup .option-row > Label {
        width: 24;
        margin-top: 0;
    }
    FinetuneScreen .option-row > Input {
        width: 1fr;
    }
    FinetuneScreen #buttons {
        height: auto;
        margin-top: 1;
    }
    FinetuneScreen #buttons Button {
        margin-right: 1;
    }
    FinetuneScreen #run {
        padding: 0 1;
    }
    FinetuneScreen #phase {
        text-style: bold;
    }
    FinetuneScreen LossPlot {
        height: 14;
    }
    FinetuneScreen #summary {
        margin: 1 0;
    }
    """
    BINDINGS = [
        Binding("escape", "close", "Close", id="close_finetune"),
        Binding(KEYS.use_adapter, "use_adapter", "Use in chat", id="use_adapter"),
    ]

    def __init__(self, services):
        super().__init__()
        self.services = services
        self.process = None
        self.result: Finished | None = None
        self.total_steps = 0
        self.epochs = services.config.finetune.epochs
        self.selection: selections.Selection | None = None

    # Layout

    def compose(self) -> ComposeResult:
        with Horizontal():
            with Vertical(id="setup"):
                with VerticalScroll(id="form"):
                    yield from self._compose_form()
                # Outside the scrolling form, so Start and Cancel stay in view.
                with Horizontal(id="buttons"):
                    yield Button("Start", id="start", variant="primary")
                    yield Button("Cancel training", id="cancel", variant="error", disabled=True)
            with Vertical(id="run"):
                yield Static("Choose the data and settings on the left, then press Start.", id="phase")
                yield ProgressBar(id="bar", show_eta=False)
                yield Static("", id="stats")
                yield LossPlot(id="plot")
                yield Static("", id="summary")
        yield Footer()

    def _compose_form(self) -> ComposeResult:
        defaults = self.services.config.finetune
        yield Label("Adapter name")
        yield Input(datetime.now().strftime("adapter-%Y%m%d-%H%M"), id="name")
        yield Label("Base model (runs on PyTorch for training)")
        yield Select([], id="base", prompt="scanning models…", allow_blank=True)
        yield Label("Training data")
        yield Select(DATA_SOURCES, id="source", value="starred", allow_blank=False)
        yield Input(placeholder="search words", id="search")
        yield Input(placeholder="path to a .jsonl file", id="jsonl")
        yield Static("", id="selection")
        yield Label("Hyperparameters")
        hints = typing.get_type_hints(FinetuneConfig)
        for option in fields(FinetuneConfig):
            value = getattr(defaults, option.name)
            if hints[option.name] is bool:
                yield Checkbox(option.name.replace("_", " "), value, id=f"opt-{option.name}", tooltip=option.metadata["help"])
                continue
            text = ", ".join(value) if isinstance(value, list) else str(value)
            with Horizontal(classes="option-row"):
                yield Label(option.name.replace("_", " "))
                yield Input(text, id=f"opt-{option.name}", tooltip=option.metadata["help"], compact=True)

    def on_mount(self) -> None:
        self.query_one("#jsonl").display = False
        self.query_one("#search").display = False
        self.scan_models()
        self.update_selection()

    @work(thread=True, exclusive=True, group="models")
    def scan_models(self) -> None:
        models = [model for model in self.services.runtime.catalog.models() if "torch" in model.backends]
        call_soon(self, self._show_models, models)

    def _show_models(self, models) -> None:
        select = self.query_one("#base", Select)
        select.set_options([(f"{model.id} ({model.size_bytes / 1e6:,.0f} MB)", model.id) for model in models])
        current = self.services.runtime.choice
        ids = [model.id for model in models]
        if current and current.model in ids:
            select.value = current.model
        elif ids:
            select.value = ids[0]

    # Choosing the data

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "source":
            self.query_one("#search").display = event.value == "search"
            self.query_one("#jsonl").display = event.value == "jsonl"
            self.update_selection()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id in ("search", "jsonl"):
            self.update_selection()

    def on_checkbox_changed(self, event: Checkbox.Changed) -> None:
        if event.checkbox.id == "opt-include_unfinished":
            self.update_selection()

    @work(thread=True, exclusive=True, group="selection")
    def update_selection(self) -> None:
        try:
            chosen = self._select()
            summary = chosen.describe()
        except ChattyError as error:
            chosen, summary = None, str(error)
        call_soon(self, self._show_selection, chosen, summary)

    def _select(self) -> selections.Selection:
        source = self.query_one("#source", Select).value
        store = self.services.store
        include_unfinished = self.query_one("#opt-include_unfinished", Checkbox).value
        if source == "jsonl":
            path = self.query_one("#jsonl", Input).value.strip()
            if not path:
                raise ChattyError("Enter the path of a JSONL file.")
            from pathlib import Path

            return selections.from_jsonl(Path(path).expanduser())
        if source == "search":
            query = self.query_one("#search", Input).value
            if not query.strip():
                raise ChattyError("Enter search words to pick conversations.")
            conversations = store.search_conversations(query, limit=100_000)
        else:
            conversations = store.list_conversations(starred=source == "starred")
        return selections.from_store(store, [c.id for c in reversed(conversations)], include_unfinished)

    def _show_selection(self, chosen: selections.Selection | None, summary: str) -> None:
        self.selection = chosen
        self.query_one("#selection", Static).update(Text(summary))

    # Training

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "start":
            self.start_training()
        elif event.button.id == "cancel":
            self.cancel_training()

    def read_options(self) -> FinetuneConfig:
        hints = typing.get_type_hints(FinetuneConfig)
        overrides = {}
        for option in fields(FinetuneConfig):
            widget = self.query_one(f"#opt-{option.name}")
            kind = hints[option.name]
            if kind is bool:
                overrides[option.name] = widget.value
                continue
            raw = widget.value.strip()
            if typing.get_origin(kind) is list:
                overrides[option.name] = [part.strip() for part in raw.split(",") if part.strip()]
                continue
            try:
                overrides[option.name] = kind(raw)
            except ValueError:
                expected = "a whole number" if kind is int else "a number"
                raise ChattyError(f"Invalid training option: '{option.name}' must be {expected}, not '{raw}'.") from None
        return apply_overrides(FinetuneConfig(), overrides, "fine-tune screen")

    def start_training(self) -> None:
        if self.process is not None:
            return
        try:
            job = self._build_job()
        except ChattyError as error:
            self.notify(str(error), title="Cannot start training", severity="error", timeout=10)
            return
        self.result = None
        self.epochs = job.options.epochs
        self.query_one(LossPlot).reset()
        self.query_one("#summary", Static).update("")
        for panel in self.query(ABPanel):
            panel.remove()
        self.query_one("#phase", Static).update(Text(f"Loading {job.base.id} and preparing {len(job.conversations)} conversations…"))
        self.query_one("#start", Button).disabled = True
        self.query_one("#cancel", Button).disabled = False
        self.run_training(job)

    def _build_job(self) -> TrainingJob:
        name = self.query_one("#name", Input).value.strip()
        paths = self.services.paths
        check_adapter_name(name, paths.adapters_dir)
        base_id = self.query_one("#base", Select).value
        if base_id is Select.BLANK:
            raise ChattyError("Choose a base model. Only models that PyTorch can load are listed.")
        options = self.read_options()
        if self.selection is None or not self.selection.conversations:
            raise ChattyError("The selection has no conversation to train on. Star some conversations or choose other data.")
        return TrainingJob(
            name=name,
            base=self.services.runtime.catalog.resolve(base_id),
            conversations=self.selection.conversations,
            sources=self.selection.sources,
            options=options,
            adapters_dir=paths.adapters_dir,
            cache_dir=paths.cache_dir,
            dtype=self.services.config.model.dtype,
            conversation_ids=self.selection.ids,
        )

    @work(thread=True, exclusive=True, group="training")
    def run_training(self, job: TrainingJob) -> None:
        from chatty.finetune.process import TrainingProcess

        try:
            self.process = TrainingProcess(job, self.services.paths.log_file, self.services.debug)
            for event in self.process:
                self.post_message(TrainingEvent(event))
        except Exception as error:  # the process could not start; shown like a training failure
            log.exception("training %s could not start", job.name)
            self.post_message(TrainingEvent(Failed(str(error))))
        finally:
            self.process = None
            call_soon(self, self._training_stopped)

    def _training_stopped(self) -> None:
        self.query_one("#start", Button).disabled = False
        self.query_one("#cancel", Button).disabled = True

    async def on_training_event(self, message: TrainingEvent) -> None:
        event = message.event
        phase = self.query_one("#phase", Static)
        if isinstance(event, DatasetReady):
            self.total_steps = event.total_steps
            self.query_one("#bar", ProgressBar).update(total=event.total_steps, progress=0)
            phase.update(
                f"Training on {event.train_examples} conversations ({event.trainable_tokens} reply tokens to learn per "
                f"epoch), validating on {event.validation_examples}. {event.truncated} truncated."
            )
        elif isinstance(event, Progress):
            self.query_one("#bar", ProgressBar).update(progress=event.step)
            self.query_one("#stats", Static).update(
                f"step {event.step}/{event.total_steps} · epoch {event.epoch:.2f}/{self.epochs} · loss {event.loss:.4f} · "
                f"{event.tokens_per_second:.0f} tok/s · ETA {format_seconds(event.eta_seconds)} · "
                f"peak memory {event.peak_memory_mb / 1024:.1f} GB"
            )
            self.query_one(LossPlot).add_train(event.step, event.loss)
        elif isinstance(event, Evaluation):
            self.query_one(LossPlot).add_validation(event.step, event.validation_loss)
        elif isinstance(event, Finished):
            await self._show_result(event)
        elif isinstance(event, Failed):
            phase.update("Training failed. Nothing was saved.")
            self.notify(event.message, title="Training failed", severity="error", timeout=20)

    async def _show_result(self, finished: Finished) -> None:
        metadata = finished.metadata
        before, after = metadata.get("validation_loss_before"), metadata.get("validation_loss_after")
        if before is not None and after is not None:
            change = (after - before) / before * 100 if before else 0.0
            summary = f"Validation loss {before:.4f} before → {after:.4f} after training ({change:+.1f}%)."
        else:
            losses = metadata["losses"]["train"]
            summary = (f"Training loss {losses[0]['loss']:.4f} at the first step → {losses[-1]['loss']:.4f} at the last. "
                       "No validation split: it needs at least 8 conversations.")
        gguf = metadata.get("gguf", {})
        if not gguf.get("written"):
            summary += f" No LoRA GGUF, so only PyTorch can use it: {gguf.get('reason')}"
        keys = self.app._keymap.get("use_adapter", KEYS.use_adapter)
        self.query_one("#phase", Static).update(Text(f"Saved adapter '{finished.adapter_path.name}'. Press {keys} to chat with it."))
        self.query_one("#summary", Static).update(Text(summary))

        adapter = read_adapter(finished.adapter_path)
        base = self.services.runtime.catalog.resolve(metadata["base_model"]["id"])
        options = self.services.runtime.options
        panel = ABPanel(base, adapter, LoadOptions(n_ctx=options.n_ctx, threads=options.threads, dtype=options.dtype,
                                                   cache_dir=options.cache_dir))
        await self.query_one("#run").mount(panel)
        # Set last, so code that waits for the result finds the A/B panel mounted.
        self.result = finished

    def cancel_training(self) -> None:
        if self.process is not None:
            self.process.cancel()
            self.query_one("#phase", Static).update("Training cancelled. Nothing was saved.")

    # Leaving

    def action_use_adapter(self) -> None:
        if self.result is None:
            self.notify("Train an adapter first; this key then switches the chat to it.", severity="warning")
            return
        metadata = self.result.metadata
        llama_can_run = metadata.get("gguf", {}).get("written") and metadata["base_model"]["format"] == "gguf"
        current = self.services.runtime.choice
        # Stay on the backend the chat uses now when it can run the adapter; llama.cpp needs the LoRA GGUF.
        if current is not None and (current.backend == "torch" or llama_can_run):
            backend = current.backend
        else:
            backend = "llama" if llama_can_run else "torch"
        self.dismiss(Choice(metadata["base_model"]["id"], backend, self.result.adapter_path.name))

    def action_close(self) -> None:
        if self.process is None:
            self.dismiss(None)
            return

        def close(confirmed: bool | None) -> None:
            if confirmed:
                self.cancel_training()
                self.dismiss(None)

        question = "Training is running. Stop it and close the fine-tune screen? Nothing will be saved."
        self.app.push_screen(ConfirmScreen(question, "Stop training", "Keep training"), close)
