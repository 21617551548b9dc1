"""`mcushard run`: load a model, quantise it, split it with a plan, run it on chip processes."""

from __future__ import annotations

from mcushard.errors import McushardError


def run_model(model: str, chips: int, strategy: str, algorithm: str, steps: int, scheme: str, seed: int,
              hardware: str, timeout_s: float):
    """(config, generated tokens or None, summary text) of a distributed int8 run."""
    from mcushard.hardware.spec import load_hardware
    from mcushard.model.config import LlamaConfig
    from mcushard.model.load import load_model
    from mcushard.partition import make_plan

    hw = load_hardware(hardware)
    cfg, weights = load_model(model, seed)
    plan = make_plan(cfg, chips, strategy, algorithm)
    if isinstance(cfg, LlamaConfig):
        from mcushard.runtime.distributed import format_summary, run_plan
        from mcushard.runtime.int8 import LlamaInt8

        ref = LlamaInt8.from_fp32(cfg, weights, scheme or None)
        report = run_plan(plan, ref, hw, steps, timeout_s=timeout_s)
        return cfg, report.tokens, format_summary(plan, report)
    raise McushardError(f"{model}: distributed run of {cfg.kind} models is not available")
