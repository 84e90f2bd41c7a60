"""Loading models for the PyTorch backend: device and dtype choice, Hugging Face folders, GGUF files.

transformers dequantizes a GGUF file into dense weights, which takes seconds even for a small model,
so the first load writes a safetensors copy into the cache folder and later loads read that copy.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from chatty.errors import ModelError
from chatty.models.catalog import TORCH_GGUF_ARCHITECTURES, ModelInfo

log = logging.getLogger(__name__)

DTYPE_NAMES = ("auto", "float32", "bfloat16", "float16")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
CACHE_WEIGHTS = "model.safetensors"
# Age after which a temporary cache folder counts as left behind by a crash rather than being written.
STALE_STAGING_SECONDS = 3600


@dataclass
class LoadedModel:
    """A causal language model with its tokenizer and generation config, ready on its device."""

    model: object  # transformers.PreTrainedModel
    tokenizer: object  # transformers tokenizer
    generation_config: object  # transformers.GenerationConfig
    cache_hit: bool | None  # None when the model needs no cache (a Hugging Face folder) or caching is off


def choose_device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def choose_dtype(name: str, device: str):
    """Return the torch dtype for a dtype option; "auto" means bfloat16 on CUDA and float32 elsewhere."""
    import torch

    if name == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    if name not in DTYPE_NAMES:
        raise ModelError(f"Unknown dtype '{name}'. Use one of: {', '.join(DTYPE_NAMES)}.")
    return getattr(torch, name)


def load_model(model: ModelInfo, device: str, dtype, cache_root: Path | None, trust_remote_code: bool = False) -> LoadedModel:
    """Load a Hugging Face folder, or a GGUF file through the safetensors cache when there is one.

    trust_remote_code lets a Hugging Face folder run the Python code it ships; callers set it only
    for models the user listed in [model] trust_remote_code.
    """
    route_library_logs()
    if model.format == "hf":
        if trust_remote_code:
            log.warning("loading %s with trust_remote_code: its own Python code runs", model.path)
        else:
            reject_remote_code(model)
        return _load_folder(model.path, device, dtype, cache_hit=None, trust_remote_code=trust_remote_code)

    if "torch" not in model.backends:
        raise ModelError(
            f"The torch backend cannot run {model.path}: transformers reads GGUF files of the architectures "
            f"{', '.join(sorted(TORCH_GGUF_ARCHITECTURES))}, not '{model.architecture}'. Try --backend llama."
        )
    if cache_root is None:
        loaded = _load_gguf(model.path)
        _move(loaded.model, device, dtype)
        return loaded

    cache = cache_root / model.file_hash()
    if (cache / CACHE_WEIGHTS).is_file():
        try:
            return _load_folder(cache, device, dtype, cache_hit=True)
        except ModelError as error:
            log.warning("discarded the unreadable torch cache %s: %s", cache, error)
            shutil.rmtree(cache, ignore_errors=True)
    elif cache.exists():
        # chatty renames only complete caches into place, so this folder came from elsewhere.
        log.warning("discarded the torch cache %s, which has no %s", cache, CACHE_WEIGHTS)
        shutil.rmtree(cache, ignore_errors=True)
    _remove_stale_staging(cache)

    loaded = _load_gguf(model.path)
    try:
        write_cache(loaded, cache)
    except (OSError, ValueError, TypeError) as error:
        log.warning("failed to write the torch cache %s, so the next load converts %s again: %s", cache, model.path, error)
    loaded.cache_hit = False
    _move(loaded.model, device, dtype)
    return loaded


def reject_remote_code(model: ModelInfo) -> None:
    """Raise ModelError when a folder loads only through the Python code it ships, which the user has not allowed.

    A config.json whose auto_map names classes in the folder's own .py files ships such code. When
    its model_type is one that transformers defines, transformers loads its own class and the
    shipped code stays unused, so the folder loads without it.
    """
    from transformers import CONFIG_MAPPING

    try:
        config = json.loads((model.path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelError(f"{model.path / 'config.json'} cannot be read: {error}.") from None
    auto_map = config.get("auto_map") if isinstance(config, dict) else None
    if not isinstance(auto_map, dict) or not auto_map or config.get("model_type") in CONFIG_MAPPING:
        return
    raise ModelError(
        f"{model.path} loads only through the Python code it ships ({', '.join(_code_files(auto_map))}), and chatty runs such code "
        f"only for models listed in [model] trust_remote_code. Read that code, then add \"{model.id}\" to "
        "trust_remote_code under [model] in config.toml to run it."
    )


def _code_files(auto_map: dict) -> list[str]:
    """Return the module files that auto_map references such as "modeling_x.XForCausalLM" point to."""
    references = []
    for value in auto_map.values():
        references += value if isinstance(value, list) else [value]
    # A reference may name code in another repository as "owner/repo--module.Class".
    return sorted({str(reference).split("--")[-1].split(".")[0] + ".py" for reference in references if reference})


def reject_pickle_weights(folder: Path) -> None:
    """Raise ModelError when a folder's weights exist only as pickle files, which can run code when loaded."""
    if any(folder.glob("*.safetensors")):
        return
    pickles = sorted(path.name for path in folder.iterdir() if path.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise ModelError(
            f"{folder / pickles[0]} is a pickle file, which can run code when loaded, so chatty does not load it. "
            "Convert the weights to safetensors first, for example with transformers' "
            "save_pretrained(folder, safe_serialization=True) on a machine where you trust the file."
        )
    raise ModelError(f"{folder} contains no .safetensors weights.")


def _load_folder(folder: Path, device: str, dtype, cache_hit: bool | None, trust_remote_code: bool = False) -> LoadedModel:
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reject_pickle_weights(folder)
    with _captured_output("loading " + str(folder)):
        try:
            model = AutoModelForCausalLM.from_pretrained(
                folder,
                dtype=dtype,
                device_map=device,
                use_safetensors=True,
                trust_remote_code=trust_remote_code,
                local_files_only=True,
            )
            tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code, local_files_only=True)
        except (OSError, ValueError, KeyError, RuntimeError, TypeError, SafetensorError) as error:
            raise ModelError(f"transformers could not load {folder}: {_reason(error)}") from None
    model.eval()
    return LoadedModel(model, tokenizer, model.generation_config, cache_hit)


def _load_gguf(path: Path) -> LoadedModel:
    """Dequantize a GGUF file into float32 on the CPU, the precision in which the cache stores it.

    NOTE: float32 takes 4 bytes per parameter, so a 7B model needs about 28 GB of RAM here, even when
    it then runs in bfloat16 on a GPU.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GgufConfig

    with _captured_output("converting " + str(path)):
        try:
            # Every GGUF read parses the whole vocabulary (seconds), so the config is read once and passed on.
            config = AutoConfig.from_pretrained(path.parent, gguf_file=str(path), local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(
                path.parent,
                gguf_file=str(path),
                config=config,
                # dequantize=True requests plain dense weights even where packed GGUF kernels exist.
                quantization_config=GgufConfig(dequantize=True),
                dtype=torch.float32,
                trust_remote_code=False,
                local_files_only=True,
            )
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=str(path), local_files_only=True)
        except (OSError, ValueError, KeyError, RuntimeError, TypeError) as error:
            raise ModelError(f"transformers could not load {path}: {_reason(error)}") from None
    model.eval()
    return LoadedModel(model, tokenizer, model.generation_config, cache_hit=None)


def write_cache(loaded: LoadedModel, cache: Path) -> None:
    """Write a GGUF-loaded model as a Hugging Face folder with safetensors weights.

    transformers refuses save_pretrained on a GGUF-loaded model because its GGUF quantizer declares
    itself not serializable, since packed GGUF blocks have no safetensors form. Loaded with
    dequantize=True the weights are ordinary dense tensors, so this writes them with safetensors
    directly and drops quantization_config from the config, which then loads as a plain checkpoint.
    The folder is written under a temporary name and renamed into place, so an interrupted write
    never leaves a partial cache.
    """
    from safetensors.torch import save_file

    cache.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{cache.name}-", dir=cache.parent))
    try:
        save_file(_unique_tensors(loaded.model), staging / CACHE_WEIGHTS, metadata={"format": "pt"})
        config = loaded.model.config.to_dict()
        config.pop("quantization_config", None)
        (staging / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        loaded.generation_config.save_pretrained(staging)
        loaded.tokenizer.save_pretrained(staging)
        os.replace(staging, cache)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, OSError) and (cache / CACHE_WEIGHTS).is_file():
            # Another process finished the same cache first; its copy is as good as this one.
            return
        raise
    log.info("wrote the torch cache %s", cache)


def _remove_stale_staging(cache: Path) -> None:
    """Delete temporary folders that an interrupted cache write left behind.

    A folder younger than STALE_STAGING_SECONDS may belong to another process that is writing the
    same cache right now, so it stays.
    """
    if not cache.parent.is_dir():
        return
    now = time.time()
    for staging in cache.parent.glob(f".{cache.name}-*"):
        try:
            age = now - staging.stat().st_mtime
        except OSError:
            continue
        if age > STALE_STAGING_SECONDS:
            log.info("removed the interrupted torch cache write %s", staging)
            shutil.rmtree(staging, ignore_errors=True)


def _unique_tensors(model) -> dict:
    """Return the state dict with each shared tensor once, as safetensors requires.

    Tied weights (lm_head.weight sharing the input embeddings) appear under two names, and the
    first name in module order (the embeddings) is kept. transformers ties them again on load
    from the config's tie_word_embeddings.
    """
    tensors, seen = {}, set()
    for name, tensor in model.state_dict().items():
        key = (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key in seen:
            continue
        seen.add(key)
        tensors[name] = tensor.detach().contiguous()
    return tensors


def _move(model, device: str, dtype) -> None:
    model.to(device=device, dtype=dtype)


def _reason(error: Exception) -> str:
    """Return the first line of an exception message, which is the part a user can act on."""
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0].rstrip(".") + "."


@contextlib.contextmanager
def _captured_output(action: str):
    """Keep progress bars and stray prints of transformers off the terminal, which the TUI owns."""
    stray_output = io.StringIO()
    try:
        with contextlib.redirect_stderr(stray_output), contextlib.redirect_stdout(stray_output):
            yield
    finally:
        if stray_output.getvalue():
            log.debug("output of transformers while %s:\n%s", action, stray_output.getvalue())


_library_logs_routed = False


def route_library_logs() -> None:
    """Send the log records of transformers to chatty's log handlers instead of its own stderr handler."""
    global _library_logs_routed
    if _library_logs_routed:
        return
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_default_handler()
    transformers_logging.enable_propagation()
    _library_logs_routed = True
