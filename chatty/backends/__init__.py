"""Runtimes that load a model and stream replies: llama.cpp and PyTorch."""

from __future__ import annotations

import importlib.util

from chatty.backends.base import Backend, Generation, GenerationParams, GenerationStats, LoadOptions
from chatty.errors import BackendUnavailable

BACKEND_NAMES = ("llama", "torch")


def create_backend(name: str, options: LoadOptions | None = None) -> Backend:
    """Create an unloaded backend by name; raises BackendUnavailable when its packages are missing."""
    if name == "llama":
        from chatty.backends.llama import LlamaBackend

        return LlamaBackend(options)
    if name == "torch":
        missing = [package for package in ("torch", "transformers", "peft") if importlib.util.find_spec(package) is None]
        if missing:
            raise BackendUnavailable(
                f"The torch backend needs {', '.join(missing)}, which is not installed. Install it with: pip install 'chatty[torch]'"
            )
        from chatty.backends.torch import TorchBackend

        return TorchBackend(options)
    raise BackendUnavailable(f"Unknown backend '{name}'. Choose one of: {', '.join(BACKEND_NAMES)}.")


__all__ = ["BACKEND_NAMES", "Backend", "Generation", "GenerationParams", "GenerationStats", "LoadOptions", "create_backend"]
