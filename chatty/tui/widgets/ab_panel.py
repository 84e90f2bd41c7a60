"""The A/B panel: one prompt, answered by the base model and by the new adapter, side by side."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Button, Input, Markdown, Static
from textual.widgets.markdown import MarkdownStream

from chatty.backends import Backend, GenerationParams, LoadOptions, create_backend
from chatty.errors import ChattyError
from chatty.models.adapters import AdapterInfo
from chatty.models.catalog import ModelInfo
from chatty.text import show_controls

log = logging.getLogger(__name__)

# Greedy decoding, so a difference between the two answers comes from the adapter alone.
COMPARE_PARAMS = GenerationParams(temperature=0.0, max_tokens=200)


@dataclass
class ComparePiece(Message):
    side: str
    text: str


@dataclass
class CompareFailed(Message):
    error: Exception


class CompareDone(Message):
    pass


class ABPanel(Vertical):
    """Compares base and adapter on the user's prompt; owns a backend of its own while shown."""

    DEFAULT_CSS = """
    ABPanel {
        height: 1fr;
    }
    ABPanel > Horizontal.prompt-row {
        height: auto;
    }
    ABPanel > Horizontal.prompt-row > Input {
        width: 1fr;
    }
    ABPanel > Horizontal.answers {
        height: 1fr;
    }
    ABPanel .answer {
        width: 1fr;
        border: round $panel;
        padding: 0 1;
    }
    ABPanel .answer > .title {
        text-style: bold;
        color: $text-muted;
    }
    """

    def __init__(self, base: ModelInfo, adapter: AdapterInfo, load_options: LoadOptions, **kwargs):
        super().__init__(**kwargs)
        self.base = base
        self.adapter = adapter
        self.load_options = load_options
        self.backend_name = "llama" if adapter.gguf_path is not None and base.format == "gguf" else "torch"
        self._backend: Backend | None = None
        self._texts = {"base": "", "adapter": ""}
        self._streams: dict[str, MarkdownStream] = {}
        self.running = False

    def compose(self) -> ComposeResult:
        with Horizontal(classes="prompt-row"):
            yield Input(placeholder="Type a prompt to compare base and adapter, then press Enter", id="ab-prompt")
            yield Button("Compare", id="compare")
        with Horizontal(classes="answers"):
            with VerticalScroll(classes="answer", id="base-answer"):
                yield Static(Text(f"base: {self.base.id} ({self.backend_name})"), classes="title")
                yield Markdown(id="base-text")
            with VerticalScroll(classes="answer", id="adapter-answer"):
                yield Static(Text(f"adapter: {self.adapter.name} ({self.backend_name})"), classes="title")
                yield Markdown(id="adapter-text")

    async def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        await self.start(event.value)

    async def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "compare":
            event.stop()
            await self.start(self.query_one("#ab-prompt", Input).value)

    async def start(self, prompt: str) -> None:
        if self.running:
            self.notify("A comparison is still running.", severity="warning")
            return
        if not prompt.strip():
            self.notify("Type a prompt to compare.", severity="warning")
            return
        self.running = True
        self._texts = {"base": "", "adapter": ""}
        for side in ("base", "adapter"):
            markdown = self.query_one(f"#{side}-text", Markdown)
            await markdown.update("")
            self._streams[side] = Markdown.get_stream(markdown)
        self.compare(prompt)

    @work(thread=True, exclusive=True, group="compare")
    def compare(self, prompt: str) -> None:
        try:
            backend = self._ensure_backend()
            messages = [{"role": "user", "content": prompt}]
            for side, adapter in (("base", None), ("adapter", self.adapter)):
                backend.set_adapter(adapter)
                for piece in backend.generate(messages, COMPARE_PARAMS):
                    self.post_message(ComparePiece(side, piece))
        except Exception as error:  # reported in the panel's notification
            log.error("A/B comparison failed: %s", error, exc_info=not isinstance(error, ChattyError))
            self.post_message(CompareFailed(error))
            return
        self.post_message(CompareDone())

    def _ensure_backend(self) -> Backend:
        if self._backend is None:
            backend = create_backend(self.backend_name, self.load_options)
            backend.load(self.base)
            self._backend = backend
        return self._backend

    async def on_compare_piece(self, event: ComparePiece) -> None:
        self._texts[event.side] += event.text
        await self._streams[event.side].write(show_controls(event.text))

    async def on_compare_failed(self, event: CompareFailed) -> None:
        await self._finish()
        self.notify(str(event.error), title="Comparison failed", severity="error", timeout=15)

    async def on_compare_done(self, event: CompareDone) -> None:
        await self._finish()

    async def _finish(self) -> None:
        """Stop the streams and render both answers once in full."""
        for side, stream in self._streams.items():
            await stream.stop()
            await self.query_one(f"#{side}-text", Markdown).update(show_controls(self._texts[side]))
        self._streams = {}
        self.running = False

    def on_unmount(self) -> None:
        if self._backend is not None:
            self._backend.close()
            self._backend = None

    def answers(self) -> dict[str, str]:
        return dict(self._texts)
