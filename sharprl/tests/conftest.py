"""Shared test setup: a persistent XLA compilation cache (Brax graphs take minutes to compile on a
loaded 2-core machine; later runs load them from disk)."""

from __future__ import annotations

import os
from pathlib import Path

import jax

jax.config.update(
    "jax_compilation_cache_dir",
    os.environ.get("SHARPRL_JAX_CACHE", str(Path.home() / ".cache" / "sharprl" / "jax-tests")),
)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)
