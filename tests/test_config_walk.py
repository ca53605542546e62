"""launch/studies/config_walk.py on a tiny package whose walk is counted by hand."""

import os
import textwrap

from tests.config_files import load_module

walk_lib = load_module("config_walk", "launch", "studies", "config_walk.py")

FILES = {
    "__init__.py": "",
    "schema.py": """
        from claus_jax import low
        def check(config):
          return low.helper(config.train)   # a section: not followed
        def validate(config):
          return config
        """,
    "low.py": """
        def helper(section):
          return section
        def late(config):
          from claus_jax import schema      # imports back up: schema and low form a cycle
          return schema.validate(config)
        """,
    "mid.py": """
        from claus_jax import low
        class Runner:
          def __init__(self, config):
            self.config = config
          def go(self):
            return low.late(self.config)
        """,
    "params.py": """
        class Params:
          @classmethod
          def from_config(cls, config):   # a section's settings, read once
            return cls()
        """,
    "top.py": """
        from claus_jax import mid
        from claus_jax import params
        from claus_jax import schema
        def run(config):
          cfg = config
          params.Params.from_config(cfg)
          schema.check(cfg)
          mid.Runner(config).go()
          return mid.Runner(config=cfg)
        """,
}


def _package(tmp_path):
  root = tmp_path / "repo"
  (root / "claus_jax").mkdir(parents=True)
  for name, text in FILES.items():
    (root / "claus_jax" / name).write_text(textwrap.dedent(text))
  return str(root)


def test_the_walk_counts_entries_modules_and_calls_back_up(tmp_path, capsys):
  root = _package(tmp_path)
  modules = walk_lib.load_package(root)
  floors = walk_lib.floors(modules)
  # low imports schema only inside a function: the two form a cycle and share the ground floor.
  assert {m: floors[f"claus_jax.{m}"] for m in ("low", "schema", "params", "mid", "top")} == {
      "low": 1, "schema": 1, "params": 1, "mid": 2, "top": 3}
  edges = walk_lib.walk(modules, "claus_jax.top", "run", "config")
  crossing = sorted((a, f, b, g) for a, f, b, g in edges if a != b)
  assert crossing == [
      ("claus_jax.low", "late", "claus_jax.schema", "validate"),
      ("claus_jax.mid", "Runner.go", "claus_jax.low", "late"),
      ("claus_jax.top", "run", "claus_jax.mid", "Runner.__init__"),
      ("claus_jax.top", "run", "claus_jax.params", "Params.from_config"),
      ("claus_jax.top", "run", "claus_jax.schema", "check"),
  ]  # schema.check passes only config.train on, so low.helper is not entered.
  walk_lib.main(["--repo", root, "--start", "claus_jax/top.py:run:config"])
  out = capsys.readouterr().out
  # Only low -> schema runs against the imports (schema imports low).
  assert out.splitlines()[0] == ("config from claus_jax/top.py:run:config: 5 entries into 4 "
                                 "modules, 1 climbing back up (into a module that imports the "
                                 "caller)")


def test_an_unknown_start_names_the_function_and_the_tree(tmp_path):
  root = _package(tmp_path)
  try:
    walk_lib.main(["--repo", root, "--start", "claus_jax/top.py:nope:config"])
  except SystemExit as e:
    assert "no function nope in claus_jax/top.py" in str(e)
  else:
    raise AssertionError("expected SystemExit")
