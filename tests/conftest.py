"""Shared test setup: one persistent JAX compilation cache for the whole session.

The tiny detector is compiled by many tests; with the cache the later compilations load in
milliseconds. Worker processes of pytest-xdist share the folder safely (JAX writes atomically).
"""

import os
import tempfile

import jax

_CACHE = os.environ.setdefault(
    "CLAUS_JAX_CACHE", os.path.join(tempfile.gettempdir(), "claus_jax_test_jax_cache"))
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
