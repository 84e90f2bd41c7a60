"""Token selection for the PyTorch backend: greedy at temperature 0, else temperature and top-p sampling."""

from __future__ import annotations

import random

from chatty.backends.base import GenerationParams


class TokenSampler:
    """A next-token chooser for one reply, working on the logits' device.

    Sampling draws from a torch.Generator seeded from params.seed, or from a random seed when
    params.seed is None, so a fixed seed repeats a reply on the same device and dtype.
    """

    def __init__(self, params: GenerationParams, device: str):
        import torch

        self.greedy = params.temperature <= 0
        self.temperature = params.temperature
        self.top_p = params.top_p
        self.generator = None
        if not self.greedy:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(params.seed if params.seed is not None else random.randrange(2**63))

    def __call__(self, logits):
        """Return the chosen id as a 0-dimensional tensor, so the caller decides when to synchronize."""
        import torch

        if self.greedy:
            return torch.argmax(logits, dim=-1)

        probabilities = torch.softmax(logits.float() / self.temperature, dim=-1)
        if self.top_p >= 1:
            return torch.multinomial(probabilities, 1, generator=self.generator)[0]

        # Top-p keeps the most likely tokens until their total probability reaches top_p. A token is
        # dropped when the tokens ranked above it already reach top_p, and the first token always stays.
        sorted_probabilities, order = torch.sort(probabilities, descending=True)
        mass_above = torch.cumsum(sorted_probabilities, dim=-1) - sorted_probabilities
        dropped = mass_above >= self.top_p
        dropped[0] = False
        sorted_probabilities = sorted_probabilities.masked_fill(dropped, 0.0)
        choice = torch.multinomial(sorted_probabilities, 1, generator=self.generator)
        return order[choice[0]]
