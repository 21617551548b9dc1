"""Resolve a MODEL argument: a preset name (seeded random weights) or a checkpoint path."""

from __future__ import annotations

from pathlib import Path

from mcushard.errors import McushardError
from mcushard.model.config import PRESETS, ModelConfig, get_preset
from mcushard.model.weights import Weights, random_weights


def load_model(spec: str, seed: int = 0) -> tuple[ModelConfig, Weights]:
    """`spec` is a preset name, a llama2.c `.bin` file, or an HF directory (config.json + .safetensors)."""
    if spec.lower() in PRESETS:
        cfg = get_preset(spec)
        return cfg, random_weights(cfg, seed)
    path = Path(spec)
    if path.is_dir():
        from mcushard.model.hf import load_hf

        return load_hf(path)
    if path.is_file():
        from mcushard.model.llama2c import load_llama2c

        return load_llama2c(path)
    raise McushardError(f"{spec}: neither a preset ({', '.join(sorted(PRESETS))}) nor an existing file or directory")
