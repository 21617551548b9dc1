"""Shared test setup: a persistent XLA compilation cache (Brax graphs take minutes to compile on a
loaded 2-core machine; later runs load them from disk)."""

from __future__ import annotations

import os
from pathlib import Path

import jax

os.environ.setdefault("SHARPRL_JAX_CACHE", str(Path.home() / ".cache" / "sharprl" / "jax-tests"))  # also for the CLI
jax.config.update("jax_compilation_cache_dir", os.environ["SHARPRL_JAX_CACHE"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)
