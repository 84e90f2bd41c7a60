"""Streaming on llama.cpp: chatty's backend against llama-cpp-python called directly."""

from __future__ import annotations

import time

from benchmarks.common import Record, median, ratio_record
from chatty.backends.base import GenerationParams, LoadOptions
from chatty.backends.base import available_cores
from chatty.backends.llama import LlamaBackend
from chatty.models.catalog import ModelCatalog

PROMPT = "Write a long story about a lighthouse keeper who learns to paint. Use many details."
N_CTX = 2048


def direct_run(llm, prompt_text: str, max_tokens: int) -> tuple[float, float, int]:
    """Generate greedily with llama-cpp-python's own generate(); returns (first-token seconds, decode tok/s, tokens)."""
    import llama_cpp

    llm.reset()
    started = time.perf_counter()
    prompt = llm.tokenize(prompt_text.encode("utf-8"), add_bos=False, special=True)
    first = None
    count = 0
    vocab = llm._model.vocab
    for token in llm.generate(prompt, temp=0.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
        if first is None:
            first = time.perf_counter()
        if llama_cpp.llama_vocab_is_eog(vocab, token):
            break
        llm.detokenize([token])
        count += 1
        if count >= max_tokens:
            break
    end = time.perf_counter()
    return first - started, (count - 1) / (end - first), count


def chatty_run(backend: LlamaBackend, messages: list[dict], max_tokens: int) -> tuple[float, float, int]:
    backend.llm.reset()
    started = time.perf_counter()
    generation = backend.generate(messages, GenerationParams(temperature=0.0, max_tokens=max_tokens))
    first = None
    for _ in generation:
        if first is None:
            first = time.perf_counter()
    stats = generation.stats
    return first - started, stats.tokens_per_second, stats.completion_tokens


def run(quick: bool, runs: int) -> list[Record]:
    import llama_cpp

    max_tokens = 32 if quick else 256
    model = ModelCatalog().default()
    threads = available_cores()
    backend = LlamaBackend(LoadOptions(n_ctx=N_CTX, threads=threads))
    backend.load(model)
    llm = llama_cpp.Llama(model_path=str(model.path), n_ctx=N_CTX, n_threads=threads, n_threads_batch=threads, verbose=False)
    messages = [{"role": "user", "content": PROMPT}]
    prompt_text = backend.render(messages).text

    chatty_speed, direct_speed, chatty_first, direct_first, counts = [], [], [], [], []
    for _ in range(runs):
        first, speed, count = chatty_run(backend, messages, max_tokens)
        chatty_first.append(first)
        chatty_speed.append(speed)
        counts.append(count)
        first, speed, _ = direct_run(llm, prompt_text, max_tokens)
        direct_first.append(first)
        direct_speed.append(speed)
    backend.close()
    llm.close()

    overhead_ms = [(c - d) * 1000 for c, d in zip(chatty_first, direct_first)]
    note = f"{median(counts):.0f} tokens greedy, {threads} threads, n_ctx {N_CTX}, KV cache reset before each run"
    return [
        Record("llama.cpp: chatty tokens/s", median(chatty_speed), "tok/s", chatty_speed, note=note),
        Record("llama.cpp: llama-cpp-python tokens/s", median(direct_speed), "tok/s", direct_speed, note=note),
        ratio_record("llama.cpp: chatty / llama-cpp-python tokens/s", chatty_speed, direct_speed, 0.97),
        Record("llama.cpp: time-to-first-token overhead", median(overhead_ms), "ms", overhead_ms, "≤ 10",
               median(overhead_ms) <= 10, "chatty renders the chat template and tokenizes segment by segment"),
    ]
