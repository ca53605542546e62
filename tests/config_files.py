"""Loads the project's config files (``configs/<name>.py``) by path, as ``--config=`` does, and its
launch scripts (``launch/<name>.py``, not a package) as modules."""

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_module(name: str, *path: str):
  """The module at ``ROOT/<path...>`` under the name ``name``."""
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, *path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_launch(name: str):
  """``launch/<name>.py`` as a module, e.g. ``load_launch('compare_strategies')``."""
  return load_module(name, "launch", f"{name}.py")


def load_config(name: str, arg=None):
  """``configs/<name>.py``'s ``get_config(arg)``, e.g. ``load_config('synthetic', 'smoke')``."""
  return load_module(f"{name}_config", "configs", f"{name}.py").get_config(arg)
