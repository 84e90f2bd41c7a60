"""The sidebar: a search box over all messages and the list of conversations, newest first."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Input, OptionList, Static
from textual.widgets.option_list import Option, OptionDoesNotExist

from chatty.store import Conversation
from chatty.text import show_controls


class Sidebar(Vertical):
    """Lists conversations and posts Selected when the user opens one."""

    DEFAULT_CSS = """
    Sidebar {
        width: 32;
        max-width: 35%;
        dock: left;
        border-right: vkey $panel;
    }
    Sidebar.-hidden {
        display: none;
    }
    Sidebar > Input {
        margin: 0;
    }
    Sidebar > OptionList {
        height: 1fr;
        border: none;
        text-wrap: nowrap;
        text-overflow: ellipsis;
    }
    Sidebar > .empty {
        color: $text-muted;
        padding: 0 1;
    }
    """

    @dataclass
    class Selected(Message):
        conversation_id: int

    @dataclass
    class SearchChanged(Message):
        query: str

    def compose(self) -> ComposeResult:
        yield Input(placeholder="Search messages", id="search")
        yield Static("", classes="empty")
        yield OptionList(id="conversations")

    @property
    def option_list(self) -> OptionList:
        return self.query_one("#conversations", OptionList)

    @property
    def search_input(self) -> Input:
        return self.query_one("#search", Input)

    def show(self, conversations: list[Conversation], current_id: int | None) -> None:
        """Replace the list, keeping the highlight on the same conversation, else on the open one."""
        option_list = self.option_list
        keep = self.highlighted_id if option_list.has_focus and self.highlighted_id is not None else current_id
        empty = self.query_one(".empty", Static)
        if conversations:
            empty.display = False
        else:
            empty.display = True
            empty.update("No matches." if self.search_input.value.strip() else "No conversations yet.")
        option_list.clear_options()
        option_list.add_options(
            Option(Text(("★ " if conversation.starred else "") + show_controls(conversation.title), no_wrap=True,
                        overflow="ellipsis"), id=str(conversation.id))
            for conversation in conversations
        )
        self.highlight(keep)

    def highlight(self, conversation_id: int | None) -> None:
        option_list = self.option_list
        if conversation_id is None:
            option_list.highlighted = None
            return
        try:
            option_list.highlighted = option_list.get_option_index(str(conversation_id))
        except OptionDoesNotExist:  # the conversation is not in a filtered list
            option_list.highlighted = None

    @property
    def highlighted_id(self) -> int | None:
        option_list = self.option_list
        if option_list.highlighted is None:
            return None
        option = option_list.get_option_at_index(option_list.highlighted)
        return int(option.id) if option.id else None

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        if event.option.id:
            self.post_message(self.Selected(int(event.option.id)))

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.post_message(self.SearchChanged(event.value))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.option_list.focus()
