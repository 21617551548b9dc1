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
    if not isinstance(cfg, LlamaConfig) and strategy != "tp":
        raise McushardError(f"{model}: encoders run with --strategy tp only, got {strategy!r}")
    plan = make_plan(cfg, chips, strategy, algorithm)
    if isinstance(cfg, LlamaConfig):
        from mcushard.runtime.distributed import format_summary, run_plan
        from mcushard.runtime.int8 import LlamaInt8

        ref = LlamaInt8.from_fp32(cfg, weights, scheme or None)
        report = run_plan(plan, ref, hw, steps, timeout_s=timeout_s)
        return cfg, report.tokens, format_summary(plan, report)
    return cfg, None, _run_encoder(plan, cfg, weights, hw, steps, scheme, seed, timeout_s)


def _run_encoder(plan, cfg, weights, hw, seq_len: int, scheme: str, seed: int, timeout_s: float) -> str:
    """One forward of a seeded random sequence on the chip processes, checked against one chip."""
    import numpy as np

    from mcushard.cost.simulate import simulate
    from mcushard.placement import workload
    from mcushard.runtime.bert_int8 import BertInt8, calibration_inputs, quantize_bert
    from mcushard.runtime.distributed import RunReport, format_summary
    from mcushard.runtime.distributed_bert import DistributedBert

    bits = {"": 12, "w8a12": 12, "w8a16": 16}.get(scheme)
    if bits is None:
        raise McushardError(f"scheme {scheme!r}: encoders take w8a12 (default) or w8a16")
    ids = calibration_inputs(cfg, 1, seq_len, seed + 1)[0]
    qb = quantize_bert(cfg, weights, bits)
    with DistributedBert(plan, qb, hw.group_size, timeout_s) as dist:
        hidden = dist.forward(ids)
        held, stats = dist.held(), dist.stats
    same = np.array_equal(hidden, BertInt8(qb).forward(ids))
    charged = simulate(plan, hw, workload(cfg, "prompt", seq_len=len(ids))).link_bytes_per_pair
    match = stats.link_bytes[0] == {k: v for k, v in charged.items() if v}
    extra = (f"hidden state [{len(ids)}, {hidden.shape[1]}] identical to the single-chip int8 encoder: "
             + ("yes" if same else "NO"),
             "(the plan also counts biases, norms and position embeddings as weights; the integer "
             "encoder keeps them as float constants)")
    report = RunReport(ids.tolist(), len(ids) / max(stats.seconds, 1e-9), held, stats.mean_link_bytes(),
                       stats.link_bytes, match, extra)
    return format_summary(plan, report)
