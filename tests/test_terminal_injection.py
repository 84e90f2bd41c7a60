"""Terminal injection: escape sequences and control characters in imported conversations never reach the terminal raw.

A conversation full of ANSI, OSC, C1 and bidi sequences is imported with `chatty import` and opened
in the real TUI. Each view that shows its text is then rendered as Textual would write it to a
terminal, and the output is searched for raw control characters.
"""

from __future__ import annotations

import io
import json
import re

from rich.console import Console
from textual import events

from chatty.cli import main
from chatty.store import Store
from chatty.tui.screens.code_picker import CodePickerScreen
from chatty.tui.screens.dialogs import TextInputScreen
from chatty.tui.screens.settings import SettingsScreen
from chatty.tui.widgets.message import AssistantMessage, UserMessage

from tui_helpers import SIZE, make_app, notifications, wait_for_model, wait_until

ESCAPES = {
    "clear screen": "\x1b[2J\x1b[H",
    "colors": "\x1b[31;1mred\x1b[0m",
    "clipboard write (OSC 52)": "\x1b]52;c;ZXZpbA==\x07",
    "hyperlink (OSC 8)": "\x1b]8;;https://example.invalid\x1b\\link\x1b]8;;\x1b\\",
    "window title (OSC 0)": "\x1b]0;owned\x07",
    "C1 sequences": "\x9b2J\x9d0;c1\x9c",
    "bidi override and isolate": "\u202eevil\u202c \u2066iso\u2069",
    "other controls": "bell\x07 back\x08 cr\r nul\x00 del\x7f vt\x0b",
}
HOSTILE = " ".join(ESCAPES.values())

# Control characters (tab and newline aside), DEL, C1 controls, and bidi embeddings, overrides and isolates.
RAW_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
# The escape sequences that Textual itself writes around the text: SGR colors and cursor moves.
TEXTUAL_SEQUENCE = re.compile(r"\x1b\[[0-9;]*[mH]")


def screen_lines(app) -> list[str]:
    """Return the text of each screen line as the compositor hands it to the terminal."""
    return ["".join(segment.text for segment in strip) for strip in app.screen._compositor.render_strips()]


def terminal_output(app) -> str:
    """Render a full screen update as Textual's driver would write it to a terminal."""
    update = app.screen._compositor.render_update(full=True, screen_stack=app._background_screens)
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, color_system="truecolor", width=SIZE[0], height=SIZE[1],
                      legacy_windows=False)
    console.print(update, end="")
    return buffer.getvalue()


def assert_no_raw_controls(app, view: str) -> str:
    """Fail when a raw control character is on screen or in the terminal output; return the screen text."""
    lines = screen_lines(app)
    dirty = [f"line {number}: {line.strip()!r}" for number, line in enumerate(lines) if RAW_CONTROL.search(line)]
    assert dirty == [], f"raw control characters in the {view}"

    # Every escape sequence left in the output is one that Textual wrote for colors or the cursor.
    output = TEXTUAL_SEQUENCE.sub("", terminal_output(app))
    assert sorted(set(RAW_CONTROL.findall(output))) == [], f"raw control characters in the terminal output of the {view}"
    return "\n".join(lines)


def import_hostile_conversation(chatty_home, capsys) -> None:
    reply = (
        f"Here you go: {HOSTILE}\n\n"
        f"```sh\necho '{ESCAPES['clear screen']}{ESCAPES['window title (OSC 0)']}'\n```\n\n"
        f"```python\nprint('{ESCAPES['clipboard write (OSC 52)']}')\n```\n"
    )
    messages = [
        {"role": "system", "content": f"System {ESCAPES['colors']} {ESCAPES['bidi override and isolate']}"},
        {"role": "user", "content": f"{ESCAPES['window title (OSC 0)']}Title {ESCAPES['clear screen']}\u202eevil"},
        {"role": "assistant", "content": reply},
        {"role": "user", "content": HOSTILE},
    ]
    source = chatty_home / "hostile.jsonl"
    source.write_text(json.dumps({"messages": messages}) + "\n", encoding="utf-8")
    assert main(["import", str(source)]) == 0
    capsys.readouterr()

    # A reply whose header names a model and an error that carry escapes, as a hostile file name would.
    store = Store(chatty_home / "chatty.db")
    conversation_id = store.list_conversations()[0].id
    store.add_message(conversation_id, "assistant", f"partial {HOSTILE}", status="error",
                      model="\x1b]0;model\x07smol", backend="llama", error=f"failed {ESCAPES['C1 sequences']}")
    store.close()


async def test_imported_escapes_never_reach_terminal(chatty_home, capsys):
    import_hostile_conversation(chatty_home, capsys)
    app = make_app()
    # notifications=True: run_test leaves toasts out of the screen unless asked.
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await wait_for_model(pilot, app)
        await wait_until(pilot, lambda: len(app.query(UserMessage)) == 2 and len(app.query(AssistantMessage)) == 2)
        await pilot.pause(0.3)

        # The chat screen: sidebar title, messages, reply headers and status line.
        screen = assert_no_raw_controls(app, "chat screen")
        assert "␛[2J" in screen
        assert "<U+202E>evil" in screen
        assert "␛]0;model␇smol" in screen

        # The settings dialog shows the imported system prompt in a text area.
        await pilot.press("f4")
        await wait_until(pilot, lambda: isinstance(app.screen, SettingsScreen))
        await pilot.pause(0.2)
        assert "␛[31;1m" in assert_no_raw_controls(app, "settings dialog")
        await pilot.press("escape")

        # The rename dialog shows the title in an input box.
        await pilot.press("f2")
        await wait_until(pilot, lambda: isinstance(app.screen, TextInputScreen))
        await pilot.pause(0.2)
        assert "Title ␛[2J" in assert_no_raw_controls(app, "rename dialog")
        await pilot.press("escape")

        # The notification after starring names the title.
        await pilot.press("f9")
        await wait_until(pilot, lambda: any(message.startswith("Starred") for message in notifications(app)))
        await pilot.pause(0.3)
        assert "Starred '␛]0;owned␇Title" in assert_no_raw_controls(app, "notification")

        # The code block picker lists the first line of each block in the last complete reply.
        app.query(AssistantMessage).first().focus()
        await pilot.press("ctrl+o")
        await wait_until(pilot, lambda: isinstance(app.screen, CodePickerScreen))
        await pilot.pause(0.2)
        assert "echo '␛[2J" in assert_no_raw_controls(app, "code picker")
        await pilot.press("escape")

        # Hostile text pasted into the prompt box. Textual's text area turns \r and \x0b into line
        # breaks, so the text is compared line by line.
        app.prompt.focus()
        app.post_message(events.Paste(HOSTILE))
        await wait_until(pilot, lambda: app.prompt.text.splitlines() == HOSTILE.splitlines(), timeout=10)
        await pilot.pause(0.2)
        assert "␛]52;c;ZXZpbA==" in assert_no_raw_controls(app, "prompt box")
    app.services.close()
