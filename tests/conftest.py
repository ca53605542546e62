"""Shared test setup: fast-compiling XLA flags and one persistent JAX compilation cache.

The tiny detector is compiled by many tests; with the cache the later compilations load in
milliseconds. Worker processes of pytest-xdist share the folder safely (JAX writes atomically).
The XLA flags (tests/xla_flags.py) are set before any JAX backend starts, and child processes
inherit them.
"""

import os
import tempfile

from tests import xla_flags

os.environ["XLA_FLAGS"] = xla_flags.base()

import jax  # pylint: disable=g-import-not-at-top  (after XLA_FLAGS)

_CACHE = os.environ.setdefault(
    "CLAUS_JAX_CACHE", os.path.join(tempfile.gettempdir(), "claus_jax_test_jax_cache"))
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
