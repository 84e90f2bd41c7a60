"""The active model, backend and adapter: what the next reply runs on."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from chatty.backends import Backend, LoadOptions, create_backend
from chatty.backends.base import available_cores
from chatty.config import Config
from chatty.errors import ModelError
from chatty.models.adapters import AdapterCatalog, AdapterInfo
from chatty.models.catalog import ModelCatalog, ModelInfo

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_SECONDS = 10


@dataclass(frozen=True)
class RuntimeChoice:
    """The model, backend and adapter that produce a reply; every assistant message records them."""

    model: str
    backend: str
    adapter: str | None = None


class Runtime:
    """Holds one loaded backend and switches model, backend or adapter on request.

    `load` blocks for as long as a model takes to load, so the TUI calls it from a worker thread.
    """

    def __init__(self, config: Config, catalog: ModelCatalog, cache_dir: Path | None = None, adapters_dir: Path | None = None):
        self.config = config
        self.catalog = catalog
        self.cache_dir = cache_dir
        self.adapters = AdapterCatalog(adapters_dir) if adapters_dir is not None else None
        self.backend: Backend | None = None
        # Set by the TUI. With threads = 0, llama.cpp then leaves one core to the event loop, because
        # its worker threads wait for each other at every layer, and one that loses its core to
        # rendering stalls them all. On a 2-core AMD EPYC the app streamed 55-78 tok/s on 2 threads
        # and 110-125 tok/s on 1 (benchmarks/bench_tui.py, 256 tokens).
        self.reserve_interface_core = False
        self._lock = threading.Lock()

    @property
    def options(self) -> LoadOptions:
        model = self.config.model
        threads = model.threads
        if not threads and self.reserve_interface_core:
            threads = max(1, available_cores() - 1)
        return LoadOptions(n_ctx=model.n_ctx, threads=threads, dtype=model.dtype, cache_dir=self.cache_dir,
                           trust_remote_code=tuple(model.trust_remote_code))

    @property
    def model(self) -> ModelInfo | None:
        return self.backend.model if self.backend else None

    @property
    def choice(self) -> RuntimeChoice | None:
        if self.backend is None or self.backend.model is None:
            return None
        return RuntimeChoice(self.backend.model.id, self.backend.name, self.backend.adapter_name)

    def load(self, model_reference: str | None = None, backend_name: str | None = None) -> Backend:
        """Load a model on a backend, reusing the loaded one when nothing changes.

        Defaults come from config: [model] default and backend. On failure the previous backend
        stays loaded and usable.
        """
        model = self.catalog.resolve(model_reference if model_reference is not None else self.config.model.default)
        backend_name = backend_name or self.config.model.backend
        with self._lock:
            current = self.backend
            if current is not None and current.name == backend_name and current.model == model:
                return current

            # The new model loads beside the old one, so a failed load leaves the old one working.
            # NOTE: peak memory is the sum of both models while the new one loads.
            backend = create_backend(backend_name, self.options)
            backend.load(model)
            self.backend = backend
            if current is not None:
                with current.in_use:
                    current.close()
            return backend

    def resolve_adapter(self, reference: str) -> AdapterInfo:
        if self.adapters is None:
            raise ModelError("No adapters folder is configured.")
        return self.adapters.resolve(reference)

    def set_adapter(self, reference: str | None) -> None:
        """Attach an adapter by name or path, or detach with None, on the loaded backend (loading the default first)."""
        adapter = self.resolve_adapter(reference) if reference else None
        backend = self.backend if self.backend is not None else self.load()
        with self._lock:
            backend.set_adapter(adapter)
        log.info("adapter on %s/%s is now %s", backend.name, backend.model.id, adapter.name if adapter else "none")

    def close(self) -> None:
        """Free the model once no reply is using it (a cancelled reply ends within one token)."""
        with self._lock:
            backend = self.backend
            self.backend = None
            if backend is None:
                return
            backend.cancel()
            if not backend.in_use.acquire(timeout=CLOSE_TIMEOUT_SECONDS):
                # A reply that never finished holds the model; freeing it under that thread could crash.
                log.warning("did not free %s: a reply still uses it after %d s", backend.model, CLOSE_TIMEOUT_SECONDS)
                return
            try:
                backend.close()
            finally:
                backend.in_use.release()
