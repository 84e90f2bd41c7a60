"""Shared fixtures: the real embedded model, a loaded llama.cpp backend, and isolated data folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never reach the network: a Hugging Face hub lookup must fail at once instead of downloading.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def chatty_home(tmp_path: Path, monkeypatch) -> Path:
    """Give every test its own data folder, config file and log folder."""
    home = tmp_path / "chatty-home"
    home.mkdir()
    monkeypatch.setenv("CHATTY_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def embedded_model():
    from chatty.models.catalog import ModelCatalog

    return ModelCatalog().default()


@pytest.fixture(scope="session")
def llama_backend(embedded_model):
    """One llama.cpp backend on the embedded model, shared by the tests that only read from it."""
    from chatty.backends.base import LoadOptions
    from chatty.backends.llama import LlamaBackend

    backend = LlamaBackend(LoadOptions(n_ctx=2048))
    backend.load(embedded_model)
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def torch_cache_dir(tmp_path_factory) -> Path:
    """One cache folder for the session, so only the first load of the GGUF converts it."""
    return tmp_path_factory.getbasetemp() / "torch-cache"


@pytest.fixture(scope="module")
def torch_backend(embedded_model, torch_cache_dir):
    """One PyTorch backend on the embedded model per test module, loaded from the session's cache."""
    from chatty.backends.base import LoadOptions
    from chatty.backends.torch import TorchBackend

    backend = TorchBackend(LoadOptions(n_ctx=2048, cache_dir=torch_cache_dir))
    backend.load(embedded_model)
    yield backend
    backend.close()
