"""`make demo` for mcushard: the main job on built-in data (no download)."""

from __future__ import annotations

from mcushard.data import shared_file
from mcushard.model.llama2c import load_llama2c
from mcushard.runtime.generate import generate
from mcushard.runtime.reference import LlamaFP32


def main() -> None:
    path = shared_file("tinyllamas/stories260K.bin")
    cfg, weights = load_llama2c(path)
    print(f"== stories260K ({path}), greedy fp32, 64 tokens from BOS")
    print(generate(LlamaFP32(cfg, weights), 64))


if __name__ == "__main__":
    main()
