"""Writing a trained adapter: PEFT files, chatty's metadata and the LoRA GGUF, all or nothing.

The adapter is written into a hidden staging folder in the adapters folder and renamed into place
at the end, so a cancel, a crash or a kill never leaves a half-written adapter where chatty looks
for adapters. Staging folders whose process is gone are removed by the next training run and by
every scan of the adapter catalog (see chatty.models.adapters.remove_stale_staging).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from chatty import __version__
from chatty.errors import ChattyError, ModelError
from chatty.finetune.job import Finished, TrainingJob
from chatty.models.adapters import GGUF_FILE, STAGING_PREFIX, base_model_record, write_metadata

log = logging.getLogger(__name__)

_VALID_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_adapter_name(name: str, adapters_dir: Path) -> None:
    """Raise ChattyError for a name that is not a plain folder name or that is taken."""
    if not _VALID_NAME.match(name):
        raise ChattyError(
            f"Adapter name '{name}' is invalid. Use up to 64 letters, digits, '.', '_' or '-', starting with a letter or digit."
        )
    if (adapters_dir / name).exists():
        raise ChattyError(f"Adapter '{name}' already exists in {adapters_dir}. Choose another name or delete it first.")


def write_adapter(peft_model, tokenizer, job: TrainingJob, training_metadata: dict) -> Finished:
    """Write the adapter folder for a finished training run and return where it is."""
    adapters_dir = job.adapters_dir
    adapters_dir.mkdir(parents=True, exist_ok=True)
    check_adapter_name(job.name, adapters_dir)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{job.name}-{os.getpid()}-", dir=adapters_dir))
    try:
        peft_model.save_pretrained(staging, safe_serialization=True)
        metadata = {
            "name": job.name,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "chatty_version": __version__,
            "base_model": base_model_record(job.base),
            "hyperparameters": asdict(job.options),
            "conversation_ids": job.conversation_ids,
            "sources": job.sources,
            **training_metadata,
        }
        metadata["gguf"] = _convert(staging, job)
        write_metadata(staging, metadata)

        # The rename is the commit point: the adapter appears whole or not at all.
        target = adapters_dir / job.name
        if target.exists():
            raise ChattyError(f"Adapter '{job.name}' appeared in {adapters_dir} while training. The new one was not saved.")
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("wrote adapter %s to %s", job.name, target)
    return Finished(target, metadata)


def _convert(staging: Path, job: TrainingJob) -> dict:
    """Convert to LoRA GGUF for llama.cpp; a refusal leaves a torch-only adapter and records why."""
    from chatty.finetune.gguf_lora import convert_peft_to_gguf

    try:
        convert_peft_to_gguf(staging, staging / GGUF_FILE, base=job.base)
    except ModelError as error:
        log.warning("adapter %s has no LoRA GGUF: %s", job.name, error)
        return {"written": False, "reason": str(error)}
    return {"written": True, "file": GGUF_FILE}
