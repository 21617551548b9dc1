"""Token generation loop shared by every executor (fp32, int8, distributed)."""

from __future__ import annotations

from typing import Protocol

import numpy as np

BOS = 1  # llama2.c's beginning-of-sequence token


class Decoder(Protocol):
    def step(self, token: int, pos: int) -> np.ndarray: ...


def sample(logits: np.ndarray, temperature: float, rng: np.random.Generator) -> int:
    """Greedy at temperature 0, otherwise a draw from softmax(logits / temperature)."""
    if temperature <= 0.0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    p = np.exp(z - z.max())
    return int(rng.choice(len(p), p=p / p.sum()))


def generate(decoder: Decoder, steps: int, temperature: float = 0.0, seed: int = 0,
             start: int = BOS) -> list[int]:
    """Generate `steps` tokens after `start` (which is not returned)."""
    rng = np.random.default_rng(seed)
    token, out = start, []
    for pos in range(steps):
        token = sample(decoder.step(token, pos), temperature, rng)
        out.append(token)
    return out


def teacher_forced_top1(decoder: Decoder, tokens: list[int], start: int = BOS) -> np.ndarray:
    """Feed `start, tokens[:-1]`; return the argmax at each position (compare with `tokens`)."""
    inputs = [start] + list(tokens[:-1])
    return np.array([int(np.argmax(decoder.step(t, pos))) for pos, t in enumerate(inputs)])
