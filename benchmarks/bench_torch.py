"""Streaming on PyTorch: chatty's backend against plain transformers generate(), and model loading."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.common import Record, median, ratio_record
from chatty.backends.base import GenerationParams, LoadOptions
from chatty.models.catalog import ModelCatalog

PROMPT = "Write a long story about a lighthouse keeper who learns to paint. Use many details."


def generate_run(backend, prompt_ids: list[int], max_tokens: int) -> tuple[float, int]:
    """Plain model.generate(), greedy, no streamer; returns (tok/s over the whole call, tokens)."""
    import torch

    model = backend.torch_model
    tokenizer = backend.tokenizer
    input_ids = torch.tensor([prompt_ids], device=backend.device)
    started = time.perf_counter()
    with torch.inference_mode():
        output = model.generate(
            input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=max_tokens, do_sample=False,
            eos_token_id=list(backend._stop_ids), pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
        )
    seconds = time.perf_counter() - started
    new_tokens = output.shape[1] - input_ids.shape[1]
    return new_tokens / seconds, new_tokens


def chatty_run(backend, messages: list[dict], max_tokens: int) -> tuple[float, int]:
    started = time.perf_counter()
    generation = backend.generate(messages, GenerationParams(temperature=0.0, max_tokens=max_tokens))
    for _ in generation:
        pass
    seconds = time.perf_counter() - started
    # generate() stops before an end-of-turn token and counts it; chatty counts only shown tokens.
    return generation.stats.completion_tokens / seconds, generation.stats.completion_tokens


def load_times(model, runs: int) -> tuple[list[float], list[float]]:
    """Cold loads convert the GGUF into an empty cache; warm loads read the cached safetensors."""
    from chatty.backends.torch import TorchBackend

    cold, warm = [], []
    for _ in range(runs):
        cache = Path(tempfile.mkdtemp(prefix="chatty-bench-cache-"))
        try:
            for times in (cold, warm):
                backend = TorchBackend(LoadOptions(cache_dir=cache))
                started = time.perf_counter()
                backend.load(model)
                times.append(time.perf_counter() - started)
                backend.close()
        finally:
            shutil.rmtree(cache, ignore_errors=True)
    return cold, warm


def run(quick: bool, runs: int, cache_dir: Path) -> list[Record]:
    import torch

    from chatty.backends.torch import TorchBackend

    max_tokens = 16 if quick else 128
    model = ModelCatalog().default()
    backend = TorchBackend(LoadOptions(n_ctx=2048, cache_dir=cache_dir))
    backend.load(model)
    messages = [{"role": "user", "content": PROMPT}]
    prompt_ids = backend.tokenize_prompt(messages)

    records = []
    default_threads = torch.get_num_threads()
    for threads in sorted({1, default_threads}):
        torch.set_num_threads(threads)
        chatty_speed, generate_speed, counts = [], [], []
        for _ in range(runs):
            speed, count = chatty_run(backend, messages, max_tokens)
            chatty_speed.append(speed)
            counts.append(count)
            speed, _ = generate_run(backend, prompt_ids, max_tokens)
            generate_speed.append(speed)
        note = f"{median(counts):.0f} tokens greedy, {threads} torch threads, float32 on {backend.device}, prefill included"
        records += [
            Record(f"PyTorch ({threads} threads): chatty tokens/s", median(chatty_speed), "tok/s", chatty_speed, note=note),
            Record(f"PyTorch ({threads} threads): generate() tokens/s", median(generate_speed), "tok/s", generate_speed, note=note),
            ratio_record(f"PyTorch ({threads} threads): chatty / generate() tokens/s", chatty_speed, generate_speed, 1.0),
        ]
    torch.set_num_threads(default_threads)
    backend.close()

    cold, warm = load_times(model, 1 if quick else max(2, runs // 2))
    records += [
        Record("PyTorch model load, cold (GGUF conversion + cache write)", median(cold), "s", cold),
        Record("PyTorch model load, warm (cached safetensors)", median(warm), "s", warm),
        ratio_record("PyTorch model load: cold / warm", cold, warm, None),
    ]
    return records
