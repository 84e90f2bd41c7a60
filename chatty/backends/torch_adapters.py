"""LoRA adapters on a loaded transformers model, through PEFT's functional API.

PEFT injects LoRA layers into the model in place, so the backend keeps calling the same model and
an adapter is attached, switched or detached without reloading the base weights. Every adapter
loaded once stays in memory under its name, so switching back to it is instant. With all adapters
disabled, each LoRA layer calls only its wrapped base layer, so the logits equal the base model's.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
import warnings
from dataclasses import dataclass

from chatty.errors import ModelError
from chatty.models.adapters import PEFT_CONFIG, PEFT_WEIGHTS, AdapterInfo
from chatty.models.catalog import ModelInfo

log = logging.getLogger(__name__)

# PEFT stores each adapter's weights in a ModuleDict keyed by adapter name, where "." is not allowed,
# so adapters get internal names and chatty's names stay free-form.
_PEFT_NAME_PREFIX = "chatty_adapter_"
_SIZE_MISMATCH = re.compile(r"size mismatch for (\S+?):.*?shape torch\.Size\(\[([^\]]*)\]\).*?shape in current model is torch\.Size\(\[([^\]]*)\]\)")


@dataclass(frozen=True)
class _LoadedAdapter:
    peft_name: str
    # (path, size, mtime) of the weights file, which changes when an adapter is retrained under the same name.
    fingerprint: tuple


class AdapterSlots:
    """The LoRA adapters loaded into one model, by adapter name. At most one is active at a time."""

    def __init__(self, model, device: str):
        self._model = model
        self._device = device
        self._loaded: dict[str, _LoadedAdapter] = {}
        self._active: str | None = None
        self._next_number = 1

    @property
    def names(self) -> list[str]:
        return list(self._loaded)

    def activate(self, adapter: AdapterInfo | None, base: ModelInfo) -> None:
        """Make `adapter` the only active adapter, loading it on first use, or disable all adapters for None."""
        if adapter is None:
            self._switch_to(None)
            log.info("detached the adapter; %s runs without one", base.id)
            return

        loaded = self._loaded.get(adapter.name)
        if loaded is not None and loaded.fingerprint != _fingerprint(adapter):
            log.info("adapter %s changed on disk since it was loaded; loading it again", adapter.name)
            self._delete(adapter.name)
            loaded = None
        if loaded is None:
            loaded = self._load(adapter, base)

        self._switch_to(adapter.name)
        log.info("attached adapter %s (%s) to %s", adapter.name, adapter.path, base.id)

    def _switch_to(self, name: str | None) -> None:
        """Make one loaded adapter active, or disable the LoRA layers of all of them for None."""
        from peft.functional import set_adapter
        from peft.tuners.tuners_utils import BaseTunerLayer

        self._active = None
        if name is not None:
            set_adapter(self._model, self._loaded[name].peft_name, inference_mode=True)
        for module in self._model.modules():
            if isinstance(module, BaseTunerLayer):
                module.enable_adapters(name is not None)
        self._active = name

    def _load(self, adapter: AdapterInfo, base: ModelInfo) -> _LoadedAdapter:
        from peft import PeftConfig
        from peft.functional import inject_adapter_in_model, set_peft_model_state_dict
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        started = time.perf_counter()
        weights = adapter.path / PEFT_WEIGHTS
        try:
            config = PeftConfig.from_pretrained(str(adapter.path))
            # Only the safetensors file is read here, so a pickle file in the folder is never loaded.
            state_dict = load_file(weights, device=self._device)
        except (OSError, ValueError, TypeError, SafetensorError) as error:
            raise ModelError(
                f"Adapter '{adapter.name}' could not be read from {adapter.path}: {error}. Check the folder or train the adapter again."
            ) from None
        config.inference_mode = True

        peft_name = f"{_PEFT_NAME_PREFIX}{self._next_number}"
        self._next_number += 1
        try:
            with _peft_warnings_to_log():
                inject_adapter_in_model(config, self._model, adapter_name=peft_name)
                result = set_peft_model_state_dict(self._model, state_dict, adapter_name=peft_name)
            problem = _incomplete_load(result, peft_name)
        except (RuntimeError, ValueError, KeyError) as error:
            problem = _shape_problem(str(error))
        if problem is not None:
            log.warning("rejected adapter %s (%s) for %s: %s", adapter.name, adapter.path, base.id, problem)
            self._remove_layers(peft_name)
            # Injection and deletion move PEFT's active adapter around, so set the previous state again.
            self._switch_to(self._active)
            raise ModelError(
                f"Adapter '{adapter.name}' does not fit the loaded model {base.id}: {problem}. "
                f"Either it was made for a model of another size or architecture, or its {PEFT_CONFIG} (rank, target "
                f"modules) does not match its weights. Pick an adapter trained on {base.id}."
            )

        self._loaded[adapter.name] = _LoadedAdapter(peft_name, _fingerprint(adapter))
        log.info("loaded adapter %s from %s in %.2f s", adapter.name, adapter.path, time.perf_counter() - started)
        return self._loaded[adapter.name]

    def _delete(self, name: str) -> None:
        loaded = self._loaded.pop(name)
        self._remove_layers(loaded.peft_name)
        if self._active == name:
            self._switch_to(None)

    def _remove_layers(self, peft_name: str) -> None:
        """Delete one adapter's LoRA weights from every layer, including a half-loaded adapter's."""
        from peft.functional import delete_adapter

        with _peft_warnings_to_log():
            delete_adapter(self._model, adapter_name=peft_name, prefix="lora_")
        configs = getattr(self._model, "peft_config", None)
        if isinstance(configs, dict):
            configs.pop(peft_name, None)



@contextlib.contextmanager
def _peft_warnings_to_log():
    """Log the warnings PEFT raises while chatty adds and deletes adapters, instead of printing them.

    PEFT warns when a model with a peft_config gets another adapter, and when deleting the active
    adapter activates a different one. Both are expected here, because AdapterSlots sets the active
    adapter itself after every change.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        log.debug("PEFT warning: %s", warning.message)


def _fingerprint(adapter: AdapterInfo) -> tuple:
    stat = (adapter.path / PEFT_WEIGHTS).stat()
    return (str(adapter.path.resolve()), stat.st_size, stat.st_mtime_ns)


def _incomplete_load(result, peft_name: str) -> str | None:
    """Describe adapter weights that did not find a place in the model, or the model's LoRA weights left unset."""
    unexpected = list(result.unexpected_keys)
    if unexpected:
        return f"{len(unexpected)} adapter weights match no layer of the model, for example {unexpected[0]}"
    missing = [key for key in result.missing_keys if f".{peft_name}." in key]
    if missing:
        return f"the adapter has no weights for {len(missing)} of its layers, for example {missing[0]}"
    return None


def _shape_problem(message: str) -> str:
    """Turn a PyTorch load_state_dict error into one line that names a weight and both shapes."""
    match = _SIZE_MISMATCH.search(message)
    if match is None:
        return message.strip().splitlines()[0].rstrip(".") if message.strip() else "loading failed"
    key = re.sub(rf"\.{_PEFT_NAME_PREFIX}\d+", "", match[1])
    return f"{key} has shape ({match[2]}) in the adapter but ({match[3]}) in the model"
