"""Handing results from worker threads back to the event loop."""

from __future__ import annotations

import functools

from textual import events
from textual.message_pump import MessagePump


def call_soon(target: MessagePump, callback, *args) -> None:
    """Run callback(*args) on the event loop of `target`, from any thread.

    Unlike App.call_from_thread, this neither blocks the worker nor fails once the app is closing:
    a message posted to a closed widget, screen or app is dropped.
    """
    target.post_message(events.Callback(callback=functools.partial(callback, *args)))
