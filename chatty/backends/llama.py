"""The llama.cpp backend (llama-cpp-python): GGUF models, quantized, on the CPU or a GPU."""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from chatty.backends.base import Backend, Clock, Generation, GenerationParams, LoadOptions, Message, available_cores
from chatty.backends.candidates import DEFAULT_TOP_K, TokenCandidates, candidates_from_logits
from chatty.backends.decoding import ByteDecoder
from chatty.backends.tokens import TokenPiece, bytes_to_piece
from chatty.errors import ContextOverflow, ModelError
from chatty.models.adapters import GGUF_FILE, AdapterInfo
from chatty.models.catalog import ModelInfo
from chatty.models.template import ChatTemplate, RenderedPrompt

log = logging.getLogger(__name__)
native_log = logging.getLogger("chatty.llama_cpp")

_log_callback = None  # keeps the ctypes callback alive for as long as llama.cpp may call it
_pending_interrupt = False  # a Ctrl+C that arrived inside the log callback
# Error lines that llama.cpp logs while a thread loads a model; its Python binding raises only
# "Failed to load model from file", so the reason comes from here.
_load_errors = threading.local()
# The part of llama.cpp's error line that gives the reason a model failed to load.
_LOAD_ERROR_PREFIX = "error loading model: "


def _raise_pending_interrupt() -> None:
    global _pending_interrupt
    if _pending_interrupt:
        _pending_interrupt = False
        raise KeyboardInterrupt


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
        global _pending_interrupt
        try:
            python_level = previous[0] if level == 5 else levels.get(level, logging.DEBUG)
            previous[0] = python_level
            errors = getattr(_load_errors, "lines", None)
            if python_level >= logging.ERROR and errors is not None:
                errors.append(text.decode("utf-8", errors="replace").strip())
            if not native_log.isEnabledFor(python_level):
                return
            line = text.decode("utf-8", errors="replace").rstrip()
            if line:
                native_log.log(python_level, "%s", line)
        except KeyboardInterrupt:
            # An exception cannot cross the C caller, so ctypes would drop it; Ctrl+C is raised
            # again once the llama.cpp call returns.
            _pending_interrupt = True

    _log_callback = callback
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))


def _load_failure(path: Path, architecture: str, native_errors: list[str], error: Exception) -> ModelError:
    """Describe a failed load with the reason that llama.cpp logged, which names an unknown architecture."""
    reasons = [line.split(_LOAD_ERROR_PREFIX, 1)[1] for line in native_errors if _LOAD_ERROR_PREFIX in line]
    reason = reasons[0].rstrip(".") if reasons else str(error).rstrip(".")
    if "unknown model architecture" in reason:
        import llama_cpp

        return ModelError(
            f"llama.cpp cannot run {path}: its architecture '{architecture}' is unknown to this build "
            f"(llama-cpp-python {llama_cpp.__version__}). Choose a model of another architecture, or update llama-cpp-python."
        )
    return ModelError(f"llama.cpp could not load {path} (architecture '{architecture}'): {reason}. See the log for details.")


class LlamaBackend(Backend):
    name = "llama"

    def __init__(self, options: LoadOptions | None = None):
        super().__init__(options)
        self._llm = None
        self._template: ChatTemplate | None = None
        self._bos_id: int | None = None
        self._add_bos = False
        # LoRA GGUF path -> (file size and mtime, llama_adapter_lora handle), freed in close().
        self._lora_handles: dict[Path, tuple[tuple[int, int], object]] = {}

    def load(self, model: ModelInfo) -> None:
        if model.format != "gguf":
            raise ModelError(f"The llama backend runs GGUF files; {model.id} is a Hugging Face folder. Use --backend torch.")

        from chatty.models.gguf_info import read_gguf_info

        # Reading the header first turns a truncated or foreign file into a clear message.
        info = read_gguf_info(model.path)
        self.close()

        import llama_cpp

        _route_native_logs()
        threads = self.options.threads or available_cores()
        started = time.perf_counter()
        # verbose=True stops llama-cpp-python from redirecting file descriptors 1 and 2 while it
        # loads, which would swallow the TUI's output; its Python-level prints go to the log.
        stray_output = io.StringIO()
        _load_errors.lines = []
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
            _raise_pending_interrupt()
            if "llama_context" in str(error):
                raise ModelError(
                    f"llama.cpp could not create a context of {self.options.n_ctx or 'the training'} tokens for {model.id}: "
                    f"{error}. The KV cache may not fit in memory; lower [model] n_ctx."
                ) from None
            raise _load_failure(model.path, info.architecture, _load_errors.lines, error) from None
        finally:
            _load_errors.lines = None
            if stray_output.getvalue():
                log.debug("llama-cpp-python output while loading:\n%s", stray_output.getvalue())
        _raise_pending_interrupt()
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
            self._free_adapters()
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

    def set_adapter(self, adapter: AdapterInfo | None) -> None:
        """Attach the adapter's LoRA GGUF to the loaded model, or detach the current one when `adapter` is None.

        The base model stays loaded. Handles stay cached by path, so switching back to an adapter
        does not read its file again.
        NOTE: callers must not switch while a reply is streaming, because switching clears the KV cache
        that the reply is using.
        """
        llm = self.llm
        if adapter is None:
            if self.adapter is not None:
                self._apply_lora(None)
                log.info("detached adapter %s from %s", self.adapter.name, self.model.id)
            self.adapter = None
            return

        started = time.perf_counter()
        adapter.check_fits(self.model)
        path = adapter.gguf_path
        if path is None:
            raise ModelError(
                f"Adapter '{adapter.name}' has no {GGUF_FILE}, which the llama backend needs. "
                f"Convert it with `python -m chatty.finetune.gguf_lora {adapter.path}`, or use --backend torch."
            )
        handle, stale = self._lora_handle(adapter, path, llm)
        self._apply_lora(handle)
        self.adapter = adapter
        if stale is not None:
            # The file changed since it was read, and the old handle is detached now, so it can be freed.
            import llama_cpp

            llama_cpp.llama_adapter_lora_free(stale)
        log.info("attached adapter %s to %s in %.3f s", adapter.name, self.model.id, time.perf_counter() - started)

    def _lora_handle(self, adapter: AdapterInfo, path: Path, llm):
        """Return the llama_adapter_lora for a LoRA GGUF and the stale handle it replaces, if any.

        The file is read only when it is not cached or changed since it was read.
        """
        import llama_cpp

        path = path.resolve()
        stat = path.stat()
        version = (stat.st_size, stat.st_mtime_ns)
        cached = self._lora_handles.get(path)
        if cached is not None and cached[0] == version:
            return cached[1], None

        handle = llama_cpp.llama_adapter_lora_init(llm._model.model, str(path).encode("utf-8"))
        # The binding returns a NULL pointer, which is falsy, when llama.cpp rejects the file.
        if not handle:
            log.error("llama.cpp rejected adapter %s for %s", path, self.model.path)
            raise ModelError(
                f"Adapter '{adapter.name}' ({path}) does not fit the loaded model {self.model.id}: "
                f"{_lora_mismatch(path, self.model.path)}. Convert the adapter again for {self.model.id}, "
                "or load the model it was made for."
            )
        self._lora_handles[path] = (version, handle)
        return handle, cached[1] if cached is not None else None

    def _apply_lora(self, handle) -> None:
        """Set the context's adapters to `handle` alone, or to none, and drop the cached prompt state."""
        import llama_cpp

        llm = self.llm
        if handle is None:
            status = llama_cpp.llama_set_adapters_lora(llm._ctx.ctx, None, 0, None)
        else:
            handles = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(handle)
            scales = (ctypes.c_float * 1)(1.0)
            status = llama_cpp.llama_set_adapters_lora(llm._ctx.ctx, handles, 1, scales)
        if status != 0:
            raise ModelError(f"llama.cpp failed to set the adapter on {self.model.id} (status {status}). The log contains llama.cpp's reason.")

        # The KV cache contains keys and values computed with the previous weights. reset() also stops
        # llama-cpp-python's generate() from reusing a cached prompt prefix.
        llm._ctx.kv_cache_clear()
        llm.reset()

    def _free_adapters(self) -> None:
        """Detach and free every cached adapter handle, which must happen before llama.cpp frees the model."""
        import llama_cpp

        if self._lora_handles:
            llama_cpp.llama_set_adapters_lora(self.llm._ctx.ctx, None, 0, None)
        for _, handle in self._lora_handles.values():
            llama_cpp.llama_adapter_lora_free(handle)
        self._lora_handles.clear()
        self.adapter = None

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

    # Inspection: token pieces and next-token candidates

    def token_pieces(self, token_ids: list[int]) -> list[TokenPiece]:
        import llama_cpp

        model = self.llm._model
        pieces = []
        for token_id in token_ids:
            special = bool(model.token_get_attr(token_id) & llama_cpp.LLAMA_TOKEN_ATTR_CONTROL)
            pieces.append(TokenPiece(token_id, self.token_bytes(token_id, special=True), special))
        return pieces

    def token_candidates(self, messages: list[Message], reply_text: str, k: int = DEFAULT_TOP_K) -> list[TokenCandidates]:
        prompt, reply_ids = self._teacher_forcing_tokens(messages, reply_text)
        if not reply_ids:
            return []
        started = time.perf_counter()
        logits = self._reply_logits(prompt, reply_ids)
        reply = self.token_pieces(reply_ids)
        results = candidates_from_logits(logits, reply, k, lambda token_id: bytes_to_piece(self.token_bytes(token_id, special=True)))
        log.info("computed candidates for %d reply tokens after %d prompt tokens on llama.cpp in %.2f s",
                 len(reply_ids), len(prompt), time.perf_counter() - started)
        return results

    def _reply_logits(self, prompt: list[int], reply: list[int]):
        """Decode prompt + reply[:-1] and return the logits rows that predict each reply token.

        The decoding repeats what generation does: the prompt in batches with logits for its last
        token, then one reply token per llama_decode call. A single batch with logits at every reply
        position was tried first: with llama-cpp-python 0.3.36 on a CPU and SmolLM2-135M Q4_1, its
        logits were up to 1.2 away from this order's (0.16 on average). As a result, 3 or 4 tokens
        of a 100-token greedy reply were no longer the most likely, while this order matched every
        greedy choice. The cause lies in llama.cpp's CPU
        kernels and was not pinned down. Llama.eval() cannot serve here, because it keeps logits for
        all positions only when the model was created with logits_all=True, which would make every
        generation copy a vocabulary row per prompt token.

        The KV cache and Llama's record of it (input_ids, n_tokens) stay in step, so the next
        generate() reuses the common prefix as usual.
        """
        import numpy as np

        llm = self.llm
        tokens = prompt + reply[:-1]
        # Logits at position i predict token i + 1, so the first reply token comes from the last prompt position.
        first_output = len(prompt) - 1

        # Keep the cached prefix that matches, but decode again at least the last two prompt tokens.
        # Generation decoded the end of its prompt as a batch of several tokens, and a prompt token
        # decoded alone gets slightly different keys and values than one decoded in a batch.
        cached = llm.input_ids[: llm.n_tokens].tolist()
        common = 0
        for old, new in zip(cached, tokens):
            if old != new:
                break
            common += 1
        start = max(0, min(common, first_output - 1))
        if not llm._ctx.kv_cache_seq_rm(-1, start, -1):
            llm._ctx.kv_cache_clear()
            start = 0
        llm.n_tokens = start
        # Afterwards llama.cpp's logits belong to the second-to-last position, not to the last token
        # of input_ids, so generate() must decode at least one token before it samples.
        llm._requires_eval = True

        n_vocab = llm.n_vocab()
        rows = []
        for chunk_start in range(start, first_output + 1, llm.n_batch):
            chunk = tokens[chunk_start : min(chunk_start + llm.n_batch, first_output + 1)]
            self._decode_chunk(chunk, chunk_start, wants_logits=chunk_start + len(chunk) - 1 == first_output)
        rows.append(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(1, n_vocab)).copy())
        for position in range(first_output + 1, len(tokens)):
            self._decode_chunk(tokens[position : position + 1], position, wants_logits=True)
            rows.append(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(1, n_vocab)).copy())
        return np.concatenate(rows)

    def _decode_chunk(self, chunk: list[int], start: int, wants_logits: bool) -> None:
        """Decode tokens at positions start, start + 1, ... of sequence 0, with logits for the last one if asked."""
        llm = self.llm
        batch = llm._batch.batch
        for offset, token in enumerate(chunk):
            batch.token[offset] = token
            batch.pos[offset] = start + offset
            batch.n_seq_id[offset] = 1
            batch.seq_id[offset][0] = 0
            batch.logits[offset] = False
        batch.logits[len(chunk) - 1] = wants_logits
        batch.n_tokens = len(chunk)
        llm._ctx.decode(llm._batch)
        llm.input_ids[start : start + len(chunk)] = chunk
        llm.n_tokens = start + len(chunk)


def _token_text(vocab, token_id: int) -> str:
    if token_id < 0:
        return ""
    return vocab.token_get_text(token_id)


def _lora_mismatch(adapter_path: Path, model_path: Path) -> str:
    """Describe the first way a LoRA GGUF does not match a model's GGUF, for an error message."""
    from chatty.models.gguf_info import read_gguf_info

    adapter = read_gguf_info(adapter_path)
    model = read_gguf_info(model_path)
    if adapter.metadata.get("general.type") != "adapter" or adapter.metadata.get("adapter.type") != "lora":
        return "it is not a LoRA adapter GGUF"
    if adapter.architecture != model.architecture:
        return f"it is for the '{adapter.architecture}' architecture, but the model is '{model.architecture}'"
    model_shapes = {tensor.name: tensor.shape for tensor in model.tensors}
    for tensor in adapter.tensors:
        base_name, _, part = tensor.name.rpartition(".")
        base_shape = model_shapes.get(base_name)
        if base_shape is None:
            return f"the model has no tensor {base_name}"
        # GGUF dimension order: lora_a is (in_features, rank), lora_b is (rank, out_features).
        fits = tensor.shape[0] == base_shape[0] if part == "lora_a" else tensor.shape[-1] == base_shape[-1]
        if not fits:
            return f"its {tensor.name} has shape {tensor.shape}, but the model's {base_name} has shape {base_shape}"
    return "llama.cpp rejected it, and the log contains the reason"
