"""The llama.cpp backend (llama-cpp-python): GGUF models, quantized, on the CPU or a GPU."""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import os
import random
import time
from collections.abc import Iterator

from chatty.backends.base import Backend, Generation, GenerationParams, LoadOptions, Message, Clock
from chatty.backends.decoding import ByteDecoder
from chatty.errors import ContextOverflow, ModelError
from chatty.models.catalog import ModelInfo
from chatty.models.template import ChatTemplate, RenderedPrompt

log = logging.getLogger(__name__)
native_log = logging.getLogger("chatty.llama_cpp")

_log_callback = None  # keeps the ctypes callback alive for as long as llama.cpp may call it


def _route_native_logs() -> None:
    """Send llama.cpp's own log lines to chatty's log file instead of the terminal."""
    global _log_callback
    if _log_callback is not None:
        return
    import llama_cpp

    # ggml log levels: 1 debug, 2 info, 3 warning, 4 error, 5 continues the previous line.
    levels = {1: logging.DEBUG, 2: logging.DEBUG, 3: logging.WARNING, 4: logging.ERROR}
    previous = [logging.DEBUG]

    @llama_cpp.llama_log_callback
    def callback(level, text, user_data):
        python_level = previous[0] if level == 5 else levels.get(level, logging.DEBUG)
        previous[0] = python_level
        if not native_log.isEnabledFor(python_level):
            return
        line = text.decode("utf-8", errors="replace").rstrip()
        if line:
            native_log.log(python_level, "%s", line)

    _log_callback = callback
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no sched_getaffinity
        return os.cpu_count() or 1


class LlamaBackend(Backend):
    name = "llama"

    def __init__(self, options: LoadOptions | None = None):
        super().__init__(options)
        self._llm = None
        self._template: ChatTemplate | None = None
        self._bos_id: int | None = None
        self._add_bos = False

    def load(self, model: ModelInfo) -> None:
        if model.format != "gguf":
            raise ModelError(f"The llama backend runs GGUF files; {model.id} is a Hugging Face folder. Use --backend torch.")

        from chatty.models.gguf_info import read_gguf_info

        # Reading the header first turns a truncated or foreign file into a clear message.
        info = read_gguf_info(model.path)
        self.close()

        import llama_cpp

        _route_native_logs()
        threads = self.options.threads or default_threads()
        started = time.perf_counter()
        # verbose=True stops llama-cpp-python from redirecting file descriptors 1 and 2 while it
        # loads, which would swallow the TUI's output; its Python-level prints go to the log.
        stray_output = io.StringIO()
        try:
            with contextlib.redirect_stderr(stray_output), contextlib.redirect_stdout(stray_output):
                llm = llama_cpp.Llama(
                    model_path=str(model.path),
                    n_ctx=self.options.n_ctx,
                    n_threads=threads,
                    n_threads_batch=threads,
                    seed=random.randrange(2**31),
                    verbose=True,
                )
        except ValueError as error:
            raise ModelError(
                f"llama.cpp could not load {model.path} (architecture '{info.architecture}'): {error}. "
                "The architecture may be unsupported by this llama.cpp build; see the log for details."
            ) from None
        finally:
            if stray_output.getvalue():
                log.debug("llama-cpp-python output while loading:\n%s", stray_output.getvalue())
        llm.verbose = False

        vocab = llm._model
        self._bos_id = vocab.token_bos()
        self._add_bos = vocab.add_bos_token()
        self._template = ChatTemplate(
            info.chat_template,
            bos_token=_token_text(vocab, self._bos_id),
            eos_token=_token_text(vocab, vocab.token_eos()),
        )
        if info.chat_template is None:
            log.warning("%s has no chat template; using ChatML", model.path)
        self._llm = llm
        self.model = model
        log.info(
            "loaded %s on llama.cpp in %.2f s (n_ctx=%d, threads=%d)",
            model.path, time.perf_counter() - started, llm.n_ctx(), threads,
        )

    def close(self) -> None:
        if self._llm is not None:
            self._llm.close()
        self._llm = None
        self.model = None

    @property
    def llm(self):
        if self._llm is None:
            raise RuntimeError("no model is loaded")
        return self._llm

    @property
    def context_length(self) -> int:
        return self.llm.n_ctx()

    def render(self, messages: list[Message], add_generation_prompt: bool = True) -> RenderedPrompt:
        assert self._template is not None, "no model is loaded"
        return self._template.render(messages, add_generation_prompt)

    def tokenize_prompt(self, messages: list[Message], add_generation_prompt: bool = True) -> list[int]:
        rendered = self.render(messages, add_generation_prompt)
        tokens: list[int] = []
        for segment in rendered.segments:
            is_template = segment.kind == "template"
            tokens += self.llm.tokenize(segment.text.encode("utf-8"), add_bos=False, special=is_template)

        # Exactly one BOS: add it where the model wants one and the template did not write it.
        if self._add_bos and self._bos_id is not None and (not tokens or tokens[0] != self._bos_id):
            tokens.insert(0, self._bos_id)
        while len(tokens) > 1 and tokens[0] == self._bos_id and tokens[1] == self._bos_id:
            tokens.pop(0)
        return tokens

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def detokenize(self, token_ids: list[int]) -> str:
        pieces = b"".join(self.token_bytes(token_id) for token_id in token_ids)
        return pieces.decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int, special: bool = False) -> bytes:
        """Return a token's bytes; control tokens are empty unless `special` is set."""
        import llama_cpp

        # llama-cpp-python 0.3's own token_to_piece returns its whole 32-byte buffer, NULs included.
        size = 64
        while True:
            buffer = ctypes.create_string_buffer(size)
            length = llama_cpp.llama_token_to_piece(self.llm._model.vocab, token_id, buffer, size, 0, special)
            if length >= 0:
                return buffer.raw[:length]
            size = -length

    def is_end_of_generation(self, token_id: int) -> bool:
        import llama_cpp

        return bool(llama_cpp.llama_vocab_is_eog(self.llm._model.vocab, token_id))

    def _produce(self, generation: Generation, prompt: list[int], params: GenerationParams) -> Iterator[str]:
        llm = self.llm
        n_ctx = llm.n_ctx()
        if len(prompt) >= n_ctx:
            raise ContextOverflow(f"The prompt has {len(prompt)} tokens but the context window holds {n_ctx}.")

        llm.set_seed(params.seed if params.seed is not None else random.randrange(2**31))
        budget = min(params.max_tokens, n_ctx - len(prompt))
        decoder = ByteDecoder()
        clock = Clock()
        stop_reason = "max_tokens" if budget == params.max_tokens else "context"

        tokens = llm.generate(
            prompt,
            temp=params.temperature,
            top_p=params.top_p,
            top_k=0,
            min_p=0.0,
            typical_p=1.0,
            repeat_penalty=1.0,
        )
        try:
            for token in tokens:
                clock.token()
                if self.is_end_of_generation(token):
                    stop_reason = "eos"
                    break
                generation.token_ids.append(token)
                text = decoder.push(self.token_bytes(token))
                if text:
                    yield text
                if generation.cancelled:
                    stop_reason = "cancelled"
                    break
                if len(generation.token_ids) >= budget:
                    break
        finally:
            tokens.close()

        tail = decoder.flush()
        if tail:
            yield tail
        generation.stats = clock.stats(len(prompt), len(generation.token_ids), stop_reason)


def _token_text(vocab, token_id: int) -> str:
    if token_id < 0:
        return ""
    return vocab.token_get_text(token_id)
