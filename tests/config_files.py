"""Loads the project's config files (``configs/<name>.py``) by path, as ``--config=`` does."""

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str, arg=None):
  """``configs/<name>.py``'s ``get_config(arg)``, e.g. ``load_config('synthetic', 'smoke')``."""
  spec = importlib.util.spec_from_file_location(f"{name}_config",
                                                os.path.join(ROOT, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)
