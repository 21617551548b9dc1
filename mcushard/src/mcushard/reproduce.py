"""The paper's figures beside the cost model's, from one hardware preset (no per-model knob).

Paper: Bochem et al., "Distributed Inference with Minimal Off-Chip Traffic for Transformers on
Low-Power MCUs", DATE 2025 (arXiv:2412.04372), abstract figures.

Workload assumptions the abstract does not give (each with its neighbours in `neighbours()`):
- SCOPE "blocks": a figure covers the transformer blocks, not the embedding lookup and LM head. At
  8 chips the 0.54 ms leave ~0.45 ms of arithmetic after communication; with the LM head (16.4 M
  MACs more, 2 M per chip) the blocks + head would need ~5.2 M MACs per chip in that time, i.e.
  ~100% of the cluster's 11.5 GMAC/s peak, which no GEMV reaches. Blocks only need ~60-75%.
- KV_LEN 128: decoding one token against 128 cached positions, a typical point of a TinyStories
  generation (stories are ~100-300 tokens); attention is <5% of the MACs, so 64 or 256 move the
  figures by a few percent (shown).
- MOBILEBERT_SEQ 64: even at 100% of the cluster peak, 38.8 ms on 4 chips cannot process more than
  4 x 38.8 ms x 11.5 GMAC/s / 20.8 M MACs per token ~ 86 tokens, so the usual 128 (GLUE) or 384
  (SQuAD) are excluded; 64 is the largest power of two below that bound (32 and 128 shown).
- "Scaled TinyLlama": TinyLlama-42M on 64 chips, more chips than its 8 heads, with the within-head
  split of `partition.tensor_parallel` (8 chips per head); the variant with 64 heads of dimension 8
  (same weights, whole heads per chip) is shown as a neighbour.
"""

from __future__ import annotations

from mcushard.cost.simulate import CostReport, simulate
from mcushard.hardware.spec import HardwareSpec, load_hardware
from mcushard.model.config import get_preset
from mcushard.partition import make_plan
from mcushard.placement import workload

PAPER: dict[str, dict[str, float]] = {
    "tinyllama42m_8": {"latency_ms": 0.54, "energy_mj": 0.64, "speedup": 26.1, "edp_gain": 27.2},
    "mobilebert_4": {"latency_ms": 38.8, "speedup": 4.7},
    "tinyllama_scaled_64": {"speedup": 60.1},
}
TARGET_ERROR = {"tinyllama42m_8": 0.10, "mobilebert_4": 0.15, "tinyllama_scaled_64": 0.10}
SCOPE = "blocks"
KV_LEN = 128
MOBILEBERT_SEQ = 64


def _run(cfg, n: int, hw: HardwareSpec, mode: str, scope: str = SCOPE, kv_len: int = KV_LEN,
         seq_len: int = MOBILEBERT_SEQ) -> CostReport:
    plan = make_plan(cfg, n, "tp", hw.allreduce, scope=scope)
    return simulate(plan, hw, workload(cfg, mode, kv_len=kv_len, seq_len=seq_len))


def _versus_one(cfg, n: int, hw: HardwareSpec, mode: str, **kw) -> dict[str, float]:
    one, many = _run(cfg, 1, hw, mode, **kw), _run(cfg, n, hw, mode, **kw)
    return {
        "latency_ms": many.latency_s * 1e3,
        "energy_mj": many.energy_j * 1e3,
        "speedup": one.latency_s / many.latency_s,
        "edp_gain": one.edp_js / many.edp_js,
    }


def _pick(values: dict[str, float], keys) -> dict[str, float]:
    return {k: round(values[k], 4) for k in keys}


def figures(hw: HardwareSpec) -> dict[str, dict[str, dict[str, float]]]:
    """{figure: {"paper": {...}, "model": {...}}} with the fields the paper gives."""
    tiny, bert = get_preset("tinyllama-42m"), get_preset("mobilebert")
    model = {
        "tinyllama42m_8": _versus_one(tiny, 8, hw, "decode"),
        "mobilebert_4": _versus_one(bert, 4, hw, "prompt"),
        "tinyllama_scaled_64": _versus_one(tiny, 64, hw, "decode"),
    }
    return {key: {"paper": dict(PAPER[key]), "model": _pick(model[key], PAPER[key])} for key in PAPER}


def neighbours(hw: HardwareSpec) -> list[tuple[str, str, dict[str, float]]]:
    """(figure, assumption varied, modelled values) around each workload assumption."""
    tiny, bert = get_preset("tinyllama-42m"), get_preset("mobilebert")
    rows = []
    for kv in (64, 256, 512):
        rows.append(("tinyllama42m_8", f"KV length {kv}", _versus_one(tiny, 8, hw, "decode", kv_len=kv)))
    rows.append(("tinyllama42m_8", "scope: whole model (embedding + LM head)",
                 _versus_one(tiny, 8, hw, "decode", scope="model")))
    for seq in (32, 48, 128):
        rows.append(("mobilebert_4", f"sequence length {seq}", _versus_one(bert, 4, hw, "prompt", seq_len=seq)))
    rows.append(("mobilebert_4", "scope: whole model (embeddings + output gather)",
                 _versus_one(bert, 4, hw, "prompt", scope="model")))
    wide = tiny.replace(n_heads=64, n_kv_heads=64, name="tinyllama-42m-64heads")
    rows.append(("tinyllama_scaled_64", "64 heads of dim 8 (whole heads per chip)",
                 _versus_one(wide, 64, hw, "decode")))
    rows.append(("tinyllama_scaled_64", f"KV length {2 * KV_LEN}",
                 _versus_one(tiny, 64, hw, "decode", kv_len=2 * KV_LEN)))
    return [(fig, what, _pick(vals, PAPER[fig])) for fig, what, vals in rows]


def reproduce(hardware: str = "siracusa") -> dict:
    return figures(load_hardware(hardware))


def render(result: dict, hw: HardwareSpec, console) -> None:
    """Rich tables: paper vs model with errors, then the neighbouring assumptions."""
    from rich.table import Table

    table = Table(title=f"Paper figures vs cost model (hardware preset {hw.name!r})")
    for col in ("figure", "metric", "paper", "model", "error", "target"):
        table.add_column(col, justify="left" if col in ("figure", "metric") else "right")
    for fig, entry in result.items():
        for metric, paper in entry["paper"].items():
            model = entry["model"][metric]
            table.add_row(fig, metric, f"{paper:g}", f"{model:.3g}", f"{(model - paper) / paper:+.1%}",
                          f"±{TARGET_ERROR[fig]:.0%}")
    console.print(table)
    near = Table(title="Neighbouring workload assumptions")
    for col in ("figure", "assumption", "values"):
        near.add_column(col)
    for fig, what, vals in neighbours(hw):
        near.add_row(fig, what, ", ".join(f"{k} {v:.3g}" for k, v in vals.items()))
    console.print(near)
    console.print(f"Assumed: scope={SCOPE}, KV length {KV_LEN}, MobileBERT sequence {MOBILEBERT_SEQ} "
                  "(reasons: `python -c 'import mcushard.reproduce as r; help(r)'` and the README).")
