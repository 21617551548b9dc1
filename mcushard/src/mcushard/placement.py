"""Where every slice lives on its chip, for one workload.

Per chip:
- L2 (the volatile on-chip level) first holds the live activations of the processed tokens, the
  int32 partial-sum buffer, and, when any weight streams from off-chip, a double buffer of two L1
  weight tiles; then the KV cache (to off-chip when it does not fit).
- Weights stay stationary on-chip when they fit: non-volatile levels (MRAM) first, then what is
  left of L2, first-fit by decreasing size. What does not fit streams from off-chip every token,
  double-buffered through L2 into L1.
- L1: half holds two weight tiles (double buffering), half the activation tiles. A matmul whose
  weights exceed a tile runs in several tiles; tokens whose activations exceed the activation half
  run in several token tiles, each re-reading the weights.
Anything impossible raises a `McushardError` naming the chip, the level, and bytes needed vs free.
"""

from __future__ import annotations

from dataclasses import dataclass

from mcushard.errors import McushardError
from mcushard.hardware.spec import ChipSpec
from mcushard.partition.plan import Plan


@dataclass(frozen=True)
class Workload:
    """What one simulated step processes."""

    mode: str  # "decode" (one token against a KV cache) or "prompt" (all tokens at once)
    tokens: int  # tokens processed together (1 when decoding)
    keys: float  # attended keys per token (decode: kv_len; causal prompt: (S+1)/2; encoder: S)
    cached: int  # positions whose K/V are held (decode: kv_len; prompt: S)


def workload(cfg, mode: str, kv_len: int = 128, seq_len: int = 128) -> Workload:
    """Decode a token with `kv_len` cached positions, or run a prompt of `seq_len` tokens."""
    encoder = cfg.kind == "bert"
    if mode == "decode":
        if encoder:
            raise McushardError(f"model {cfg.name!r} is an encoder: it runs in prompt mode only")
        if kv_len < 1:
            raise McushardError(f"kv_len must be >= 1, got {kv_len}")
        return Workload("decode", 1, float(kv_len), kv_len)
    if mode == "prompt":
        if seq_len < 1:
            raise McushardError(f"seq_len must be >= 1, got {seq_len}")
        keys = float(seq_len) if encoder else (seq_len + 1) / 2
        return Workload("prompt", seq_len, keys, 0 if encoder else seq_len)
    raise McushardError(f"unknown mode {mode!r}; use decode or prompt")


@dataclass(frozen=True)
class ChipPlacement:
    """One chip's memory map."""

    home: dict[str, str]  # tensor name -> level name holding this chip's slice of it
    used_bytes: dict[str, int]  # level name -> bytes occupied
    kv_level: str  # level holding the KV cache
    kv_bytes: int  # KV-cache bytes
    activation_bytes: int  # live activation + partial-sum bytes in L2
    l1_tile_bytes: int  # bytes of one weight tile in L1 (two are double-buffered)
    token_tiles: int  # passes over the weights because activations exceed L1's activation half
    offchip_weight_bytes: int  # weight bytes streamed from off-chip per pass


@dataclass(frozen=True)
class Placement:
    chips: tuple[ChipPlacement, ...]  # one per chip of the plan
    workload: Workload  # what it was placed for


def place(plan: Plan, chip: ChipSpec, wl: Workload) -> Placement:
    """Chips holding the same tensors at the same sizes share one (identical) memory map."""
    seen: dict[tuple, ChipPlacement] = {}
    out = []
    for c in range(plan.n_chips):
        key = (tuple(plan.tensor_bytes(c).items()), plan.kv_elements[c], plan.act_elements[c],
               max((s.cols[1] - s.cols[0] for s in plan.shards[c]), default=1))
        if key not in seen:
            seen[key] = _place_chip(plan, chip, wl, c)
        out.append(seen[key])
    return Placement(tuple(out), wl)


def _need(cond: bool, chip: int, level: str, needed: int, free: int, what: str) -> None:
    if not cond:
        raise McushardError(
            f"chip {chip}: {level} cannot hold {what}: needs {needed} bytes, {max(free, 0)} available")


def _place_chip(plan: Plan, spec: ChipSpec, wl: Workload, c: int) -> ChipPlacement:
    l1, l2, off = spec.l1, spec.working, spec.offchip
    tensors = plan.tensor_bytes(c)
    widest = max((s.cols[1] - s.cols[0] for s in plan.shards[c]), default=1)
    tile = l1.size_bytes // 4
    _need(2 * widest * plan.weight_bytes <= l1.size_bytes // 2, c, l1.name, 2 * widest * plan.weight_bytes,
          l1.size_bytes // 2, "one weight row, double-buffered")
    act_per_token = plan.act_elements[c] * plan.act_bytes
    token_tiles = max(1, -(-wl.tokens * act_per_token // (l1.size_bytes // 2)))
    model_width = getattr(plan.model, "dim", 0) or plan.model.hidden_size
    act = wl.tokens * (act_per_token + model_width * plan.psum_bytes)
    kv = plan.kv_elements[c] * wl.cached * plan.act_bytes
    free = {lv.name: lv.size_bytes for lv in spec.levels[1:]}
    _need(act <= free[l2.name], c, l2.name, act, free[l2.name], "activations")
    free[l2.name] -= act
    staging = 2 * tile
    home: dict[str, str] = {}
    stores = [lv for lv in spec.levels[1:] if lv.on_chip and lv.holds_weights and lv.non_volatile]
    stores += [lv for lv in spec.levels[1:] if lv.on_chip and lv.holds_weights and not lv.non_volatile]
    kv_level = l2.name
    if kv > free[l2.name] - staging:
        if off is None:
            _need(False, c, l2.name, kv, free[l2.name], "the KV cache")
        kv_level = off.name
    free[kv_level] -= kv
    offchip_bytes = 0
    for name, size in sorted(tensors.items(), key=lambda kv_: (-kv_[1], kv_[0])):
        level = next((lv for lv in stores if size <= free[lv.name] - (staging if lv is l2 else 0)), None)
        if level is None:
            if off is None:
                on_chip = sum(free[lv.name] for lv in stores)
                _need(False, c, "on-chip memory (no off-chip level)", size, on_chip, f"weights {name}")
            level = off
            offchip_bytes += size
        free[level.name] -= size
        home[name] = level.name
    if offchip_bytes:
        _need(free[l2.name] >= 0, c, l2.name, staging, free[l2.name] + staging, "the off-chip staging buffer")
        free[l2.name] -= staging
    if off is not None:
        _need(free[off.name] >= 0, c, off.name, off.size_bytes - free[off.name], off.size_bytes,
              "weights and KV cache")
    sizes = {lv.name: lv.size_bytes for lv in spec.levels[1:]}
    used = {name: sizes[name] - free[name] for name in free}
    return ChipPlacement(home, used, kv_level, kv, act, tile, token_tiles, offchip_bytes)
