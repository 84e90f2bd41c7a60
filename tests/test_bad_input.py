"""Huge and odd input: a 1 MB paste, empty and whitespace-only messages, 10,000 emoji, text that is not UTF-8.

The TUI tests drive the real app on the embedded model. They measure how long the event loop is held
while the input arrives and is refused, so a freeze of a second or more fails them.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from textual import events

from chatty.cli import main
from chatty.store import Store
from chatty.tui.widgets.message import MessageView, UserMessage

from tui_helpers import SIZE, StallMeter, make_app, notifications, press_now, wait_for_model, wait_until

# Well under the one-second freeze that the tests guard against, and far above the 10 to 150 ms
# that these steps hold the loop on two CPU cores.
MAX_STALL_SECONDS = 0.5
SENTENCE = "The quick brown fox jumps over the lazy dog. "
# One line of 1,000,000 characters: the worst case for a text area that wraps lines.
MEGABYTE = (SENTENCE * (1_000_000 // len(SENTENCE) + 1))[:1_000_000]
# Single code points, skin tones, flags, keycaps and ZWJ sequences: 10,000 emoji, 26,000 code points.
EMOJI = ["😀", "🎉", "👍🏽", "🇯🇵", "👩‍👩‍👧", "1️⃣", "🏳️‍🌈", "🐍", "❤️", "🧑🏿‍🚀"]
TEN_THOUSAND_EMOJI = "".join(EMOJI[index % len(EMOJI)] for index in range(10_000))


def saved_conversations(chatty_home) -> list:
    store = Store(chatty_home / "chatty.db")
    conversations = store.list_conversations()
    store.close()
    return conversations


async def paste(pilot, app, text: str) -> None:
    """Paste as a terminal does with bracketed paste: one Paste event, which the app hands to the focused prompt."""
    app.prompt.focus()
    await pilot.pause()
    app.post_message(events.Paste(text))
    await wait_until(pilot, lambda: len(app.prompt.text) >= len(text), timeout=30)


async def send_and_expect_refusal(pilot, app) -> None:
    await press_now(pilot, app, "enter")
    await wait_until(pilot, lambda: any("too long" in message for message in notifications(app)), timeout=60)
    await wait_until(pilot, lambda: not app._generating, timeout=10)
    await pilot.pause(0.2)


@pytest.mark.parametrize("how", ["paste event", "text set"])
async def test_megabyte_prompt_refused(chatty_home, how):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_model(pilot, app)
        async with StallMeter() as meter:
            if how == "paste event":
                await paste(pilot, app, MEGABYTE)
            else:
                app.prompt.text = MEGABYTE
                app.prompt.focus()
                await pilot.pause()
            pasted = app.prompt.text
            await send_and_expect_refusal(pilot, app)

        refusals = [message for message in notifications(app) if "too long" in message]
        assert meter.max_stall < MAX_STALL_SECONDS
        assert pasted == MEGABYTE
        assert len(refusals) == 1
        assert refusals[0].startswith("The message is too long: the prompt needs")
        assert "\n" not in refusals[0]
        assert app.prompt.text == MEGABYTE
        assert not app.query(MessageView)
        assert app.conversation_id is None

        # The app still takes keys, and a key lands at the end of the text that came back.
        async with StallMeter() as typing_meter:
            await press_now(pilot, app, "x")
            await pilot.pause(0.2)
        assert app.prompt.text == MEGABYTE + "x"
        assert typing_meter.max_stall < MAX_STALL_SECONDS
    app.services.close()
    assert saved_conversations(chatty_home) == []


@pytest.mark.parametrize("text", ["", "   ", "\n \t\n"], ids=["empty", "spaces", "whitespace lines"])
async def test_blank_message_not_sent(chatty_home, text):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_model(pilot, app)
        app.prompt.text = text
        app.prompt.focus()
        await pilot.pause()
        await press_now(pilot, app, "enter")
        await pilot.pause(0.3)

        assert not app._generating
        assert not app.query(MessageView)
        assert app.conversation_id is None
        assert app.prompt.text == text
        assert notifications(app) == []
    app.services.close()
    assert saved_conversations(chatty_home) == []


async def test_ten_thousand_emoji_refused(chatty_home):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_model(pilot, app)
        async with StallMeter() as meter:
            await paste(pilot, app, TEN_THOUSAND_EMOJI)
            pasted = app.prompt.text
            await send_and_expect_refusal(pilot, app)

        assert meter.max_stall < MAX_STALL_SECONDS
        assert pasted == TEN_THOUSAND_EMOJI
        assert any(message.startswith("The message is too long") for message in notifications(app))
        # Every emoji comes back whole: no sequence is split and no code point is replaced.
        assert app.prompt.text == TEN_THOUSAND_EMOJI
        assert not app.query(MessageView)
    app.services.close()
    assert saved_conversations(chatty_home) == []


async def test_emoji_message_saved_exactly(chatty_home):
    text = "".join(EMOJI) * 2
    app = make_app(generation__max_tokens=8)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_model(pilot, app)
        await paste(pilot, app, text)
        await press_now(pilot, app, "enter")
        await wait_until(pilot, lambda: bool(app.query(UserMessage)) and not app._generating)
        assert app.query(UserMessage).last().text == text
        saved = app.services.store.messages(app.conversation_id)
        assert [message.role for message in saved] == ["user", "assistant"]
        assert saved[0].content == text
        assert saved[1].status == "complete"
    app.services.close()


@pytest.mark.parametrize("question", ["", "   ", "\n\t \n"], ids=["empty", "spaces", "whitespace lines"])
def test_ask_blank_question(chatty_home, capsys, question):
    assert main(["ask", question]) == 1
    err = capsys.readouterr().err
    assert err == "chatty: The question is empty. Give some text to send.\n"
    assert saved_conversations(chatty_home) == []


@pytest.mark.parametrize("question", [MEGABYTE, TEN_THOUSAND_EMOJI], ids=["megabyte", "ten thousand emoji"])
def test_ask_huge_question(chatty_home, capsys, question):
    assert main(["ask", "--max-tokens", "8", question]) == 1
    err = capsys.readouterr().err
    assert err.startswith("chatty: The message is too long: the prompt needs")
    assert err.count("\n") == 1
    assert saved_conversations(chatty_home) == []


def test_ask_lone_surrogate(chatty_home, capsys):
    # Python turns command-line bytes that are not UTF-8 into lone surrogates such as U+DCE9.
    assert main(["ask", "caf\udce9"]) == 1
    err = capsys.readouterr().err
    assert "U+DCE9 at character 4" in err
    assert "lone surrogate" in err
    assert "unexpected" not in err
    assert err.count("\n") == 1
    assert saved_conversations(chatty_home) == []


def test_ask_stdin_not_utf8(chatty_home):
    result = subprocess.run(
        [sys.executable, "-m", "chatty.cli", "ask"],
        input="café".encode("latin-1"),
        capture_output=True,
        timeout=120,
        env=os.environ.copy(),
    )
    err = result.stderr.decode()
    assert result.returncode == 1
    assert err == "chatty: The question on stdin is not valid UTF-8 (byte 4 is 0xe9). Convert it to UTF-8, for example with iconv.\n"
    assert saved_conversations(chatty_home) == []
