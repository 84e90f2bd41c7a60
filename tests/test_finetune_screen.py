"""The fine-tune screen end to end: real conversations, real training, A/B answers, switching the chat."""

from __future__ import annotations

import time

from textual.widgets import Input, Select

from chatty.store import Store
from chatty.tui.screens.finetune import FinetuneScreen
from chatty.tui.widgets.ab_panel import ABPanel
from chatty.tui.widgets.loss_plot import LossPlot
from tui_helpers import SIZE, make_app, notifications, press_now, wait_until

SIGN_OFF = "Stay curious, friend!"
TOPICS = ["the sun", "rain", "cats", "dogs", "coffee", "tea", "bicycles", "trains", "the moon", "music"]


def save_conversations(home) -> None:
    store = Store(home / "chatty.db")
    for topic in TOPICS:
        conversation = store.create_conversation(f"About {topic}")
        store.add_message(conversation.id, "user", f"Tell me one fact about {topic}.")
        store.add_message(conversation.id, "assistant", f"Here is a fact about {topic}: many people like it. {SIGN_OFF}")
        store.update_conversation(conversation.id, starred=True)
    unstarred = store.create_conversation("Not starred")
    store.add_message(unstarred.id, "user", "Hello")
    store.add_message(unstarred.id, "assistant", "Hi there.")
    store.close()


async def set_option(screen: FinetuneScreen, name: str, value: str) -> None:
    screen.query_one(f"#opt-{name}", Input).value = value


async def test_train_compare_and_use(chatty_home):
    save_conversations(chatty_home)
    app = make_app()
    async with app.run_test(size=(160, 50)) as pilot:
        await pilot.press("ctrl+r")
        await wait_until(pilot, lambda: isinstance(app.screen, FinetuneScreen))
        screen = app.screen
        await wait_until(pilot, lambda: screen.query_one("#base", Select).value == "smollm2-135m-instruct")
        await wait_until(pilot, lambda: screen.selection is not None and len(screen.selection.conversations) == len(TOPICS))

        screen.query_one("#name", Input).value = "signoff"
        await set_option(screen, "epochs", "2")
        await set_option(screen, "learning_rate", "0.002")
        await pilot.click("#start")
        await wait_until(pilot, lambda: screen.result is not None or "failed" in str(screen.query_one("#phase").render()),
                         timeout=900)
        assert screen.result is not None, notifications(app)

        plot = screen.query_one(LossPlot)
        assert len(plot.train) == screen.total_steps
        assert len(plot.validation) >= 2
        assert plot.validation[-1][1] < plot.validation[0][1]
        assert (chatty_home / "adapters" / "signoff" / "adapter.gguf").is_file()
        summary = str(screen.query_one("#summary").render())
        assert "Validation loss" in summary

        panel = screen.query_one(ABPanel)
        prompt = panel.query_one("#ab-prompt", Input)
        prompt.value = "Tell me one fact about volcanoes."
        # Submit from the keyboard: a click right after the panel mounts can land before its first layout.
        prompt.focus()
        await pilot.pause()
        await press_now(pilot, app, "enter")
        await wait_until(pilot, lambda: panel.running or panel.answers()["base"], timeout=30)
        await wait_until(pilot, lambda: not panel.running, timeout=300)
        answers = panel.answers()
        assert SIGN_OFF in answers["adapter"], (answers, notifications(app))
        assert SIGN_OFF not in answers["base"]

        await pilot.press("f6")
        await wait_until(pilot, lambda: not isinstance(app.screen, FinetuneScreen))
        await wait_until(pilot, lambda: app.services.runtime.choice is not None
                         and app.services.runtime.choice.adapter == "signoff", timeout=120)
        assert app.status.adapter == "signoff"
        assert app.services.runtime.choice.backend == "llama"


async def test_cancel_leaves_nothing(chatty_home):
    save_conversations(chatty_home)
    app = make_app()
    async with app.run_test(size=(160, 50)) as pilot:
        await pilot.press("ctrl+r")
        await wait_until(pilot, lambda: isinstance(app.screen, FinetuneScreen))
        screen = app.screen
        await wait_until(pilot, lambda: screen.selection is not None and screen.selection.conversations)
        screen.query_one("#name", Input).value = "cancelled"
        await pilot.click("#start")
        await wait_until(pilot, lambda: screen.process is not None)
        started = time.monotonic()
        await pilot.click("#cancel")
        await wait_until(pilot, lambda: screen.process is None, timeout=30)
        assert time.monotonic() - started < 15
        adapters = chatty_home / "adapters"
        leftovers = list(adapters.iterdir()) if adapters.exists() else []
        assert leftovers == []


async def test_invalid_option_is_reported(chatty_home):
    save_conversations(chatty_home)
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+r")
        await wait_until(pilot, lambda: isinstance(app.screen, FinetuneScreen))
        screen = app.screen
        await set_option(screen, "rank", "zero")
        await pilot.click("#start")
        await pilot.pause(0.2)
        assert screen.process is None
        assert any("'rank' must be a whole number, not 'zero'" in message for message in notifications(app))
