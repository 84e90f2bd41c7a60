"""The PyTorch backend (transformers + PEFT): Hugging Face folders and GGUF files at full precision, with LoRA adapters."""

from __future__ import annotations

import inspect
import logging
import re
import time
from collections.abc import Iterator
from functools import lru_cache

from chatty.backends.base import Backend, Clock, Generation, GenerationParams, LoadOptions, Message
from chatty.backends.candidates import DEFAULT_TOP_K, TokenCandidates, candidates_from_logits
from chatty.backends.decoding import TokenDecoder
from chatty.backends.torch_adapters import AdapterSlots
from chatty.backends.torch_loading import choose_device, choose_dtype, load_model
from chatty.backends.tokens import TokenPiece, bytes_to_piece
from chatty.backends.torch_sampling import TokenSampler
from chatty.errors import ContextOverflow, ModelError
from chatty.models.adapters import AdapterInfo
from chatty.models.catalog import ModelInfo
from chatty.models.template import ChatTemplate, RenderedPrompt

log = logging.getLogger(__name__)

# Context window used when n_ctx is 0 and the model config has no max_position_embeddings.
FALLBACK_CONTEXT_LENGTH = 4096


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, options: LoadOptions | None = None):
        super().__init__(options)
        self._model = None
        self._tokenizer = None
        self._template: ChatTemplate | None = None
        self._device = "cpu"
        self._bos_id: int | None = None
        self._add_bos = False
        self._stop_ids: frozenset[int] = frozenset()
        self._keeps_last_logits = False
        self._cache_argument = "past_key_values"
        self._adapters: AdapterSlots | None = None
        # Whether the last GGUF load read the safetensors cache; None when no cache was involved.
        self.cache_hit: bool | None = None

    def load(self, model: ModelInfo) -> None:
        import torch

        device = choose_device()
        dtype = choose_dtype(self.options.dtype, device)
        cache_root = self.options.cache_dir / "torch" if self.options.cache_dir is not None else None
        self.close()
        if self.options.threads:
            torch.set_num_threads(self.options.threads)

        started = time.perf_counter()
        loaded = load_model(model, device, dtype, cache_root, trust_remote_code=model.id in self.options.trust_remote_code)
        tokenizer = loaded.tokenizer

        self._bos_id = tokenizer.bos_token_id
        self._add_bos = _adds_bos(tokenizer)
        self._template = ChatTemplate(
            tokenizer.chat_template,
            bos_token=tokenizer.bos_token or "",
            eos_token=tokenizer.eos_token or "",
        )
        if tokenizer.chat_template is None:
            log.warning("%s has no chat template; using ChatML", model.path)
        self._stop_ids = _stop_ids(loaded.generation_config, tokenizer)
        # Computing logits for the last position only saves a (prompt x vocabulary) matrix at prefill.
        parameters = inspect.signature(loaded.model.forward).parameters
        self._keeps_last_logits = "logits_to_keep" in parameters
        # transformers 5.25 takes `cache` and warns on `past_key_values`; 4.x takes only `past_key_values`.
        self._cache_argument = "cache" if "cache" in parameters else "past_key_values"
        self._model = loaded.model
        self._tokenizer = tokenizer
        self._device = device
        self._adapters = AdapterSlots(loaded.model, device)
        self.model = model

        self.cache_hit = loaded.cache_hit
        cache = {None: "off", True: "hit", False: "miss"}[loaded.cache_hit]
        if model.format == "hf":
            cache = "not used"
        log.info(
            "loaded %s on torch in %.2f s (device=%s, dtype=%s, threads=%d, cache %s, context=%d)",
            model.path, time.perf_counter() - started, device, str(dtype).removeprefix("torch."),
            torch.get_num_threads(), cache, self.context_length,
        )

    def close(self) -> None:
        if self._model is not None and self._device == "cuda":
            import torch

            # Drop the last references first, so the cached blocks can be returned to the driver.
            self._model = None
            self._adapters = None
            torch.cuda.empty_cache()
        self._model = None
        self._tokenizer = None
        self._template = None
        self._adapters = None
        self.model = None
        self.adapter = None

    @property
    def torch_model(self):
        """The loaded transformers model, with any attached LoRA layers in place."""
        if self._model is None:
            raise RuntimeError("no model is loaded")
        return self._model

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            raise RuntimeError("no model is loaded")
        return self._tokenizer

    @property
    def device(self) -> str:
        return self._device

    @property
    def context_length(self) -> int:
        """The n_ctx option, capped at the model's max_position_embeddings, or that maximum when n_ctx is 0."""
        maximum = getattr(self.torch_model.config, "max_position_embeddings", None)
        requested = self.options.n_ctx
        if requested and maximum:
            return min(requested, maximum)
        return requested or maximum or FALLBACK_CONTEXT_LENGTH

    def render(self, messages: list[Message], add_generation_prompt: bool = True) -> RenderedPrompt:
        assert self._template is not None, "no model is loaded"
        return self._template.render(messages, add_generation_prompt)

    def tokenize_prompt(self, messages: list[Message], add_generation_prompt: bool = True) -> list[int]:
        rendered = self.render(messages, add_generation_prompt)
        tokens: list[int] = []
        for segment in rendered.segments:
            if segment.kind == "template":
                tokens += self.tokenizer(segment.text, add_special_tokens=False)["input_ids"]
            else:
                tokens += self.tokenize(segment.text)

        # Exactly one BOS: add it where the tokenizer wants one and the template did not write it.
        if self._add_bos and self._bos_id is not None and (not tokens or tokens[0] != self._bos_id):
            tokens.insert(0, self._bos_id)
        while len(tokens) > 1 and tokens[0] == self._bos_id and tokens[1] == self._bos_id:
            tokens.pop(0)
        return tokens

    def tokenize(self, text: str) -> list[int]:
        # split_special_tokens keeps a string such as "<|im_end|>" in a message as plain text, not the special token.
        return self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def detokenize(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    def set_adapter(self, adapter: AdapterInfo | None) -> None:
        if self._adapters is None or self.model is None:
            raise ModelError("Load a model before attaching an adapter.")
        if adapter is not None:
            adapter.check_fits(self.model)
        self._adapters.activate(adapter, self.model)
        self.adapter = adapter

    def _produce(self, generation: Generation, prompt: list[int], params: GenerationParams) -> Iterator[str]:
        import torch

        n_ctx = self.context_length
        if len(prompt) >= n_ctx:
            raise ContextOverflow(
                f"The prompt has {len(prompt)} tokens but the context window is {n_ctx} tokens. "
                "Start a new conversation or load the model with a larger n_ctx."
            )

        budget = min(params.max_tokens, n_ctx - len(prompt))
        stop_reason = "max_tokens" if budget == params.max_tokens else "context"
        sampler = TokenSampler(params, self._device)
        decoder = TokenDecoder(self.detokenize)
        clock = Clock()

        input_ids = torch.tensor([prompt], device=self._device)
        cache = None
        while len(generation.token_ids) < budget:
            if generation.cancelled:
                stop_reason = "cancelled"
                break
            next_id, cache = self._step(input_ids, cache, sampler)
            # .item() waits for the device; the id is needed now to stop at EOS and to stream text.
            token = next_id.item()
            clock.token()
            if token in self._stop_ids:
                stop_reason = "eos"
                break
            generation.token_ids.append(token)
            text = decoder.push(token)
            if text:
                yield text
            input_ids = next_id.view(1, 1)

        tail = decoder.flush()
        if tail:
            yield tail
        generation.stats = clock.stats(len(prompt), len(generation.token_ids), stop_reason)

    def _step(self, input_ids, cache, sampler: TokenSampler):
        """Run one forward pass and pick the next token; returns the id tensor and the KV cache.

        Only the forward pass runs under inference_mode: a `with` block around the generator's
        yields would leave inference mode switched on in the consumer's code between tokens.
        """
        import torch

        arguments = {self._cache_argument: cache, "use_cache": True}
        if self._keeps_last_logits:
            arguments["logits_to_keep"] = 1
        with torch.inference_mode():
            output = self.torch_model(input_ids=input_ids, **arguments)
            cache = getattr(output, self._cache_argument, None)
            if cache is None:
                # NOTE: the loop assumes a key-value cache object; state-space models such as Mamba
                # keep their state elsewhere and would need model.generate().
                raise ModelError(f"{self.model.id} returns no key-value cache, so the torch backend cannot stream from it.")
            return sampler(output.logits[0, -1]), cache

    # Inspection: token pieces and next-token candidates

    def token_pieces(self, token_ids: list[int]) -> list[TokenPiece]:
        specials = self._special_ids()
        return [TokenPiece(token_id, self._token_bytes(token_id, specials), token_id in specials) for token_id in token_ids]

    def token_candidates(self, messages: list[Message], reply_text: str, k: int = DEFAULT_TOP_K) -> list[TokenCandidates]:
        import torch

        prompt, reply_ids = self._teacher_forcing_tokens(messages, reply_text)
        if not reply_ids:
            return []
        started = time.perf_counter()

        # Logits at position i predict token i + 1, so the last len(reply_ids) positions predict the reply.
        input_ids = torch.tensor([prompt + reply_ids[:-1]], device=self._device)
        arguments = {"use_cache": False}
        if self._keeps_last_logits:
            arguments["logits_to_keep"] = len(reply_ids)
        # The model object carries any attached LoRA layers, so the adapter shapes these logits too.
        with torch.inference_mode():
            logits = self.torch_model(input_ids=input_ids, **arguments).logits[0, -len(reply_ids) :]
        rows = logits.float().cpu().numpy()

        specials = self._special_ids()
        reply = self.token_pieces(reply_ids)
        results = candidates_from_logits(rows, reply, k, lambda token_id: bytes_to_piece(self._token_bytes(token_id, specials)))
        log.info("computed candidates for %d reply tokens after %d prompt tokens on torch in %.2f s",
                 len(reply_ids), len(prompt), time.perf_counter() - started)
        return results

    def _special_ids(self) -> set[int]:
        tokenizer = self.tokenizer
        added = {token_id for token_id, token in tokenizer.added_tokens_decoder.items() if token.special}
        return added | set(tokenizer.all_special_ids)

    def _token_bytes(self, token_id: int, specials: set[int]) -> bytes:
        """Return the bytes a token stands for, reading the tokenizer's vocabulary entry.

        tokenizer.decode([id]) cannot serve here, because it turns a token that contains part of a
        UTF-8 character into U+FFFD.
        """
        tokenizer = self.tokenizer
        token = tokenizer.convert_ids_to_tokens(token_id)
        if token is None:
            return tokenizer.decode([token_id]).encode("utf-8")
        if token_id in specials:
            return token.encode("utf-8")

        # Byte-level BPE (GPT-2, Llama 3, SmolLM) spells each byte as one printable character.
        if _is_byte_level(tokenizer):
            byte_values = _byte_values()
            if all(character in byte_values for character in token):
                return bytes(byte_values[character] for character in token)
        # SentencePiece writes a byte-fallback token as <0xHH> and a space as U+2581.
        match = _BYTE_TOKEN.fullmatch(token)
        if match:
            return bytes([int(match[1], 16)])
        if "\u2581" in token:
            return token.replace("\u2581", " ").encode("utf-8")
        return tokenizer.convert_tokens_to_string([token]).encode("utf-8")


def _adds_bos(tokenizer) -> bool:
    """Return True when the tokenizer puts a BOS in front of text that it encodes with special tokens."""
    if tokenizer.bos_token_id is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def _stop_ids(generation_config, tokenizer) -> frozenset[int]:
    """Return the EOS and end-of-turn ids: the generation config may list several."""
    configured = generation_config.eos_token_id
    if configured is None:
        configured = []
    elif isinstance(configured, int):
        configured = [configured]
    ids = set(configured)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return frozenset(ids)


_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _is_byte_level(tokenizer) -> bool:
    from tokenizers import decoders

    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and isinstance(backend.decoder, decoders.ByteLevel)


@lru_cache(maxsize=1)
def _byte_values() -> dict[str, int]:
    """Return the byte-level BPE alphabet: printable character -> the byte it stands for."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {character: byte for byte, character in bytes_to_unicode().items()}
