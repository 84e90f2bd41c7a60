"""Text safety for terminals: control characters in model output must never reach a terminal raw."""

from __future__ import annotations

import re

# C0 controls except tab and newline, DEL, C1 controls (U+0080 to U+009F), which some terminals
# treat as escape sequence introducers, and the bidirectional embeddings, overrides and isolates
# (U+202A to U+202E, U+2066 to U+2069), which can make text display in another order than it reads.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def escape_controls(text: str) -> str:
    """Replace control characters with visible escapes such as \\x1b or \\u202e, keeping newlines and tabs."""
    return _CONTROL.sub(_escape, text)


def _escape(match: re.Match) -> str:
    code = ord(match[0])
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def _control_picture(code: int) -> str:
    """Return one visible character for a control character: its control picture, else U+FFFD."""
    if code < 0x20:
        return chr(0x2400 + code)
    if code == 0x7F:
        return "\u2421"
    return "\ufffd"


def show_controls(text: str) -> str:
    """Replace control characters with their Unicode control pictures (␛ for ESC), for the TUI."""

    def picture(match: re.Match) -> str:
        code = ord(match[0])
        return f"<U+{code:04X}>" if code > 0xFF else _control_picture(code)

    return _CONTROL.sub(picture, text)


def show_controls_in_place(text: str) -> str:
    """Replace each control character with one visible character, so every other character keeps its index.

    Text areas need this: their cursor and selection are character positions in the unchanged text.
    C0 controls and DEL get their control pictures; C1 controls and bidi characters get U+FFFD.
    """
    return _CONTROL.sub(lambda match: _control_picture(ord(match[0])), text)


def code_blocks(markdown: str) -> list[tuple[str, str]]:
    """Return (language, code) for every fenced or indented code block in Markdown text."""
    from markdown_it import MarkdownIt

    blocks = []
    for token in MarkdownIt("commonmark").parse(markdown):
        if token.type in ("fence", "code_block"):
            language = token.info.strip().split(" ")[0] if token.info else ""
            blocks.append((language, token.content))
    return blocks
