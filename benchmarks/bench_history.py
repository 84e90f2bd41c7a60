"""A conversation of 5,000 messages: time to its first frame and memory, in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from benchmarks.common import Record, median

REPLY = "Here is an answer with **bold** text and a list:\n\n- one\n- two\n\n```python\nprint('hello')\n```\n"

CHILD = r"""
import asyncio, json, resource, sys, time
started = time.perf_counter()
from chatty.cli import Services
from chatty.config import Config, resolve_paths
from chatty.tui.app import ChattyApp
from chatty.tui.widgets.message import MessageView

async def main():
    services = Services(Config(), resolve_paths(Config()))
    app = ChattyApp(services)
    async with app.run_test(size=(120, 40)) as pilot:
        while not app.query(MessageView):
            await pilot.pause(0.005)
        shown = time.perf_counter() - started
        mounted = len(app.query(MessageView))
    services.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": shown, "mounted": mounted, "peak_mb": peak}))

asyncio.run(main())
"""


def make_history(home: str, count: int) -> None:
    from chatty.store import Store

    store = Store(os.path.join(home, "chatty.db"))
    conversation = store.create_conversation("Long history")
    messages = []
    for index in range(count // 2):
        messages += [{"role": "user", "content": f"Question {index}: how does step {index} work?"},
                     {"role": "assistant", "content": REPLY}]
    store.close()
    store = Store(os.path.join(home, "chatty.db"))
    store.delete_conversation(conversation.id)
    store.import_conversations([("Long history", messages)])
    store.close()


def run(quick: bool, runs: int) -> list[Record]:
    count = 500 if quick else 5000
    seconds, peaks, mounted = [], [], 0
    with tempfile.TemporaryDirectory(prefix="chatty-bench-history-") as home:
        make_history(home, count)
        for _ in range(runs):
            result = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True,
                                    env={**os.environ, "CHATTY_HOME": home})
            data = json.loads(result.stdout.strip().splitlines()[-1])
            seconds.append(data["seconds"])
            peaks.append(data["peak_mb"])
            mounted = data["mounted"]
    note = f"{count} messages, {mounted} mounted at first; older pages load when the view is scrolled to the top"
    return [
        Record(f"Long history: first frame of a {count}-message conversation", median(seconds), "s", seconds,
               "< 1", median(seconds) < 1, note + "; measured from process start"),
        Record("Long history: peak memory (RSS)", median(peaks), "MB", peaks, note=note),
    ]
