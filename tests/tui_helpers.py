"""Helpers for tests that drive the real app with Pilot."""

from __future__ import annotations

import asyncio
import time

from chatty.cli import Services
from chatty.config import Config, resolve_paths
from chatty.tui.app import ChattyApp

SIZE = (120, 40)
LONG_PROMPT = "Write a very long story about a dragon who learns to sail."


def make_app(**changes) -> ChattyApp:
    config = Config()
    config.generation.temperature = 0.0
    config.generation.max_tokens = 200
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        setattr(getattr(config, section), key, value)
    return ChattyApp(Services(config, resolve_paths(config)))


async def wait_until(pilot, condition, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the app"
        await pilot.pause(0.02)


async def wait_for_model(pilot, app: ChattyApp) -> None:
    await wait_until(pilot, lambda: app.services.runtime.backend is not None and not app.status.activity)


async def send(pilot, app: ChattyApp, text: str) -> None:
    """Type the prompt and press Enter without waiting for the reply.

    Pilot.press waits until the app has no messages left to process, which during streaming
    means until the reply ends, so keys for a streaming app are posted as events instead.
    """
    app.prompt.text = text
    app.prompt.focus()
    await pilot.pause()
    await press_now(pilot, app, "enter")


async def press_now(pilot, app: ChattyApp, *keys: str) -> None:
    """Post key events to the app as a terminal would, and return without waiting for the app to be idle."""
    from textual import events

    characters = {"enter": "\r"}
    for key in keys:
        app.post_message(events.Key(key, characters.get(key, key if len(key) == 1 else None)))
    await pilot.pause(0.05)


def notifications(app: ChattyApp) -> list[str]:
    return [notification.message for notification in app._notifications]


class StallMeter:
    """Maximum time the event loop was held, measured by a task that requests a wake-up every 10 ms.

    Use it as `async with StallMeter() as meter:` inside App.run_test, whose loop is the app's own.
    """

    INTERVAL = 0.01

    def __init__(self):
        self.max_stall = 0.0
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> StallMeter:
        self._task = asyncio.get_running_loop().create_task(self._measure())
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *exc_info) -> None:
        self._task.cancel()

    async def _measure(self) -> None:
        while True:
            started = time.monotonic()
            await asyncio.sleep(self.INTERVAL)
            self.max_stall = max(self.max_stall, time.monotonic() - started - self.INTERVAL)
