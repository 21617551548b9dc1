"""Execution: fp32 reference, int8 as an MCU runs it, and the distributed run."""
