"""The conversation settings dialog: system prompt and generation parameters."""

from __future__ import annotations

from dataclasses import dataclass

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, TextArea

from chatty.tui.screens.dialogs import DIALOG_CSS
from chatty.tui.widgets.text_area import ControlSafeTextArea


@dataclass(frozen=True)
class ConversationSettings:
    system_prompt: str
    temperature: float
    top_p: float
    max_tokens: int


# (field, label, parse, check, rule shown when the check fails)
_NUMBER_FIELDS = (
    ("temperature", "Temperature (0 is greedy)", float, lambda v: 0 <= v <= 5, "a number from 0 to 5"),
    ("top_p", "Top p", float, lambda v: 0 < v <= 1, "a number above 0 and at most 1"),
    ("max_tokens", "Max tokens per reply", int, lambda v: v >= 1, "a whole number of at least 1"),
)


class SettingsScreen(ModalScreen[ConversationSettings | None]):
    """Edit one conversation's settings; dismisses with the new settings, or None when cancelled."""

    DEFAULT_CSS = DIALOG_CSS.replace("{name}", "SettingsScreen") + """
    SettingsScreen > Vertical {
        width: 80;
    }
    SettingsScreen TextArea {
        height: 6;
    }
    SettingsScreen .row {
        height: auto;
    }
    SettingsScreen .row > Label {
        width: 28;
        padding-top: 1;
    }
    SettingsScreen .row > Input {
        width: 1fr;
    }
    """
    BINDINGS = [
        Binding("escape", "cancel", "Cancel", show=False),
        Binding("ctrl+s", "save", "Save", show=False),
    ]

    def __init__(self, settings: ConversationSettings):
        super().__init__()
        self.settings = settings

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("System prompt (empty: the model's default)")
            yield ControlSafeTextArea(self.settings.system_prompt, id="system_prompt", soft_wrap=True)
            for name, label, _, _, _ in _NUMBER_FIELDS:
                with Horizontal(classes="row"):
                    yield Label(label)
                    yield Input(str(getattr(self.settings, name)), id=name)
            with Horizontal(classes="buttons"):
                yield Button("Cancel", id="cancel")
                yield Button("Save", id="save", variant="primary")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "save":
            self.action_save()
        else:
            self.dismiss(None)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.action_save()

    def action_save(self) -> None:
        values = {}
        for name, label, parse, check, rule in _NUMBER_FIELDS:
            raw = self.query_one(f"#{name}", Input).value.strip()
            try:
                value = parse(raw)
            except ValueError:
                value = None
            if value is None or not check(value):
                self.notify(f"{label}: '{raw}' is invalid. Enter {rule}.", severity="error")
                self.query_one(f"#{name}", Input).focus()
                return
            values[name] = value
        system_prompt = self.query_one("#system_prompt", TextArea).text
        self.dismiss(ConversationSettings(system_prompt=system_prompt, **values))

    def action_cancel(self) -> None:
        self.dismiss(None)
