"""A training job and the events a training run reports. All of them pickle, so they cross processes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from chatty.config import FinetuneConfig
from chatty.models.catalog import ModelInfo


@dataclass
class TrainingJob:
    """Everything a training process needs: nothing in it refers to the store or the screen."""

    name: str
    base: ModelInfo
    conversations: list[list[dict]]
    sources: list[str]
    options: FinetuneConfig
    adapters_dir: Path
    cache_dir: Path | None = None
    dtype: str = "auto"
    # Conversation ids from the store, recorded in the adapter's metadata.
    conversation_ids: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class DatasetReady:
    train_examples: int
    validation_examples: int
    truncated: int
    trainable_tokens: int
    total_steps: int


@dataclass(frozen=True)
class Progress:
    step: int
    total_steps: int
    epoch: float
    loss: float
    learning_rate: float
    tokens_per_second: float
    trained_tokens: int
    eta_seconds: float
    peak_memory_mb: float


@dataclass(frozen=True)
class Evaluation:
    step: int
    validation_loss: float


@dataclass(frozen=True)
class Finished:
    adapter_path: Path
    metadata: dict


@dataclass(frozen=True)
class Failed:
    message: str
    details: str = ""


class Cancelled(Exception):
    """Raised inside the training loop when the caller asked it to stop."""
