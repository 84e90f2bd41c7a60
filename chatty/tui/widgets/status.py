"""The status line: model, backend, adapter, speed and context use."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widgets import Static

from chatty.text import show_controls


class StatusLine(Static):
    """One line under the prompt that describes the runtime and the last reply."""

    model: reactive[str] = reactive("loading model…")
    backend: reactive[str] = reactive("")
    adapter: reactive[str | None] = reactive(None)
    tokens_per_second: reactive[float | None] = reactive(None)
    context_used: reactive[int | None] = reactive(None)
    context_size: reactive[int | None] = reactive(None)
    activity: reactive[str] = reactive("")

    def render(self) -> Text:
        parts = [self.model]
        if self.backend:
            parts.append(self.backend)
        parts.append(f"adapter: {self.adapter}" if self.adapter else "no adapter")
        if self.tokens_per_second:
            parts.append(f"{self.tokens_per_second:.1f} tok/s")
        if self.context_size:
            used = self.context_used if self.context_used is not None else "?"
            parts.append(f"context {used}/{self.context_size}")
        if self.activity:
            parts.append(self.activity)
        # Text, not markup: a model or adapter name may contain "[", and control characters.
        return Text(show_controls(" · ".join(parts)))
