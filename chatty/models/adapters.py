"""LoRA adapters: folders in the adapters folder, with PEFT files, chatty's metadata and a LoRA GGUF.

An adapter folder holds:
- adapter_config.json and adapter_model.safetensors, as PEFT's save_pretrained writes them;
- adapter.gguf, the same LoRA for llama.cpp (written by chatty's converter);
- chatty_adapter.json, chatty's metadata: the base model it was trained on (id and SHA-256 of the
  weights file), hyperparameters, source conversations, losses and the date.

Training writes those files into a hidden staging folder, .partial-NAME-PID-RANDOM, and renames it
to NAME when all of them are written. A staging folder whose process is gone is a leftover of a
killed run, and the catalog removes such folders whenever it scans.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from chatty.errors import ModelError
from chatty.models.catalog import ModelInfo

log = logging.getLogger(__name__)

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
GGUF_FILE = "adapter.gguf"
METADATA_FILE = "chatty_adapter.json"
PICKLE_WEIGHTS = ("adapter_model.bin", "adapter_model.pt", "adapter_model.pth")
STAGING_PREFIX = ".partial-"
# CPython's tempfile.mkdtemp draws its random suffix from letters, digits and "_", never "-", so the
# last number between dashes is the PID.
_STAGING_NAME = re.compile(r"^\.partial-.*-(\d+)-[^-]+$")


@dataclass
class AdapterInfo:
    """An adapter folder and what chatty knows about it."""

    name: str
    path: Path
    peft_config: dict
    metadata: dict = field(default_factory=dict)

    @property
    def base_model_id(self) -> str | None:
        return self.metadata.get("base_model", {}).get("id")

    @property
    def base_model_hash(self) -> str | None:
        return self.metadata.get("base_model", {}).get("sha256")

    @property
    def rank(self) -> int | None:
        return self.peft_config.get("r")

    @property
    def alpha(self) -> float | None:
        return self.peft_config.get("lora_alpha")

    @property
    def target_modules(self) -> list[str]:
        modules = self.peft_config.get("target_modules") or []
        return [modules] if isinstance(modules, str) else list(modules)

    @property
    def gguf_path(self) -> Path | None:
        path = self.path / GGUF_FILE
        return path if path.is_file() else None

    @property
    def backends(self) -> tuple[str, ...]:
        """Backends that can attach this adapter: torch through PEFT, llama through its LoRA GGUF."""
        return ("llama", "torch") if self.gguf_path else ("torch",)

    def fits(self, model: ModelInfo) -> bool:
        """Whether the adapter was trained on this base model: by weights hash when recorded, else by id.

        An adapter without chatty's metadata (made by another tool) records no base, so it counts as
        fitting; the backends then reject it if its tensor shapes do not match the loaded model.
        """
        if self.base_model_hash:
            return self.base_model_hash == model.file_hash()
        if self.base_model_id:
            return self.base_model_id == model.id
        return True

    def check_fits(self, model: ModelInfo) -> None:
        """Raise ModelError naming both models when the adapter was trained on another base."""
        if not self.fits(model):
            base = self.base_model_id or "an unknown base model"
            raise ModelError(
                f"Adapter '{self.name}' was trained on {base}, not on the loaded model {model.id}. "
                f"Load {base} first, or pick an adapter made for {model.id}."
            )


def read_adapter(path: Path) -> AdapterInfo:
    """Read an adapter folder; raises ModelError when it is not a usable PEFT LoRA adapter."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise ModelError(f"Adapter folder not found: {path}.")
    config_file = path / PEFT_CONFIG
    if not config_file.is_file():
        raise ModelError(f"{path} has no {PEFT_CONFIG}, so it is not a PEFT adapter folder.")
    try:
        peft_config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ModelError(f"{config_file} cannot be read: {error}.") from None
    if not isinstance(peft_config, dict):
        raise ModelError(f"{config_file} must contain a JSON object.")
    peft_type = peft_config.get("peft_type", "LORA")
    if peft_type != "LORA":
        raise ModelError(f"{path} is a {peft_type} adapter; chatty supports LoRA adapters only.")
    if not (path / PEFT_WEIGHTS).is_file():
        pickles = [name for name in PICKLE_WEIGHTS if (path / name).exists()]
        if pickles:
            raise ModelError(
                f"{path / pickles[0]} is a pickle file, which can run code when loaded, so chatty does not load it. "
                f"Convert the adapter to {PEFT_WEIGHTS} (safetensors) first."
            )
        raise ModelError(f"{path} has no {PEFT_WEIGHTS}.")

    metadata: dict = {}
    metadata_file = path / METADATA_FILE
    if metadata_file.is_file():
        try:
            metadata = json.loads(metadata_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as error:
            log.warning("ignored unreadable adapter metadata %s: %s", metadata_file, error)
    return AdapterInfo(name=path.name, path=path, peft_config=peft_config, metadata=metadata)


def write_metadata(path: Path, metadata: dict) -> None:
    (Path(path) / METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def base_model_record(model: ModelInfo) -> dict:
    """Return the metadata entry that ties an adapter to its base model."""
    return {"id": model.id, "sha256": model.file_hash(), "file": model.name, "format": model.format}


class AdapterCatalog:
    """The adapters in the adapters folder, by name."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        # (path, reason) for folders that could not be used, from the last call to adapters().
        self.skipped: list[tuple[Path, str]] = []

    def adapters(self) -> list[AdapterInfo]:
        found = []
        self.skipped = []
        if not self.folder.is_dir():
            return found
        remove_stale_staging(self.folder)
        for candidate in sorted(self.folder.iterdir()):
            # Folders starting with "." are temporary folders of a training run in progress.
            if not candidate.is_dir() or candidate.name.startswith("."):
                continue
            try:
                found.append(read_adapter(candidate))
            except ModelError as error:
                log.warning("skipped adapter %s: %s", candidate, error)
                self.skipped.append((candidate, str(error)))
        return found

    def for_model(self, model: ModelInfo) -> list[AdapterInfo]:
        return [adapter for adapter in self.adapters() if adapter.fits(model)]

    def resolve(self, reference: str) -> AdapterInfo:
        """Return the adapter named `reference` in the adapters folder, or at that path."""
        candidate = self.folder / reference
        if candidate.is_dir():
            return read_adapter(candidate)
        path = Path(reference).expanduser()
        if path.is_dir():
            return read_adapter(path)
        known = ", ".join(adapter.name for adapter in self.adapters()) or "none yet"
        raise ModelError(f"Adapter '{reference}' not found in {self.folder}. Known adapters: {known}.")


def remove_stale_staging(adapters_dir: Path) -> list[Path]:
    """Delete staging folders left by training processes that no longer run; returns them.

    NOTE: liveness is checked by PID on this machine only. A folder whose PID was reused by another
    process stays until that process ends, and a run writing to a shared adapters folder from
    another machine or PID namespace would lose its staging folder.
    """
    removed = []
    if not adapters_dir.is_dir():
        return removed
    for folder in adapters_dir.iterdir():
        match = _STAGING_NAME.match(folder.name)
        if not match or not folder.is_dir() or _process_alive(int(match[1])):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
        log.info("removed %s, left by an interrupted training run", folder)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
