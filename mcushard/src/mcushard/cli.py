"""`mcushard` command line: info, generate, simulate, sweep, reproduce, run, export."""

from __future__ import annotations

import json
import sys

import typer

from mcushard.errors import McushardError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Transformers split tensor-parallel across a cluster of microcontrollers.")


@app.callback()
def _root() -> None:
    """Transformers split tensor-parallel across a cluster of microcontrollers."""


@app.command()
def generate(
    model: str = typer.Argument(..., help="preset name, llama2.c .bin, or HF directory"),
    steps: int = typer.Option(64, min=1, help="tokens to generate"),
    temperature: float = typer.Option(0.0, min=0.0, help="0 is greedy"),
    seed: int = typer.Option(0, help="sampling seed (and random-weight seed for presets)"),
    tokens: bool = typer.Option(False, "--tokens", help="print only a JSON list of token ids"),
) -> None:
    """Generate text from BOS with the fp32 reference decoder."""
    from mcushard.model.config import LlamaConfig
    from mcushard.model.load import load_model
    from mcushard.runtime.generate import generate as run_generate
    from mcushard.runtime.reference import LlamaFP32

    cfg, weights = load_model(model, seed)
    if not isinstance(cfg, LlamaConfig):
        raise McushardError(f"{model}: generate needs a decoder (Llama) model, got {cfg.kind}")
    steps = min(steps, cfg.max_seq_len)
    out = run_generate(LlamaFP32(cfg, weights), steps, temperature, seed)
    if tokens:
        print(json.dumps(out))
    else:
        print(" ".join(map(str, out)))


def main() -> None:
    try:
        app()
    except McushardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
