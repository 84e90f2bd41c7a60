"""The LoRA training loop: PEFT on the base model, assistant-only loss, length-grouped batches.

One plain loop serves the TUI (in a child process, see process.py) and `chatty finetune` (in the
calling process, also under torchrun with several processes). It evaluates before the first step,
so "before vs after" comes free, reports through a callback, and writes the adapter at the end.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable

from chatty.errors import ChattyError
from chatty.finetune.batching import collate, length_grouped_batches, padding_fraction
from chatty.finetune.dataset import IGNORE_INDEX, Dataset, DatasetError, build_example, split_dataset
from chatty.finetune.job import Cancelled, DatasetReady, Evaluation, Finished, Progress, TrainingJob
from chatty.finetune.writer import write_adapter

log = logging.getLogger(__name__)

Report = Callable[[object], None]
WARMUP_FRACTION = 0.05
MAX_GRAD_NORM = 1.0


class Distributed:
    """Rank and world size under torchrun or accelerate launch; one process otherwise."""

    def __init__(self):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def train(job: TrainingJob, report: Report, should_stop: Callable[[], bool] = lambda: False) -> Finished:
    """Train a LoRA adapter for the job and write it; raises Cancelled when should_stop() turns true."""
    import torch

    distributed = Distributed()
    device = _device(distributed)
    if distributed.enabled and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    options = job.options
    torch.manual_seed(options.seed)

    model, tokenizer = _load_base(job, device)
    dataset = _build_dataset(job, tokenizer)
    peft_model = _wrap_with_lora(model, job)
    trainable = [parameter for parameter in peft_model.parameters() if parameter.requires_grad]

    batches_per_epoch = math.ceil(len(dataset.train) / options.batch_size)
    # Every rank must take the same number of optimizer steps, or the gradient all-reduce hangs.
    steps_per_epoch = max(1, batches_per_epoch // (options.gradient_accumulation * distributed.world_size))
    total_steps = steps_per_epoch * options.epochs
    report(DatasetReady(len(dataset.train), len(dataset.validation), dataset.truncated, dataset.trainable_tokens, total_steps))

    optimizer = torch.optim.AdamW(trainable, lr=options.learning_rate, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(total_steps))
    training_model = peft_model
    if distributed.enabled:
        device_ids = [distributed.local_rank] if device.startswith("cuda") else None
        training_model = torch.nn.parallel.DistributedDataParallel(peft_model, device_ids=device_ids)

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    losses: list[dict] = []
    validation_losses: list[dict] = []
    before = evaluate(peft_model, dataset, pad_id, device, options.batch_size)
    if before is not None:
        validation_losses.append({"step": 0, "loss": before})
        report(Evaluation(0, before))

    started = time.perf_counter()
    trained_tokens = 0
    step = 0
    padding = []
    for epoch in range(options.epochs):
        batches = length_grouped_batches(dataset.train, options.batch_size, options.seed + epoch)
        padding.append(padding_fraction(batches))
        groups = _accumulation_groups(batches, options.gradient_accumulation, distributed, steps_per_epoch)
        peft_model.train()
        for group in groups:
            if should_stop():
                raise Cancelled()
            loss, tokens = _optimizer_step(training_model, optimizer, trainable, group, pad_id, device)
            scheduler.step()
            step += 1
            trained_tokens += tokens * distributed.world_size
            losses.append({"step": step, "loss": loss})
            elapsed = time.perf_counter() - started
            report(Progress(
                step=step,
                total_steps=total_steps,
                epoch=step / steps_per_epoch,
                loss=loss,
                learning_rate=scheduler.get_last_lr()[0],
                tokens_per_second=trained_tokens / elapsed if elapsed > 0 else 0.0,
                trained_tokens=trained_tokens,
                eta_seconds=elapsed / step * (total_steps - step),
                peak_memory_mb=_peak_memory_mb(device),
            ))
        after = evaluate(peft_model, dataset, pad_id, device, options.batch_size)
        if after is not None:
            validation_losses.append({"step": step, "loss": after})
            report(Evaluation(step, after))

    metadata = {
        "losses": {"train": losses, "validation": validation_losses},
        "validation_loss_before": before,
        "validation_loss_after": validation_losses[-1]["loss"] if before is not None else None,
        "examples": {"train": len(dataset.train), "validation": len(dataset.validation), "truncated": dataset.truncated},
        "trained_tokens": trained_tokens,
        "train_seconds": round(time.perf_counter() - started, 2),
        "padding_fraction": round(sum(padding) / len(padding), 4),
        "world_size": distributed.world_size,
    }
    finished = None
    if distributed.is_main:
        finished = write_adapter(peft_model, tokenizer, job, metadata)
    if distributed.enabled:
        torch.distributed.barrier()
    return finished


def _device(distributed: Distributed) -> str:
    from chatty.backends.torch_loading import choose_device

    device = choose_device()
    if device == "cuda" and distributed.enabled:
        return f"cuda:{distributed.local_rank}"
    return device


def _load_base(job: TrainingJob, device: str):
    """Load the base model for training: full precision, or 4-bit NF4 for QLoRA on CUDA."""
    from chatty.backends.torch_loading import choose_dtype, load_model

    cache_root = job.cache_dir / "torch" if job.cache_dir is not None else None
    if job.options.qlora:
        return _load_quantized_base(job, device, cache_root)
    loaded = load_model(job.base, device, choose_dtype(job.dtype, device.split(":")[0]), cache_root)
    model = loaded.model
    model.config.use_cache = False
    if job.options.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return model, loaded.tokenizer


def check_qlora_possible() -> None:
    """Raise ChattyError with the reason when QLoRA cannot run here: it needs CUDA and bitsandbytes."""
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        raise ChattyError(
            "QLoRA needs a CUDA GPU: bitsandbytes' 4-bit NF4 kernels run only on CUDA, and this machine has none. "
            "Turn qlora off to train the full-precision base."
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ChattyError("QLoRA needs the bitsandbytes package. Install it with: pip install bitsandbytes")


def _load_quantized_base(job: TrainingJob, device: str, cache_root):
    """QLoRA: the base in 4-bit NF4 through bitsandbytes, which needs CUDA kernels.

    NOTE: this path has not run on this project's CI, which has no GPU.
    """
    check_qlora_possible()
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from chatty.backends.torch_loading import load_model

    if job.base.format == "gguf" and cache_root is None:
        raise ChattyError("QLoRA on a GGUF base needs chatty's cache folder, where the dequantized weights are written.")
    # The safetensors form of the base: the folder itself, or the cache written from its GGUF.
    loaded = load_model(job.base, "cpu", torch.float32, cache_root)
    folder = job.base.path if job.base.format == "hf" else cache_root / job.base.file_hash()
    del loaded
    quantization = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_use_double_quant=True
    )
    model = AutoModelForCausalLM.from_pretrained(
        folder, quantization_config=quantization, device_map={"": device}, local_files_only=True, trust_remote_code=False
    )
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=job.options.gradient_checkpointing)
    from transformers import AutoTokenizer

    return model, AutoTokenizer.from_pretrained(folder, local_files_only=True)


def _build_dataset(job: TrainingJob, tokenizer) -> Dataset:
    from chatty.models.template import ChatTemplate

    template = ChatTemplate(tokenizer.chat_template, tokenizer.bos_token or "", tokenizer.eos_token or "")
    add_bos = _adds_bos(tokenizer)
    examples = []
    for messages, source in zip(job.conversations, job.sources):
        examples.append(build_example(
            tokenizer, template, messages, job.options.max_seq_length, source,
            bos_id=tokenizer.bos_token_id if add_bos else None,
        ))
    if not examples:
        raise DatasetError("No conversations were selected for training.")
    return split_dataset(examples, job.options.validation_fraction, job.options.seed)


def _adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts BOS in front of plain text, as the chat backends also check."""
    if tokenizer.bos_token_id is None:
        return False
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(probe) and probe[0] == tokenizer.bos_token_id


def _wrap_with_lora(model, job: TrainingJob):
    from peft import LoraConfig, get_peft_model

    options = job.options
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [module for module in options.target_modules if module not in present]
    if missing:
        raise ChattyError(
            f"target_modules {', '.join(missing)} not found in {job.base.id}. "
            f"Its linear layers include: {', '.join(sorted(m for m in present if m.endswith('proj'))) or 'none named *_proj'}."
        )
    config = LoraConfig(
        r=options.rank,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules=list(options.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def _schedule(total_steps: int) -> Callable[[int], float]:
    """Linear warmup over the first WARMUP_FRACTION of steps, then a cosine decay to a tenth."""
    warmup = max(1, int(total_steps * WARMUP_FRACTION))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _accumulation_groups(batches, accumulation: int, distributed: Distributed, steps: int):
    """Deal batches to this rank and group them into optimizer steps; every rank gets `steps` groups."""
    mine = batches[distributed.rank :: distributed.world_size]
    groups = [mine[start : start + accumulation] for start in range(0, len(mine), accumulation)]
    return [group for group in groups if group][:steps]


def _optimizer_step(model, optimizer, trainable, group, pad_id: int, device: str) -> tuple[float, int]:
    """Run one optimizer step over a group of micro-batches; returns (mean loss per target token, real tokens)."""
    import torch

    target_tokens = sum(example.trainable_tokens for batch in group for example in batch)
    real_tokens = sum(len(example) for batch in group for example in batch)
    total_loss = 0.0
    for batch in group:
        input_ids, attention_mask, labels = collate(batch, pad_id, device)
        # The loss is summed, then divided by the group's target count, so every assistant token
        # has the same weight in whichever batch it falls.
        loss = summed_target_loss(model, input_ids, attention_mask, labels) / max(1, target_tokens)
        loss.backward()
        total_loss += loss.item()
    torch.nn.utils.clip_grad_norm_(trainable, MAX_GRAD_NORM)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total_loss, real_tokens


def summed_target_loss(model, input_ids, attention_mask, labels):
    """Return the cross-entropy summed over the assistant targets of a padded batch.

    Position t predicts token t + 1. The language-model head is a vocabulary-wide matmul, and its
    logits are the largest activation. Where the model accepts a tensor `logits_to_keep`, the head
    therefore runs only at positions where some row has a target. System and user turns and the
    padding tail then cost no head compute and no logits memory.
    """
    import torch

    targets = labels[:, 1:]
    if _keeps_positions(model):
        positions = (targets != IGNORE_INDEX).any(dim=0).nonzero().flatten()
        logits = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=positions).logits
        targets = targets[:, positions]
    else:
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
    return torch.nn.functional.cross_entropy(
        logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )


def _keeps_positions(model) -> bool:
    """Check whether the causal LM under PEFT (and DDP) takes a `logits_to_keep` argument."""
    import inspect

    inner = getattr(model, "module", model)
    base = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def evaluate(model, dataset: Dataset, pad_id: int, device: str, batch_size: int) -> float | None:
    """Return the mean loss per assistant token on the validation set, or None without one."""
    import torch

    if not dataset.validation:
        return None
    model.eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for batch in length_grouped_batches(dataset.validation, batch_size, seed=0):
            input_ids, attention_mask, labels = collate(batch, pad_id, device)
            total += summed_target_loss(model, input_ids, attention_mask, labels).item()
            count += sum(example.trainable_tokens for example in batch)
    model.train()
    return total / max(1, count)


def _peak_memory_mb(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    # ru_maxrss is in kilobytes on Linux; it covers the whole process, weights included.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
