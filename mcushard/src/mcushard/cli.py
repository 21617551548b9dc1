"""`mcushard` command line: info, generate, simulate, sweep, reproduce, run, export."""

from __future__ import annotations

import json
import sys
from pathlib import Path

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
    int8: bool = typer.Option(False, "--int8", help="integer (MCU) execution instead of fp32"),
    scheme: str = typer.Option("", help="quantisation scheme with --int8 (see quant-error); default w8a12-gptq"),
) -> None:
    """Generate text from BOS with the fp32 reference decoder (or the integer one with --int8)."""
    from mcushard.model.config import LlamaConfig
    from mcushard.model.load import load_model
    from mcushard.runtime.generate import generate as run_generate
    from mcushard.runtime.reference import LlamaFP32

    cfg, weights = load_model(model, seed)
    if not isinstance(cfg, LlamaConfig):
        raise McushardError(f"{model}: generate needs a decoder (Llama) model, got {cfg.kind}")
    steps = min(steps, cfg.max_seq_len)
    if int8:
        from mcushard.runtime.int8 import LlamaInt8

        decoder = LlamaInt8.from_fp32(cfg, weights, scheme or None)
    else:
        decoder = LlamaFP32(cfg, weights, cache_len=steps)
    _print_tokens(cfg, run_generate(decoder, steps, temperature, seed), tokens)


def _print_tokens(cfg, out: list[int], as_json: bool) -> None:
    """A JSON list of ids (--tokens), text for llama2.c's 32000-token vocabulary, ids otherwise."""
    if as_json:
        print(json.dumps(out))
    elif cfg.vocab_size == 32000:  # llama2.c's Llama 2 vocabulary: decode to text
        from mcushard.data import shared_file
        from mcushard.model.tokenizer import load_tokenizer

        print(load_tokenizer(shared_file("tinyllamas/tokenizer.bin"), cfg.vocab_size).decode(out))
    else:
        print(" ".join(map(str, out)))


@app.command()
def info(
    model: str = typer.Argument(..., help="preset name, llama2.c .bin, or HF directory"),
    as_json: bool = typer.Option(False, "--json", help="print the sizes as JSON"),
) -> None:
    """Parameters and bytes per tensor group, at fp32 and in int8 storage."""
    from mcushard.model.info import config_for, info_dict, render_table

    cfg = config_for(model)
    if as_json:
        print(json.dumps(info_dict(cfg), indent=2))
    else:
        render_table(cfg)


@app.command("quant-error")
def quant_error(
    model: str = typer.Argument(..., help="preset name, llama2.c .bin, or HF directory"),
    steps: int = typer.Option(256, min=1, help="positions of fp32's greedy sequence to compare"),
    schemes: str = typer.Option("", help="comma-separated scheme names (default: all)"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
    seed: int = typer.Option(0, help="random-weight seed for presets"),
) -> None:
    """int8 quantisation error: decoders, per scheme teacher-forced top-1 agreement with fp32 and the
    weight error; encoders (BERT/MobileBERT), output error against fp32 per activation width."""
    from mcushard.model.config import BertConfig
    from mcushard.model.load import load_model
    from mcushard.runtime.quant import format_report, quant_error_report

    cfg, weights = load_model(model, seed)
    if isinstance(cfg, BertConfig):  # encoders: output error per activation width
        from mcushard.runtime.bert_int8 import bert_quant_error, format_bert_report

        if schemes:
            raise McushardError(f"{model}: --schemes names decoder schemes; encoders report 12- and 16-bit activations")

        report = bert_quant_error(cfg, weights)
        print(json.dumps(report, indent=2) if as_json else format_bert_report(report))
        return
    names = [n.strip() for n in schemes.split(",") if n.strip()] or None
    report = quant_error_report(cfg, weights, steps, names)
    print(json.dumps(report, indent=2) if as_json else format_report(report))


@app.command()
def simulate(
    model: str = typer.Option(..., "--model", help="preset name, llama2.c .bin, or HF directory"),
    chips: int = typer.Option(..., "--chips", min=1, help="number of chips"),
    hardware: str = typer.Option("siracusa", help="hardware preset name or YAML file"),
    strategy: str = typer.Option("tp", help="tp | pp | hybrid"),
    mode: str = typer.Option("decode", help="decode (one token vs a KV cache) | prompt (all tokens at once)"),
    kv_len: int = typer.Option(128, min=1, help="decode: cached positions"),
    seq_len: int = typer.Option(128, min=1, help="prompt: tokens"),
    scope: str = typer.Option("model", help="model (everything) | blocks (transformer blocks only)"),
    as_json: bool = typer.Option(False, "--json", help="print the CostReport as JSON"),
    trace: str = typer.Option("", help="write a Chrome/Perfetto trace JSON of the step to this file"),
) -> None:
    """Cost of one decode step or one prompt: latency, energy, EDP, bytes; per chip and per block."""
    from mcushard.explore import simulate_cmd

    simulate_cmd(model, chips, hardware, strategy, mode, kv_len, seq_len, scope, as_json,
                 Path(trace) if trace else None)


@app.command()
def sweep(
    model: str = typer.Option("tinyllama-42m", "--model", help="preset name, llama2.c .bin, or HF directory"),
    hardware: str = typer.Option("siracusa", help="hardware preset name or YAML file"),
    chips: str = typer.Option("1-64", help="chip counts, e.g. 1-64 or 1,2,4,8"),
    link_gbps: str = typer.Option("", help="link bandwidths in GB/s, e.g. 1,4,8 (default: the preset's)"),
    l2_kib: str = typer.Option("", help="L2 sizes in KiB, e.g. 1024,2048 (default: the preset's)"),
    mram_kib: str = typer.Option("", help="non-volatile on-chip sizes in KiB (default: the preset's)"),
    objective: str = typer.Option("latency", help="latency | energy | edp: picks the best plan per point"),
    mode: str = typer.Option("decode", help="decode | prompt"),
    kv_len: int = typer.Option(128, min=1, help="decode: cached positions"),
    seq_len: int = typer.Option(128, min=1, help="prompt: tokens"),
    scope: str = typer.Option("model", help="model | blocks"),
    out: str = typer.Option("sweep-out", help="directory for sweep.csv, speedup.png, energy.png"),
) -> None:
    """Sweep chips x link bandwidth x memory sizes; best of tp/pp/hybrid per point; CSV + PNG plots."""
    from mcushard.explore import sweep_cmd

    for path in sweep_cmd(model, hardware, chips, link_gbps, l2_kib, mram_kib, objective, mode, kv_len,
                          seq_len, scope, Path(out)):
        print(path)


@app.command()
def reproduce(
    hardware: str = typer.Option("siracusa", help="hardware preset name or YAML file"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object: paper and model per figure"),
) -> None:
    """The paper's figures (TinyLlama-42M x8, MobileBERT x4, scaled TinyLlama x64) beside the model's."""
    from mcushard.explore import reproduce_cmd

    reproduce_cmd(hardware, as_json)


@app.command()
def run(
    model: str = typer.Argument(..., help="preset name, llama2.c .bin, or HF directory"),
    chips: int = typer.Option(1, min=1, help="chip processes"),
    strategy: str = typer.Option("tp", help="tp | pp | hybrid"),
    algorithm: str = typer.Option("hierarchical", help="all-reduce: ring | tree | hierarchical"),
    steps: int = typer.Option(16, min=1, help="tokens to generate (decoders) or sequence length (encoders)"),
    tokens: bool = typer.Option(False, "--tokens", help="print only a JSON list of token ids"),
    scheme: str = typer.Option("", help="quantisation scheme (see quant-error); default w8a12-gptq"),
    seed: int = typer.Option(0, help="random-weight seed for presets"),
    hardware: str = typer.Option("siracusa", help="hardware preset or YAML (all-reduce group size, cost model)"),
    timeout: float = typer.Option(120.0, min=1.0, help="seconds a chip may take to answer"),
) -> None:
    """Run the int8 model split across one OS process per chip; summary (tokens/s, bytes) on stderr."""
    from mcushard.runtime.run import run_model

    cfg, out, summary = run_model(model, chips, strategy, algorithm, steps, scheme, seed, hardware, timeout)
    if out is not None:
        _print_tokens(cfg, out, tokens)
    print(summary, file=sys.stderr)


@app.command()
def export(
    model: str = typer.Argument(..., help="preset name, llama2.c .bin, or HF directory"),
    chips: int = typer.Option(1, min=1, help="chips of the tensor-parallel plan"),
    out: str = typer.Option(..., "--out", help="output directory (chip<c>.onnx + manifest.json)"),
    algorithm: str = typer.Option("hierarchical", help="all-reduce algorithm recorded in the manifest"),
    seed: int = typer.Option(0, help="random-weight seed for presets"),
) -> None:
    """One ONNX model per chip (its slices, syncs as graph inputs/outputs) and a JSON manifest of the plan."""
    from mcushard.export.onnx import export_plan
    from mcushard.model.load import load_model
    from mcushard.partition import make_plan

    cfg, weights = load_model(model, seed)
    print(export_plan(make_plan(cfg, chips, "tp", algorithm), weights, out))


def main() -> None:
    try:
        app()
    except McushardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
