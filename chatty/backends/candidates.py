"""Next-token candidates: the model's distribution at each token of a reply, from its logits.

Both backends recompute a reply by teacher forcing: they run the prompt and the reply's tokens
through the model once and read the logits at every reply position. The probabilities are the
plain softmax of the logits (temperature 1, no top-p), so they describe the model itself, not
the sampling settings that produced the reply.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from chatty.backends.tokens import TokenPiece

if TYPE_CHECKING:
    import numpy as np

DEFAULT_TOP_K = 5
# Logits rows summarized together; the float64 work arrays take this many rows x vocabulary x 8 bytes each.
ROWS_PER_BLOCK = 32
# Entropy above which a position counts as low-confidence. 3 bits is the entropy of a uniform
# choice between 8 tokens; the value is a display threshold, not a property of any model.
HIGH_ENTROPY_BITS = 3.0


@dataclass(frozen=True)
class Candidate:
    """One possible next token and its probability."""

    id: int
    piece: str
    probability: float


@dataclass(frozen=True)
class TokenCandidates:
    """The next-token distribution at one reply position, and the token the reply has there."""

    position: int
    id: int
    piece: str
    probability: float
    # 1 when the reply's token was the most likely one.
    rank: int
    # Shannon entropy of the whole distribution, in bits.
    entropy: float
    # The k most likely tokens, most likely first.
    candidates: tuple[Candidate, ...]

    @property
    def uncertain(self) -> bool:
        return self.entropy > HIGH_ENTROPY_BITS


def candidates_from_logits(
    logits: np.ndarray,
    reply: list[TokenPiece],
    k: int,
    piece_of: Callable[[int], str],
) -> list[TokenCandidates]:
    """Summarize logits rows (one per reply token, shape (len(reply), vocabulary)) as candidates.

    Row i contains the logits that predict reply[i]. `piece_of` returns the text of a candidate id.
    NOTE: callers hold the whole reply's logits at once, reply tokens x vocabulary x 4 bytes (about
    200 MB for 1,000 tokens of a 49k vocabulary); only the float64 copies here are made per block.
    """
    if logits.shape[0] != len(reply):
        raise ValueError(f"got {logits.shape[0]} logits rows for {len(reply)} reply tokens")
    k = max(1, min(k, logits.shape[1]))
    results = []
    for first in range(0, len(reply), ROWS_PER_BLOCK):
        block = slice(first, first + ROWS_PER_BLOCK)
        results += _summarize_block(logits[block], reply[block], first, k, piece_of)
    return results


def _summarize_block(logits: np.ndarray, reply: list[TokenPiece], first_position: int, k: int,
                     piece_of: Callable[[int], str]) -> list[TokenCandidates]:
    import numpy as np

    # float64 keeps the sum of all probabilities within about 1e-12 of 1, so the top k never add up to more than 1.
    values = logits.astype(np.float64)
    shifted = values - values.max(axis=1, keepdims=True)
    log_probabilities = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    probabilities = np.exp(log_probabilities)
    terms = np.where(probabilities > 0, probabilities * log_probabilities, 0.0)
    entropies = -terms.sum(axis=1) / math.log(2)

    # argpartition finds the k largest in linear time; only those k are sorted.
    top = np.argpartition(-values, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(values, top, axis=1), axis=1, kind="stable")
    top = np.take_along_axis(top, order, axis=1)

    chosen = np.array([token.id for token in reply])
    chosen_values = values[np.arange(len(reply)), chosen]
    ranks = (values > chosen_values[:, None]).sum(axis=1) + 1

    results = []
    for row, token in enumerate(reply):
        candidates = tuple(
            Candidate(int(token_id), piece_of(int(token_id)), float(probabilities[row, token_id]))
            for token_id in top[row]
        )
        results.append(
            TokenCandidates(
                position=first_position + row,
                id=token.id,
                piece=token.piece,
                probability=float(probabilities[row, token.id]),
                rank=int(ranks[row]),
                entropy=float(entropies[row]),
                candidates=candidates,
            )
        )
    return results
