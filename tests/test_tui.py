"""The real Textual app, driven headless with Pilot, on the real embedded model at temperature 0."""

from __future__ import annotations

import time
from dataclasses import fields

from textual.widgets import Input

from chatty.config import KeysConfig
from chatty.store import Store
from chatty.tui.app import ChattyApp
from chatty.tui.screens.dialogs import ConfirmScreen, TextInputScreen
from chatty.tui.screens.help import HelpScreen
from chatty.tui.screens.settings import SettingsScreen
from chatty.tui.widgets.message import AssistantMessage, UserMessage

from tui_helpers import LONG_PROMPT, SIZE, make_app, notifications, press_now, send, wait_for_model, wait_until


async def test_reply_streams_in_steps():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_model(pilot, app)
        await send(pilot, app, "Write a short poem about the sea.")
        await wait_until(pilot, lambda: bool(app.query(AssistantMessage)))
        reply = app.query(AssistantMessage).last()
        lengths = set()
        while app._generating:
            lengths.add(len(reply.text))
            await pilot.pause(0.01)
        assert len(lengths - {0}) >= 3
        assert reply.details.status == "complete"
        assert "stopped" not in reply.header_text()
        assert reply.text
        assert "<|im_end|>" not in reply.text

        store = app.services.store
        saved = store.messages(app.conversation_id)
        assert saved[-1].content == reply.text
    app.services.close()


async def test_model_leaves_interface_a_core():
    from chatty.backends.base import available_cores

    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_model(pilot, app)
        assert app.services.runtime.options.threads == max(1, available_cores() - 1)
        assert app.services.runtime.backend.llm.n_threads == max(1, available_cores() - 1)
    app.services.close()


async def test_escape_stops_long_reply():
    app = make_app(generation__max_tokens=3000)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_model(pilot, app)
        await send(pilot, app, LONG_PROMPT)
        reply_widget = None
        await wait_until(pilot, lambda: bool(app.query(AssistantMessage)) and len(app.query(AssistantMessage).last().text) > 20)
        reply_widget = app.query(AssistantMessage).last()
        pressed_at = time.monotonic()
        await press_now(pilot, app, "escape")
        await wait_until(pilot, lambda: not app._generating, timeout=5)
        assert time.monotonic() - pressed_at < 1.0
        assert reply_widget.details.status == "stopped"
        assert "stopped" in reply_widget.header_text()

        saved = app.services.store.messages(app.conversation_id)[-1]
        assert saved.status == "stopped"
        assert saved.content == reply_widget.text
        assert saved.completion_tokens < 3000
    app.services.close()


async def test_restart_finds_conversation(chatty_home):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_model(pilot, app)
        await send(pilot, app, "Name three colors.")
        await wait_until(pilot, lambda: bool(app.query(AssistantMessage)) and not app._generating)
        first_reply = app.query(AssistantMessage).last().text
    app.services.close()

    again = make_app()
    async with again.run_test(size=SIZE) as pilot:
        await pilot.pause(0.1)
        titles = [str(option.prompt) for option in again.sidebar.option_list.options]
        assert titles == ["Name three colors."]
        assert [w.text for w in again.query(UserMessage)] == ["Name three colors."]
        assert [w.text for w in again.query(AssistantMessage)] == [first_reply]
        assert again.conversation_id is not None
    again.services.close()


async def test_keys_handled_while_streaming():
    app = make_app(generation__max_tokens=600)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_model(pilot, app)
        await send(pilot, app, LONG_PROMPT)
        await wait_until(pilot, lambda: bool(app.query(AssistantMessage)) and len(app.query(AssistantMessage).last().text) > 10)

        # A 10 ms timer measures how long the event loop goes without running while the reply streams.
        ticks: list[float] = []
        app.set_interval(0.01, lambda: ticks.append(time.monotonic()) if app._generating else None)
        await press_now(pilot, app, "o", "k")
        typed_while_generating = app._generating and app.prompt.text == "ok"
        await wait_until(pilot, lambda: not app._generating)

        gaps = [later - earlier for earlier, later in zip(ticks, ticks[1:])]
        assert typed_while_generating
        assert len(ticks) > 10
        assert max(gaps) < 0.25
    app.services.close()


async def test_backend_error_returns_prompt():
    app = make_app(model__n_ctx=256)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_model(pilot, app)
        long_text = "word " * 400
        await send(pilot, app, long_text)
        await wait_until(pilot, lambda: not app._generating)
        await pilot.pause(0.1)
        assert app.prompt.text == long_text
        assert any("too long" in message for message in notifications(app))
        assert not app.query(UserMessage)
        assert app.conversation_id is None
        assert app.services.store.list_conversations() == []
    app.services.close()


async def test_copy_without_clipboard_says_so(monkeypatch):
    for variable in ("DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(variable, raising=False)
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_model(pilot, app)
        await send(pilot, app, "Name three colors.")
        await wait_until(pilot, lambda: bool(app.query(AssistantMessage)) and not app._generating)
        await pilot.press("f5")
        await pilot.pause(0.1)
        messages = notifications(app)
        assert any(message.startswith("Could not copy the reply") for message in messages)
        assert not any(message.startswith("Copied") for message in messages)
    app.services.close()


async def test_help_lists_every_binding():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f1")
        await pilot.pause(0.1)
        assert isinstance(app.screen, HelpScreen)
        ids = {row[2] for row in app.screen.rows}
        assert ids == {field.name for field in fields(KeysConfig)}
        await pilot.press("escape")
        await pilot.pause(0.1)
        assert not isinstance(app.screen, HelpScreen)
    app.services.close()


async def test_keymap_from_config():
    app = make_app(keys__help="f12")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f1")
        await pilot.pause(0.1)
        assert not isinstance(app.screen, HelpScreen)
        await pilot.press("f12")
        await pilot.pause(0.1)
        assert isinstance(app.screen, HelpScreen)
        assert ("f12", "Help", "help") in app.screen.rows
    app.services.close()


async def test_palette_has_every_action():
    app = make_app()
    async with app.run_test(size=SIZE):
        titles = {command.title for command in app.get_system_commands(app.screen)}
    expected = {
        "New conversation", "Rename conversation", "Delete conversation", "Search messages", "Conversation settings",
        "Copy reply", "Copy code block", "Stop reply", "Toggle sidebar", "Key bindings", "Quit", "Switch model",
        "Star conversation", "Fine-tune",
    }
    assert expected <= titles
    app.services.close()


async def test_settings_dialog_saves_and_validates():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f4")
        await pilot.pause(0.1)
        assert isinstance(app.screen, SettingsScreen)
        app.screen.query_one("#temperature", Input).value = "hot"
        await pilot.press("ctrl+s")
        await pilot.pause(0.1)
        assert isinstance(app.screen, SettingsScreen)
        assert any("Temperature" in message and "'hot' is invalid" in message for message in notifications(app))

        app.screen.query_one("#temperature", Input).value = "0.7"
        app.screen.query_one("#max_tokens", Input).value = "77"
        await pilot.press("ctrl+s")
        await pilot.pause(0.1)
        assert not isinstance(app.screen, SettingsScreen)
        conversation = app.services.store.get_conversation(app.conversation_id)
        assert conversation.params["temperature"] == 0.7
        assert conversation.params["max_tokens"] == 77
    app.services.close()


async def test_rename_and_delete_conversation(chatty_home):
    store = Store(chatty_home / "chatty.db")
    kept = store.create_conversation("Keep me")
    doomed = store.create_conversation("Delete me")
    store.add_message(doomed.id, "user", "hello")
    store.close()

    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.1)
        assert app.conversation_id == doomed.id
        await pilot.press("f2")
        await pilot.pause(0.1)
        assert isinstance(app.screen, TextInputScreen)
        app.screen.query_one(Input).value = "Renamed"
        await pilot.press("enter")
        await pilot.pause(0.3)
        assert app.services.store.get_conversation(doomed.id).title == "Renamed"

        await pilot.press("f8")
        await pilot.pause(0.1)
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.click("#confirm")
        await pilot.pause(0.3)
        assert [c.id for c in app.services.store.list_conversations()] == [kept.id]
        assert app.conversation_id is None
        titles = [str(option.prompt) for option in app.sidebar.option_list.options]
        assert titles == ["Keep me"]
    app.services.close()


async def test_search_filters_sidebar(chatty_home):
    store = Store(chatty_home / "chatty.db")
    for title, text in (("Cooking", "bake bread at 220 degrees"), ("Travel", "trains in Japan")):
        conversation = store.create_conversation(title)
        store.add_message(conversation.id, "user", text)
    store.close()

    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+f")
        await pilot.press(*"bread")
        await wait_until(pilot, lambda: len(app.sidebar.option_list.options) == 1, timeout=5)
        assert str(app.sidebar.option_list.options[0].prompt) == "Cooking"
    app.services.close()


async def test_new_conversation_key():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_model(pilot, app)
        await send(pilot, app, "Hi")
        await wait_until(pilot, lambda: bool(app.query(AssistantMessage)) and not app._generating)
        first = app.conversation_id
        await pilot.press("ctrl+n")
        await pilot.pause(0.1)
        assert app.conversation_id is None
        assert not app.query(AssistantMessage)
        await send(pilot, app, "Hello again")
        await wait_until(pilot, lambda: bool(app.query(AssistantMessage)) and not app._generating)
        assert app.conversation_id not in (None, first)
    app.services.close()


async def test_key_burst_keeps_order():
    """Keys that arrive in one burst, as over SSH, are handled in order: Enter sends only what came before it."""
    from textual import events

    app = make_app(generation__max_tokens=5)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_model(pilot, app)
        app.prompt.focus()
        for key, character in (("h", "h"), ("i", "i"), ("ctrl+j", None), ("o", "o"), ("enter", "\r"), ("x", "x")):
            app.post_message(events.Key(key, character))
        await wait_until(pilot, lambda: bool(app.query(UserMessage)) and not app._generating)
        assert app.query(UserMessage).last().text == "hi\no"
        assert app.prompt.text == "x"
    app.services.close()


async def test_switch_backend_mid_conversation(chatty_home, torch_cache_dir):
    from textual.widgets import OptionList

    from chatty.tui.screens.model_picker import ModelPickerScreen

    (chatty_home / "cache").symlink_to(torch_cache_dir, target_is_directory=True)
    app = make_app(generation__max_tokens=20)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_model(pilot, app)
        await send(pilot, app, "Name three colors.")
        await wait_until(pilot, lambda: bool(app.query(AssistantMessage)) and not app._generating)

        await pilot.press("ctrl+t")
        await wait_until(pilot, lambda: isinstance(app.screen, ModelPickerScreen))
        picker = app.screen
        backends = picker.query_one("#backend-list", OptionList)
        await wait_until(pilot, lambda: backends.option_count == 2)
        backends.highlighted = [backends.get_option_at_index(i).id for i in range(2)].index("torch")
        await pilot.click("#switch")
        await wait_until(pilot, lambda: app.services.runtime.choice.backend == "torch" and not app.status.activity)
        assert app.status.backend == "torch"

        await send(pilot, app, "Name three animals.")
        await wait_until(pilot, lambda: len(app.query(AssistantMessage)) == 2 and not app._generating)
        headers = [reply.header_text() for reply in app.query(AssistantMessage)]
        assert "· llama" in headers[0]
        assert "· torch" in headers[1]
        saved = app.services.store.messages(app.conversation_id)
        assert [m.backend for m in saved if m.role == "assistant"] == ["llama", "torch"]
    app.services.close()


async def test_long_history_loads_in_pages(chatty_home):
    from chatty.tui.widgets.chat_view import PAGE_SIZE
    from chatty.tui.widgets.message import MessageView

    store = Store(chatty_home / "chatty.db")
    messages = []
    for index in range(125):
        messages += [{"role": "user", "content": f"question {index}"}, {"role": "assistant", "content": f"answer {index}"}]
    store.import_conversations([("Long", messages)])
    store.close()

    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: len(app.query(MessageView)) > 0)
        await pilot.pause(0.3)
        views = app.query(MessageView)
        assert len(views) == PAGE_SIZE
        assert views.last().text == "answer 124"

        # Scrolling to the top loads the previous page and keeps the message that was first in view.
        first_before = views.first()
        app.chat_view.scroll_home(animate=False)
        await wait_until(pilot, lambda: len(app.query(MessageView)) == 2 * PAGE_SIZE, timeout=10)
        await pilot.pause(0.3)
        assert app.chat_view.scroll_y > 0
        assert app.chat_view.scroll_y == first_before.virtual_region.y

        app.chat_view.scroll_home(animate=False)
        await wait_until(pilot, lambda: len(app.query(MessageView)) == 3 * PAGE_SIZE, timeout=10)
        assert app.query(MessageView).first().text == "question " + str(125 - 3 * PAGE_SIZE // 2)
    app.services.close()


async def test_markup_in_titles_is_text(chatty_home):
    store = Store(chatty_home / "chatty.db")
    conversation = store.create_conversation("[/bold] oops [")
    store.add_message(conversation.id, "user", "[red]hello[/red]")
    store.close()

    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.2)
        await pilot.press("f9")
        await pilot.pause(0.2)
        assert "Starred '[/bold] oops ['." in notifications(app)
        assert app.services.store.get_conversation(conversation.id).starred
    app.services.close()


async def test_tab_moves_focus_in_dialogs():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f4")
        await pilot.pause(0.1)
        assert isinstance(app.screen, SettingsScreen)
        first = app.screen.focused
        await pilot.press("tab")
        assert app.screen.focused is not first
    app.services.close()


async def test_failed_model_load_blocks_sending(tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + bytes(100))
    config_app = make_app()
    config_app.initial_model = str(broken)
    async with config_app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: config_app.status.model == "no model loaded")
        await send(pilot, config_app, "hello")
        await wait_until(pilot, lambda: not config_app._generating)
        await pilot.pause(0.1)
        assert config_app.prompt.text == "hello"
        assert any(message.startswith("No model is loaded") for message in notifications(config_app))
        assert config_app.services.store.list_conversations() == []
        assert config_app.services.runtime.backend is None
    config_app.services.close()
