"""Time and energy of the cluster's arithmetic: MACs at a per-kernel utilisation of the peak."""

from __future__ import annotations

from mcushard.hardware.spec import ChipSpec


def utilisation(chip: ChipSpec, kernel: str, tokens: int) -> float:
    """Fraction of peak: a matmul over one token is a GEMV, over several a GEMM."""
    u = chip.utilisation
    if kernel == "matmul":
        return u.gemv if tokens == 1 else u.gemm
    return u.attention if kernel == "attention" else u.elementwise


def compute_time_s(chip: ChipSpec, kernel: str, tokens: int, macs: float, elements: float) -> float:
    """MACs at the kernel's utilisation; int8 element-wise ops use the same SIMD lanes at their own."""
    t = 0.0
    if macs:
        t += macs / (chip.peak_macs_per_s * utilisation(chip, kernel, tokens))
    if elements:
        t += elements / (chip.peak_macs_per_s * chip.utilisation.elementwise)
    return t


def compute_energy_j(chip: ChipSpec, macs: float, elements: float) -> float:
    """Dynamic energy: an element-wise op is charged like one MAC."""
    return (macs + elements) * chip.mac_energy_pj * 1e-12
