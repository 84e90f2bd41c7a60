"""The TUI while a reply streams: speed against the backend alone, key latency and render cost."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time

from benchmarks.common import Record, median, ratio_record
from chatty.backends.base import GenerationParams, available_cores

SPEED_PROMPT = "Write a long story about a lighthouse keeper who learns to paint. Use many details."
MARKDOWN_PROMPT = (
    "Write a detailed Python tutorial for beginners with at least ten sections. Each section has a heading, "
    "an explanation and a fenced code block with an example."
)


def _services(max_tokens: int):
    """Return services on a new, empty data folder.

    The app opens the newest conversation at start, so a shared folder would make each run continue
    the previous run's conversation, with its longer prompt and its stored max_tokens.
    """
    from chatty.cli import Services
    from chatty.config import Config, resolve_paths

    # Beside the current data folder, so the scratch folder of benchmarks.run removes it at the end.
    current = os.environ.get("CHATTY_HOME")
    scratch = os.path.dirname(current) if current else None
    os.environ["CHATTY_HOME"] = tempfile.mkdtemp(prefix="chatty-bench-tui-", dir=scratch)

    config = Config()
    config.generation.temperature = 0.0
    config.generation.max_tokens = max_tokens
    config.model.n_ctx = 4096
    return Services(config, resolve_paths(config))


async def _wait(pilot, condition, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the app did not reach the expected state")
        await pilot.pause(0.01)


async def _stream_in_app(prompt: str, max_tokens: int, on_streaming=None):
    """Send one prompt in the real app, run headless; returns (reply stats, Markdown.append timings)."""
    from textual.widgets import Markdown

    from chatty.tui.app import ChattyApp
    from chatty.tui.widgets.message import AssistantMessage

    appends: list[tuple[int, float]] = []
    original_append = Markdown.append

    def timed_append(self, markdown: str):
        awaitable = original_append(self, markdown)

        async def measured():
            started = time.perf_counter()
            await awaitable
            appends.append((len(markdown), time.perf_counter() - started))

        return measured()

    services = _services(max_tokens)
    app = ChattyApp(services)
    Markdown.append = timed_append
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await _wait(pilot, lambda: services.runtime.backend is not None and not app.status.activity)
            services.runtime.backend.llm.reset()
            app.prompt.text = prompt
            app.prompt.focus()
            await pilot.pause()
            from textual import events

            app.post_message(events.Key("enter", "\r"))
            await _wait(pilot, lambda: app._generating)
            latencies = await on_streaming(app) if on_streaming else []
            await _wait(pilot, lambda: not app._generating)
            reply = app.query(AssistantMessage).last()
            stored = services.store.messages(app.conversation_id)[-1]
    finally:
        Markdown.append = original_append
        services.close()
    return stored, reply.text, appends, latencies


async def _measure_keys(app) -> list[float]:
    """Type a key every 100 ms while the reply streams; each latency runs from posting to the text changing."""
    from textual import events

    latencies = []
    await asyncio.sleep(0.5)
    while app._generating:
        before = len(app.prompt.text)
        started = time.perf_counter()
        app.post_message(events.Key("x", "x"))
        while len(app.prompt.text) == before and time.perf_counter() - started < 5:
            await asyncio.sleep(0.001)
        latencies.append((time.perf_counter() - started) * 1000)
        await asyncio.sleep(0.1)
    return latencies


def _backend_alone(prompt: str, max_tokens: int) -> float:
    services = _services(max_tokens)
    # The same threads as in the app, which leaves one core to its event loop.
    services.runtime.reserve_interface_core = True
    backend = services.runtime.load()
    backend.llm.reset()
    generation = backend.generate([{"role": "user", "content": prompt}], GenerationParams(0.0, 1.0, max_tokens))
    generation.text()
    services.close()
    return generation.stats.tokens_per_second


def _interface_threads() -> int:
    return max(1, available_cores() - 1)


def render_cost_ratio(appends: list[tuple[int, float]]) -> tuple[float, float, float]:
    """Return render seconds per character in the first and the last tenth of the reply, and their ratio."""
    total = sum(size for size, _ in appends)
    first = [(size, seconds) for position, (size, seconds) in _positions(appends) if position < total / 10]
    last = [(size, seconds) for position, (size, seconds) in _positions(appends) if position >= total * 9 / 10]
    first_cost = sum(s for _, s in first) / max(1, sum(n for n, _ in first))
    last_cost = sum(s for _, s in last) / max(1, sum(n for n, _ in last))
    return first_cost, last_cost, last_cost / first_cost if first_cost else float("inf")


def _positions(appends):
    position = 0
    for size, seconds in appends:
        yield position, (size, seconds)
        position += size


def run(quick: bool, runs: int) -> list[Record]:
    speed_tokens = 32 if quick else 256
    app_speed, alone_speed = [], []
    for _ in range(runs):
        stored, _, _, _ = asyncio.run(_stream_in_app(SPEED_PROMPT, speed_tokens))
        app_speed.append(stored.tokens_per_second)
        alone_speed.append(_backend_alone(SPEED_PROMPT, speed_tokens))

    markdown_tokens = 64 if quick else 3000
    stored, text, appends, latencies = asyncio.run(_stream_in_app(MARKDOWN_PROMPT, markdown_tokens, _measure_keys))
    latencies.sort()
    p95 = latencies[int(0.95 * (len(latencies) - 1))] if latencies else float("nan")
    first_cost, last_cost, cost_ratio = render_cost_ratio(appends)
    code_blocks = text.count("```") // 2
    note = f"{stored.completion_tokens} tokens, {code_blocks} code blocks, {len(latencies)} key presses"
    return [
        Record("TUI: tokens/s while streaming into the app", median(app_speed), "tok/s", app_speed,
               note=f"{speed_tokens} tokens greedy, headless app, llama.cpp on {_interface_threads()} threads "
                    f"of {available_cores()} cores, one left to the event loop"),
        Record("TUI: backend alone tokens/s", median(alone_speed), "tok/s", alone_speed),
        ratio_record("TUI: app / backend alone tokens/s", app_speed, alone_speed, 0.95),
        Record("TUI: key-press latency p95 while a Markdown reply streams", p95, "ms", latencies, "< 50",
               p95 < 50, note),
        Record("TUI: render cost per character, last tenth / first tenth", cost_ratio, "×",
               [first_cost * 1e6, last_cost * 1e6], "≤ 2", cost_ratio <= 2,
               f"{first_cost * 1e6:.1f} vs {last_cost * 1e6:.1f} µs per character in Markdown.append; {note}"),
    ]
