"""The Backend interface that the TUI, the command line, the benchmarks and the fine-tune screen share.

A reply is a Generation: an iterator of text pieces, then a GenerationStats record with token
counts, speed and the stop reason. Backends import their heavy packages inside methods, so that
importing this package stays cheap.
"""

from __future__ import annotations

import os

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from chatty.backends.candidates import DEFAULT_TOP_K, TokenCandidates
from chatty.backends.tokens import TokenPiece
from chatty.models.adapters import AdapterInfo
from chatty.models.catalog import ModelInfo
from chatty.errors import ContextOverflow, ModelError
from chatty.models.template import RenderedPrompt

StopReason = Literal["eos", "max_tokens", "cancelled", "context"]
Message = dict  # {"role": "system" | "user" | "assistant", "content": str}


@dataclass(frozen=True)
class GenerationParams:
    """Sampling settings for one reply."""

    temperature: float = 0.2
    top_p: float = 0.9
    max_tokens: int = 1024
    seed: int | None = None


def available_cores() -> int:
    """Return the CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no sched_getaffinity
        return os.cpu_count() or 1


@dataclass(frozen=True)
class LoadOptions:
    """Settings that apply when a model is loaded."""

    n_ctx: int = 4096
    threads: int = 0
    dtype: str = "auto"
    # Where a backend may keep converted weights between runs; None disables such caching.
    cache_dir: Path | None = None
    # Ids of models allowed to run Python code of their own when they load (transformers' trust_remote_code).
    trust_remote_code: tuple[str, ...] = ()


@dataclass(frozen=True)
class GenerationStats:
    """The final record of one reply."""

    prompt_tokens: int
    completion_tokens: int
    prompt_seconds: float
    decode_seconds: float
    stop_reason: StopReason

    @property
    def tokens_per_second(self) -> float:
        """Decoding speed, excluding prompt processing."""
        if self.decode_seconds <= 0 or self.completion_tokens < 2:
            return 0.0
        # The first token comes out of prompt processing, so the decode time covers the rest.
        return (self.completion_tokens - 1) / self.decode_seconds


class Generation:
    """A reply in progress: iterate for text pieces; `stats` is set once iteration ends.

    `cancel()` may be called from any thread; the producer checks it before every token.
    """

    def __init__(self, producer: Callable[[Generation], Iterator[str]]):
        self._cancelled = threading.Event()
        self.stats: GenerationStats | None = None
        self.token_ids: list[int] = []
        self._pieces = producer(self)

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        self._cancelled.set()

    def __iter__(self) -> Iterator[str]:
        return self._pieces

    def text(self) -> str:
        """Consume the whole reply and return it."""
        return "".join(self._pieces)


class Clock:
    """Measures prompt time (until the first token) and decode time (after it)."""

    def __init__(self):
        self.start = time.perf_counter()
        self.first_token: float | None = None

    def token(self) -> None:
        if self.first_token is None:
            self.first_token = time.perf_counter()

    def stats(self, prompt_tokens: int, completion_tokens: int, stop_reason: StopReason) -> GenerationStats:
        end = time.perf_counter()
        first = self.first_token or end
        return GenerationStats(prompt_tokens, completion_tokens, first - self.start, end - first, stop_reason)


class Backend(ABC):
    """A runtime that loads one model at a time and streams replies from it."""

    name: ClassVar[str]

    def __init__(self, options: LoadOptions | None = None):
        self.options = options or LoadOptions()
        self.model: ModelInfo | None = None
        self.adapter: AdapterInfo | None = None
        self._active: Generation | None = None
        # Held while a reply streams; closing the model waits for it, so no thread reads freed memory.
        self.in_use = threading.Lock()

    @abstractmethod
    def load(self, model: ModelInfo) -> None:
        """Load a model, replacing any loaded one. Raises ModelError with the reason on failure."""

    @abstractmethod
    def close(self) -> None:
        """Free the model."""

    @property
    @abstractmethod
    def context_length(self) -> int:
        """The context window in tokens."""

    @abstractmethod
    def render(self, messages: list[Message], add_generation_prompt: bool = True) -> RenderedPrompt:
        """Apply the model's chat template."""

    @abstractmethod
    def tokenize_prompt(self, messages: list[Message], add_generation_prompt: bool = True) -> list[int]:
        """Tokenize a chat prompt: template text may yield special tokens, message contents never do."""

    @abstractmethod
    def tokenize(self, text: str) -> list[int]:
        """Tokenize plain text, with no special tokens and no BOS."""

    @abstractmethod
    def detokenize(self, token_ids: list[int]) -> str:
        """Decode token ids to text, leaving out special tokens."""

    @abstractmethod
    def _produce(self, generation: Generation, prompt: list[int], params: GenerationParams) -> Iterator[str]:
        """Yield the reply's text pieces and set generation.stats before returning."""

    def set_adapter(self, adapter: AdapterInfo | None) -> None:
        """Attach a LoRA adapter, replacing the current one, or detach with None, keeping the base loaded.

        Raises ModelError, with the base model left working and no adapter half attached, when the
        adapter does not fit the loaded model.
        """
        raise ModelError(f"The {self.name} backend does not support adapters yet.")

    @property
    def adapter_name(self) -> str | None:
        return self.adapter.name if self.adapter else None

    def count_tokens(self, messages: list[Message]) -> int:
        return len(self.tokenize_prompt(messages))

    def generate(self, messages: list[Message], params: GenerationParams) -> Generation:
        """Start a reply to the messages; tokenization happens here, on the caller's thread."""
        prompt = self.tokenize_prompt(messages)
        return self.generate_from_tokens(prompt, params)

    def generate_from_tokens(self, prompt: list[int], params: GenerationParams) -> Generation:
        def produce_while_in_use(generation: Generation) -> Iterator[str]:
            with self.in_use:
                yield from self._produce(generation, prompt, params)

        generation = Generation(produce_while_in_use)
        self._active = generation
        return generation

    def cancel(self) -> None:
        """Stop the reply in progress, if any, before its next token."""
        if self._active is not None:
            self._active.cancel()

    # Inspection: token pieces and next-token candidates

    def token_pieces(self, token_ids: list[int]) -> list[TokenPiece]:
        """Describe token ids as pieces with their bytes; special tokens keep their text."""
        raise ModelError(f"The {self.name} backend cannot show token pieces.")

    def token_candidates(self, messages: list[Message], reply_text: str, k: int = DEFAULT_TOP_K) -> list[TokenCandidates]:
        """Return the model's next-token distribution at every token of a reply, with the top k candidates.

        `messages` is the conversation before the reply. The reply text is tokenized as plain text
        after the prompt with the generation prompt, and the model reads the prompt followed by the
        reply's tokens (teacher forcing), so any saved reply works, whatever temperature produced it.
        The attached adapter, if any, takes part. Raises ContextOverflow when prompt and reply do not fit.
        NOTE: callers must not call this while a reply is streaming from the same backend.
        """
        raise ModelError(f"The {self.name} backend cannot compute next-token candidates.")

    def _teacher_forcing_tokens(self, messages: list[Message], reply_text: str) -> tuple[list[int], list[int]]:
        """Tokenize the prompt and the reply; raises ContextOverflow when the model cannot read both."""
        prompt = self.tokenize_prompt(messages)
        reply = self.tokenize(reply_text)
        # The last reply token is predicted, never read, so the model reads one token less.
        needed = len(prompt) + len(reply) - 1
        if reply and needed > self.context_length:
            raise ContextOverflow(
                f"The prompt and the reply need {needed} tokens but the context window is {self.context_length} tokens. "
                "Raise [model] n_ctx, or inspect a shorter conversation."
            )
        return prompt, reply
