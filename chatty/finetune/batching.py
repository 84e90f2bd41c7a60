"""Batches that waste little compute on padding: examples grouped by length, padded to the longest."""

from __future__ import annotations

import random

from chatty.finetune.dataset import IGNORE_INDEX, Example


def length_grouped_batches(examples: list[Example], batch_size: int, seed: int) -> list[list[Example]]:
    """Split examples into batches of similar length, in a shuffled batch order.

    Sorting by length before batching keeps padding to the few tokens between neighbours; shuffling
    the batches (and ties within a length) keeps the order from following length.
    """
    rng = random.Random(seed)
    shuffled = list(examples)
    rng.shuffle(shuffled)
    ordered = sorted(shuffled, key=len)
    batches = [ordered[start : start + batch_size] for start in range(0, len(ordered), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(batch: list[Example], pad_id: int, device):
    """Pad a batch on the right; returns input_ids, attention_mask and labels tensors."""
    import torch

    width = max(len(example) for example in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    for row, example in enumerate(batch):
        length = len(example)
        input_ids[row, :length] = torch.tensor(example.input_ids)
        attention_mask[row, :length] = 1
        labels[row, :length] = torch.tensor(example.labels)
    return input_ids.to(device), attention_mask.to(device), labels.to(device)


def padding_fraction(batches: list[list[Example]]) -> float:
    """Return the share of padded positions over all batches: the compute that padding wastes."""
    padded = sum(max(len(e) for e in batch) * len(batch) for batch in batches)
    real = sum(len(e) for batch in batches for e in batch)
    return 1 - real / padded if padded else 0.0
