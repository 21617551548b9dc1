"""Hardware description: a chip (cores + memory levels), the link between chips, and the system.

The specs are frozen pydantic dataclasses: real `dataclasses` (so `dataclasses.replace` works for
sweeps) that validate types and ranges on construction and reject unknown fields. `load_hardware`
reads a preset name or a YAML file and turns any problem into one `McushardError` naming the file
and the field.
"""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import ConfigDict, Field, ValidationError, model_validator
from pydantic.dataclasses import dataclass

from mcushard.errors import McushardError

_STRICT = ConfigDict(extra="forbid")
PosInt = Annotated[int, Field(gt=0)]
PosFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNeg = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Fraction = Annotated[float, Field(gt=0, le=1)]
Kernel = Literal["gemv", "gemm", "attention", "elementwise"]
Topology = Literal["ring", "mesh2d", "star", "full"]
Algorithm = Literal["ring", "tree", "hierarchical"]


@dataclass(config=_STRICT, frozen=True)
class MemoryLevel:
    """One level of a chip's memory hierarchy (L1 is the level the cores compute from)."""

    name: str  # label: "L1", "L2", "MRAM", "HyperRAM"
    size_bytes: PosInt  # capacity
    bandwidth_bytes_per_s: PosFloat  # sustained DMA bandwidth towards the level above (L1)
    energy_pj_per_byte: NonNeg  # dynamic energy to read (or write) one byte
    active_power_mw: NonNeg  # extra power while this level is transferring
    idle_power_mw: NonNeg  # leakage / standby power, drawn all the time
    on_chip: bool  # on the die (False: off-chip memory such as HyperRAM)
    non_volatile: bool = False  # keeps weights without power (MRAM): no load at boot
    holds_weights: bool = True  # may hold stationary weights (False for the L1 scratchpad)
    overlaps_compute: bool = True  # transfers from here are double-buffered behind compute


@dataclass(config=_STRICT, frozen=True)
class Utilisation:
    """Fraction of peak MAC throughput a kernel kind achieves on the cluster (0..1]."""

    gemv: Fraction  # matrix x vector (decode, one token)
    gemm: Fraction  # matrix x matrix (prompt, many tokens)
    attention: Fraction  # QK^T and AV with softmax in between
    elementwise: Fraction  # norms, activations, residual adds (int8 SIMD lanes; int32 adds: 1 lane)


@dataclass(config=_STRICT, frozen=True)
class ChipSpec:
    """One microcontroller: a compute cluster and its memory levels, fastest first."""

    name: str  # label
    cores: PosInt  # cluster cores that run kernels in parallel
    freq_hz: PosFloat  # cluster clock
    int8_macs_per_cycle_per_core: PosFloat  # SIMD int8 MACs one core retires per cycle
    utilisation: Utilisation  # achievable fraction of peak per kernel kind
    mac_energy_pj: NonNeg  # dynamic energy of one int8 MAC incl. operand fetch from L1
    static_power_mw: NonNeg  # always-on power of the SoC and cluster (leakage, clocks)
    kernel_overhead_s: NonNeg  # fixed cost of launching one kernel on the cluster
    dma_setup_s: NonNeg  # fixed cost of one DMA tile transfer
    levels: tuple[MemoryLevel, ...]  # L1 first, then outwards; exactly one L1 (holds_weights=False)

    @model_validator(mode="after")
    def _check_levels(self):
        if len(self.levels) < 2:
            raise ValueError("levels: need at least L1 and one level that holds weights")
        if self.levels[0].holds_weights or not self.levels[0].on_chip:
            raise ValueError("levels.0: the first level is the on-chip L1 scratchpad (holds_weights: false)")
        names = [level.name for level in self.levels]
        if len(set(names)) != len(names):
            raise ValueError(f"levels: duplicate names {names}")
        return self

    @property
    def peak_macs_per_s(self) -> float:
        return self.cores * self.freq_hz * self.int8_macs_per_cycle_per_core

    @property
    def l1(self) -> MemoryLevel:
        return self.levels[0]

    @property
    def working(self) -> MemoryLevel:
        """The volatile on-chip level next to L1 (L2): activations, KV cache, staging buffers."""
        for level in self.levels[1:]:
            if level.on_chip and not level.non_volatile:
                return level
        raise McushardError(f"chip {self.name!r}: no volatile on-chip level (L2) for activations")

    @property
    def offchip(self) -> MemoryLevel | None:
        return next((level for level in self.levels if not level.on_chip), None)

    def level(self, name: str) -> MemoryLevel:
        for level in self.levels:
            if level.name == name:
                return level
        raise McushardError(f"chip {self.name!r} has no memory level {name!r}")


@dataclass(config=_STRICT, frozen=True)
class LinkSpec:
    """The chip-to-chip links: every link of the topology has these properties."""

    bandwidth_bytes_per_s: PosFloat  # payload bandwidth of one link, one direction
    latency_s: NonNeg  # fixed cost per message per hop (setup, synchronisation)
    energy_pj_per_byte: NonNeg  # energy to move one byte over one hop
    idle_power_mw: NonNeg  # per-chip PHY power drawn all the time when N > 1
    topology: Topology  # how chips are wired; messages between non-neighbours pay one latency per hop
    full_duplex: bool  # a chip can send and receive at the same time


@dataclass(config=_STRICT, frozen=True)
class HardwareSpec:
    """A system of identical chips joined by identical links, and how it reduces."""

    name: str  # preset label
    chip: ChipSpec  # every chip
    link: LinkSpec  # every link
    allreduce: Algorithm = "hierarchical"  # default all-reduce algorithm
    group_size: PosInt = 4  # chips per first-level group of the hierarchical all-reduce


def replace(spec, **changes):
    """`dataclasses.replace` that re-validates (pydantic dataclasses validate in __init__)."""
    try:
        return dataclasses.replace(spec, **changes)
    except ValidationError as exc:
        raise McushardError(f"{type(spec).__name__}: {_first_error(exc)}") from None


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(part) for part in err["loc"]) or "(top level)"
    return f"field {where}: {err['msg']}"


def preset_names() -> list[str]:
    folder = resources.files("mcushard.hardware") / "presets"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_hardware(spec: str) -> HardwareSpec:
    """A preset name (see `preset_names()`) or a path to a YAML file."""
    text, source = _read(spec)
    return parse_hardware(text, source)


def _read(spec: str) -> tuple[str, str]:
    if spec in preset_names():
        return (resources.files("mcushard.hardware") / "presets" / f"{spec}.yaml").read_text(), f"preset {spec}"
    path = Path(spec)
    if not path.is_file():
        raise McushardError(f"{spec}: neither a hardware preset ({', '.join(preset_names())}) nor a file")
    return path.read_text(), str(path)


def _load_yaml(text: str, source: str) -> dict:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise McushardError(f"{source}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise McushardError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _merge(base, over):
    """`over` on top of `base`: mappings merge key by key, lists of named levels merge by name."""
    if isinstance(base, dict) and isinstance(over, dict):
        return {k: _merge(base[k], v) if k in base else v for k, v in over.items()} | {
            k: v for k, v in base.items() if k not in over}
    if isinstance(base, list) and isinstance(over, list) and all(isinstance(x, dict) and "name" in x for x in over):
        named = {x.get("name"): x for x in over}
        merged = [_merge(x, named.pop(x.get("name"))) if x.get("name") in named else x for x in base]
        return merged + list(named.values())
    return over


def parse_hardware(text: str, source: str, _seen: tuple[str, ...] = ()) -> HardwareSpec:
    """Validate YAML text. `extends: <preset or file>` starts from another description and overrides
    only the fields given (memory levels are matched by name)."""
    data = _load_yaml(text, source)
    if "extends" in data:
        parent = data.pop("extends")
        if not isinstance(parent, str) or parent in _seen:
            raise McushardError(f"{source}: field extends: must name a preset or file, without cycles")
        base_text, base_source = _read(parent)
        base = _load_yaml(base_text, base_source)
        if "extends" in base:  # resolve the parent's own parent first
            parsed = parse_hardware(base_text, base_source, _seen + (parent,))
            base = dataclasses.asdict(parsed)
        data = _merge(base, data)
    try:
        return HardwareSpec(**data)
    except ValidationError as exc:
        raise McushardError(f"{source}: {_first_error(exc)}") from None
    except TypeError as exc:  # raised before validation for a non-mapping nested value
        raise McushardError(f"{source}: {exc}") from None
