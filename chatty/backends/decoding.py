"""Incremental decoding: turn one token at a time into text without breaking characters.

A token can end in the middle of a multi-byte UTF-8 character (many emoji and CJK characters span
two or three byte-level tokens). Both decoders hold such a tail back until the character completes,
so the joined pieces equal decoding all ids at once, and U+FFFD appears only where the model
itself produced invalid bytes.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable


class ByteDecoder:
    """Decodes a stream of per-token byte pieces, as llama.cpp's token_to_piece returns them."""

    def __init__(self):
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, piece: bytes) -> str:
        return self._decoder.decode(piece)

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


class TokenDecoder:
    """Decodes a growing list of token ids with a tokenizer's batch decode function.

    Decoding only a window of recent ids keeps each step cheap. The window starts a few tokens
    back (the prefix) because SentencePiece-style tokenizers drop a leading space when a piece is
    decoded alone, so the new text is the difference between decoding the window with and without
    the newest ids.
    """

    def __init__(self, decode: Callable[[list[int]], str], prefix_tokens: int = 5):
        self._decode = decode
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0
        self._prefix_tokens = prefix_tokens

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full_text = self._decode(self._ids[self._prefix_offset :])
        if full_text.endswith("\ufffd") or len(full_text) <= len(prefix_text):
            # An incomplete character or a token with no text yet: wait for more ids.
            return ""
        new_text = full_text[len(prefix_text) :]
        self._read_offset = len(self._ids)
        self._prefix_offset = max(0, self._read_offset - self._prefix_tokens)
        return new_text

    def flush(self) -> str:
        """Return any text held back, including a U+FFFD the model really produced at the end."""
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full_text = self._decode(self._ids[self._prefix_offset :])
        self._read_offset = len(self._ids)
        return full_text[len(prefix_text) :]
