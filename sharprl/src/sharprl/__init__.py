"""sharprl: sharpness-aware first-order policy learning on differentiable Brax."""

__version__ = "0.1.0"
