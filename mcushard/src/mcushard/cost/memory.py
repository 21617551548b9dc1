"""Time and energy of DMA transfers from a memory level into L1 (double-buffered by the caller)."""

from __future__ import annotations

from mcushard.hardware.spec import MemoryLevel


def transfer_time_s(level: MemoryLevel, nbytes: float, tiles: int, dma_setup_s: float) -> float:
    """Bytes at the level's bandwidth, plus a setup cost per tile."""
    if nbytes <= 0:
        return 0.0
    return nbytes / level.bandwidth_bytes_per_s + tiles * dma_setup_s


def transfer_energy_j(level: MemoryLevel, l1: MemoryLevel, nbytes: float) -> float:
    """Reading the level and writing L1, plus the level's active power while it streams."""
    if nbytes <= 0:
        return 0.0
    busy_s = nbytes / level.bandwidth_bytes_per_s
    return nbytes * (level.energy_pj_per_byte + l1.energy_pj_per_byte) * 1e-12 + level.active_power_mw * 1e-3 * busy_s
