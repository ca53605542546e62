"""The XLA flags of every test process, children included.

The suite's time is XLA's compile time: the tiny detector's train step is ~20k HLO ops (most of them
Adam's per-leaf updates) and runs in milliseconds, while compiling it took 65 s on a 2-core AVX2 CPU
at the default backend optimisation level and 38 s at level 0. Level 0 skips LLVM's optimisations
of the generated code, not XLA's HLO passes: the same programs, computed in the same float32
operations, only less optimised. ``CLAUS_TEST_XLA_OPT=1`` runs the suite at the users' default.
"""

import os

FAST_COMPILE = "--xla_backend_optimization_level=0"


def base() -> str:
  """The flags of this test session: the user's XLA_FLAGS, plus level 0 unless opted out."""
  flags = os.environ.get("CLAUS_TEST_USER_XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
  os.environ.setdefault("CLAUS_TEST_USER_XLA_FLAGS", flags)
  if os.environ.get("CLAUS_TEST_XLA_OPT") == "1" or "optimization_level" in flags:
    return flags
  return f"{flags} {FAST_COMPILE}".strip()


def with_devices(count: int) -> str:
  """XLA_FLAGS for a child process with ``count`` fake CPU devices."""
  return f"{base()} --xla_force_host_platform_device_count={count}".strip()
