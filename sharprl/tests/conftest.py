"""Shared test setup: a persistent XLA compilation cache (Brax graphs take minutes to compile on a
loaded 2-core machine; later runs load them from disk), and compiled programs released after each
test module: every XLA CPU executable keeps its own memory mappings, and the whole suite's together
exceeded Linux's default limit of 65,530 per process (vm.max_map_count), which crashed the run."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import jax
import pytest

os.environ.setdefault("SHARPRL_JAX_CACHE", str(Path.home() / ".cache" / "sharprl" / "jax-tests"))  # also for the CLI
jax.config.update("jax_compilation_cache_dir", os.environ["SHARPRL_JAX_CACHE"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    yield
    from sharprl import shac  # the Learners it keeps hold their compiled epochs

    shac.clear_learners()
    jax.clear_caches()
    gc.collect()
