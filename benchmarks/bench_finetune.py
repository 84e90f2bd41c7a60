"""Fine-tuning throughput: chatty's trainer against the Hugging Face Trainer with PEFT.

Both train the same LoRA on the same tokenized conversations (chatty's masks), model, sequence
length, batch size and number of steps, each in a fresh process so peak memory is its own. The
baseline pads every batch to its longest sequence, as the Trainer's default collator does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from benchmarks.common import Record, median, ratio_record

BATCH_SIZE = 4

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import torch
from chatty.backends.torch_loading import load_model
from chatty.config import FinetuneConfig
from chatty.finetune.dataset import build_example
from chatty.models.catalog import ModelCatalog
from chatty.models.template import ChatTemplate
from benchmarks.bench_finetune import conversations

mode, steps, cache = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
torch.manual_seed(0)
model_info = ModelCatalog().default()
options = FinetuneConfig(epochs=1, validation_fraction=0.0, batch_size=4, max_seq_length=512)
data = conversations(steps * 4)

if mode == "chatty":
    from chatty.finetune.job import TrainingJob
    from chatty.finetune.trainer import train
    out = Path(sys.argv[4])
    job = TrainingJob("bench", model_info, data, [str(i) for i in range(len(data))], options, out, cache)
    finished = train(job, lambda event: None)
    seconds = finished.metadata["train_seconds"]
    tokens = finished.metadata["trained_tokens"]
    padding = finished.metadata["padding_fraction"]
else:
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments
    loaded = load_model(model_info, "cpu", torch.float32, cache / "torch")
    tokenizer = loaded.tokenizer
    template = ChatTemplate(tokenizer.chat_template, tokenizer.bos_token, tokenizer.eos_token)
    examples = [build_example(tokenizer, template, m, 512, str(i)) for i, m in enumerate(data)]
    rows = [{"input_ids": e.input_ids, "attention_mask": [1] * len(e), "labels": e.labels} for e in examples]
    model = loaded.model
    model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(r=options.rank, lora_alpha=options.alpha, lora_dropout=options.dropout,
                                             target_modules=options.target_modules, task_type="CAUSAL_LM"))
    arguments = TrainingArguments(output_dir=sys.argv[4], per_device_train_batch_size=4, max_steps=steps,
                                  learning_rate=options.learning_rate, report_to=[], save_strategy="no",
                                  logging_strategy="no", use_cpu=True, seed=0, dataloader_num_workers=0)
    collator = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100)
    trainer = Trainer(model=model, args=arguments, train_dataset=rows, data_collator=collator)
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    tokens = sum(len(e) for e in examples)
    padding = None
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": seconds, "tokens": tokens, "peak_mb": peak, "padding": padding}))
"""


def conversations(count: int) -> list[list[dict]]:
    """Conversations whose replies range from a few words to a few hundred tokens, as real chats do."""
    words = "the river carries light across the valley while birds rest on warm stones".split()
    data = []
    for index in range(count):
        length = 8 + (index * 37) % 220
        reply = " ".join(words[(index + k) % len(words)] for k in range(length))
        data.append([{"role": "user", "content": f"Describe scene number {index}."},
                     {"role": "assistant", "content": reply.capitalize() + "."}])
    return data


def _child(mode: str, steps: int, cache: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="chatty-bench-train-") as output:
        result = subprocess.run([sys.executable, "-c", CHILD, mode, str(steps), cache, output], capture_output=True,
                                text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if result.returncode != 0:
        raise RuntimeError(f"{mode} training failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def run(quick: bool, runs: int, cache_dir) -> list[Record]:
    steps = 2 if quick else 12
    repeats = 1 if quick else max(1, runs // 2)
    chatty_speed, baseline_speed, chatty_peak, baseline_peak, padding = [], [], [], [], []
    for _ in range(repeats):
        mine = _child("chatty", steps, str(cache_dir))
        theirs = _child("baseline", steps, str(cache_dir))
        chatty_speed.append(mine["tokens"] / mine["seconds"])
        baseline_speed.append(theirs["tokens"] / theirs["seconds"])
        chatty_peak.append(mine["peak_mb"])
        baseline_peak.append(theirs["peak_mb"])
        padding.append(mine["padding"])
    note = f"{steps} steps of {BATCH_SIZE} conversations, LoRA r=8 on all linear layers, float32 on the CPU"
    return [
        Record("Fine-tuning: chatty trained tokens/s", median(chatty_speed), "tok/s", chatty_speed,
               note=f"{note}; {median(padding) * 100:.1f}% padding after grouping by length"),
        Record("Fine-tuning: HF Trainer + PEFT tokens/s", median(baseline_speed), "tok/s", baseline_speed,
               note=note + "; batches padded to their longest sequence"),
        ratio_record("Fine-tuning: chatty / HF Trainer real tokens/s", chatty_speed, baseline_speed, 1.3),
        Record("Fine-tuning: chatty peak memory (RSS)", median(chatty_peak), "MB", chatty_peak),
        Record("Fine-tuning: HF Trainer peak memory (RSS)", median(baseline_peak), "MB", baseline_peak),
        ratio_record("Fine-tuning: chatty / HF Trainer peak memory", chatty_peak, baseline_peak, 1.0,
                     higher_is_better=False),
    ]
