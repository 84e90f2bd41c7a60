"""Token pieces: what each token id of a tokenized text stands for, as bytes and as text to show."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TokenPiece:
    """One token: its id, its own bytes, and whether it is a special (control) token.

    A special token's bytes are its text, such as b"<|im_start|>". A byte-level tokenizer may
    split one UTF-8 character over two or three tokens, so a token's bytes need not be valid UTF-8.
    """

    id: int
    data: bytes
    special: bool = False

    @property
    def piece(self) -> str:
        """The token's text; bytes that do not form whole UTF-8 characters appear as <0xEC> escapes."""
        return bytes_to_piece(self.data)


def bytes_to_piece(data: bytes) -> str:
    """Decode UTF-8 bytes, writing every byte of an incomplete or invalid sequence as <0xHH>."""
    parts = []
    while data:
        try:
            parts.append(data.decode("utf-8"))
            break
        except UnicodeDecodeError as error:
            parts.append(data[: error.start].decode("utf-8"))
            parts.append("".join(f"<0x{byte:02X}>" for byte in data[error.start : error.end]))
            data = data[error.end :]
    return "".join(parts)


def joined_text(pieces: list[TokenPiece]) -> str:
    """Decode the tokens together, so characters split over several tokens come out whole."""
    return b"".join(piece.data for piece in pieces).decode("utf-8", errors="replace")
