"""Where the whole config object travels: followed call by call from a starting function.

  python launch/studies/config_walk.py               # from claus_jax/experiment.py:run
  python launch/studies/config_walk.py --start=claus_jax/main.py:main:config --list
  python launch/studies/config_walk.py --repo=/path/to/another/checkout   # the same walk there

Reads the package's own source with ``ast`` (nothing is imported or run). From the start function
it follows every call that passes the tracked object itself (the parameter, a local alias of it,
or an attribute of ``self`` it was stored in), into functions and methods of the package, and
counts:

- entries: distinct calls that carry the config from one module into another;
- modules: the distinct modules entered that way;
- climbs: entries that run against the imports, into a module that imports the caller (directly,
  through others, or in a cycle with it): a lower layer calling back up.

Each module's floor is printed too: one above the highest floor it imports (floor 1 imports
nothing of ours; modules in an import cycle share one floor).

A section (``config.train``) or a value read from the config is not the config: passing it is
what a module should do instead, and the walk does not follow it.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
from typing import NamedTuple

PACKAGE = "claus_jax"


class Module(NamedTuple):
  name: str  # claus_jax.selection.budget
  tree: ast.Module
  aliases: dict  # local name -> ("module", modname) or ("symbol", modname, symbol)
  functions: dict  # "f" or "Class.method" -> ast.FunctionDef
  classes: dict  # class name -> [method names]
  imports: set  # modules of the package this one imports


def _module_name(path: str, root: str) -> str:
  rel = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
  return rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


def _resolve_from(mod: str, is_package: bool, node: ast.ImportFrom) -> str:
  if node.level == 0:
    return node.module or ""
  base = mod.split(".") if is_package else mod.split(".")[:-1]
  base = base[: len(base) - (node.level - 1)]
  return ".".join(base + ([node.module] if node.module else []))


def load_package(root: str) -> dict[str, Module]:
  modules = {}
  paths = []
  for folder, _, files in os.walk(os.path.join(root, PACKAGE)):
    paths += [os.path.join(folder, f) for f in files if f.endswith(".py")]
  names = {_module_name(p, root): p for p in paths}
  for name, path in sorted(names.items()):
    with open(path) as f:
      tree = ast.parse(f.read(), filename=path)
    aliases, imports = {}, set()
    is_package = path.endswith("__init__.py")
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        for a in node.names:
          if a.name.startswith(PACKAGE):
            imports.add(a.name)
            aliases[a.asname or a.name] = ("module", a.name)
      elif isinstance(node, ast.ImportFrom):
        source = _resolve_from(name, is_package, node)
        if not source.startswith(PACKAGE):
          continue
        for a in node.names:
          full = f"{source}.{a.name}"
          if full in names:
            imports.add(full)
            aliases[a.asname or a.name] = ("module", full)
          else:
            imports.add(source)
            aliases[a.asname or a.name] = ("symbol", source, a.name)
    functions, classes = {}, {}
    for node in tree.body:
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        functions[node.name] = node
      elif isinstance(node, ast.ClassDef):
        methods = [n for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        classes[node.name] = [m.name for m in methods]
        for m in methods:
          functions[f"{node.name}.{m.name}"] = m
    modules[name] = Module(name, tree, aliases, functions, classes, imports & set(names))
  return modules


def floors(modules: dict[str, Module]) -> dict[str, int]:
  """1 + the highest floor imported; a cycle (a strongly connected set) is one floor."""
  index, low, stack, on_stack, comp, counter = {}, {}, [], set(), {}, [0]

  def strongconnect(v):  # Tarjan.
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on_stack.add(v)
    for w in modules[v].imports:
      if w not in index:
        strongconnect(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      members = set()
      while True:
        w = stack.pop()
        on_stack.discard(w)
        members.add(w)
        if w == v:
          break
      for w in members:
        comp[w] = frozenset(members)

  sys.setrecursionlimit(10000)
  for v in modules:
    if v not in index:
      strongconnect(v)
  floor = {}

  def floor_of(c):
    if c not in floor:
      below = {comp[w] for v in c for w in modules[v].imports} - {c}
      floor[c] = 1 + max((floor_of(b) for b in below), default=0)
    return floor[c]

  return {v: floor_of(comp[v]) for v in modules}


def reaches(modules: dict[str, Module], a: str, b: str) -> bool:
  """Whether module ``a`` imports ``b``, directly or through others."""
  seen, todo = set(), [a]
  while todo:
    for w in modules[todo.pop()].imports:
      if w == b:
        return True
      if w not in seen:
        seen.add(w)
        todo.append(w)
  return False


def _resolve_symbol(modules, modname, symbol, depth=0):
  """A name imported from a package ``__init__`` may be re-exported from a submodule."""
  mod = modules.get(modname)
  if mod is None or depth > 5:
    return None
  if symbol in mod.functions:
    return modname, symbol
  if symbol in mod.classes:
    return modname, f"{symbol}.__init__"
  alias = mod.aliases.get(symbol)
  if alias and alias[0] == "symbol":
    return _resolve_symbol(modules, alias[1], alias[2], depth + 1)
  return None


def _callee(modules, mod: Module, cls: str | None, func: ast.expr):
  """(module, function key) of a call's target inside the package, or None."""
  if isinstance(func, ast.Name):
    if func.id in mod.functions:
      return mod.name, func.id
    if func.id in mod.classes:
      return mod.name, f"{func.id}.__init__"
    alias = mod.aliases.get(func.id)
    if alias and alias[0] == "symbol":
      return _resolve_symbol(modules, alias[1], alias[2])
    return None
  if isinstance(func, ast.Attribute):
    value = func.value
    if isinstance(value, ast.Name) and value.id in ("self", "cls") and cls:
      key = f"{cls}.{func.attr}"
      return (mod.name, key) if key in mod.functions else None
    if isinstance(value, ast.Name) and value.id in mod.classes:
      key = f"{value.id}.{func.attr}"
      return (mod.name, key) if key in mod.functions else None
    if isinstance(value, ast.Name):
      alias = mod.aliases.get(value.id)
      if alias and alias[0] == "module":
        return _resolve_symbol(modules, alias[1], func.attr)
      if alias and alias[0] == "symbol":  # ClassName.method via an import.
        return _method(modules, _resolve_symbol(modules, alias[1], alias[2]), func.attr)
    if (isinstance(value, ast.Attribute) and isinstance(value.value, ast.Name)
        and mod.aliases.get(value.value.id, ("",))[0] == "module"):  # module.ClassName.method.
      target = _resolve_symbol(modules, mod.aliases[value.value.id][1], value.attr)
      return _method(modules, target, func.attr)
  return None


def _method(modules, target, attr: str):
  """(module, 'Class.attr') when ``target`` is a class's (module, 'Class.__init__') that has it."""
  if target and target[1].endswith(".__init__"):
    key = f"{target[1][:-len('.__init__')]}.{attr}"
    return (target[0], key) if key in modules[target[0]].functions else None
  return None


def _param_for(fn: ast.FunctionDef, position: int | None, keyword: str | None,
               bound: bool) -> str | None:
  args = [a.arg for a in fn.args.posonlyargs + fn.args.args]
  if bound and args and args[0] in ("self", "cls"):
    args = args[1:]
  if keyword is not None:
    names = args + [a.arg for a in fn.args.kwonlyargs]
    return keyword if keyword in names else None
  if position is not None and position < len(args):
    return args[position]
  return None


def _tracked(node: ast.expr, names: set[str], attrs: set[str]) -> bool:
  if isinstance(node, ast.Name):
    return node.id in names
  return (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
          and node.value.id == "self" and node.attr in attrs)


def walk(modules: dict[str, Module], start_module: str, start_function: str, param: str):
  """Every call edge (caller module, caller function) -> (callee module, callee function)."""
  edges = set()
  seen = set()
  todo = [(start_module, start_function, frozenset([param]), frozenset())]
  while todo:
    modname, key, names, attrs = todo.pop()
    if (modname, key, names, attrs) in seen:
      continue
    seen.add((modname, key, names, attrs))
    mod = modules[modname]
    fn = mod.functions[key]
    cls = key.split(".")[0] if "." in key else None
    names = set(names)
    stored = set()
    for node in ast.walk(fn):  # Aliases: cfg = config; self.config = config.
      if isinstance(node, ast.Assign) and _tracked(node.value, names, set(attrs)):
        for t in node.targets:
          if isinstance(t, ast.Name):
            names.add(t.id)
          elif (isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name)
                and t.value.id == "self"):
            stored.add(t.attr)
    if stored and cls:  # Every method of the class can read what __init__ stored.
      for method in mod.classes[cls]:
        todo.append((modname, f"{cls}.{method}", frozenset(), frozenset(set(attrs) | stored)))
    all_attrs = set(attrs) | stored
    for node in ast.walk(fn):
      if not isinstance(node, ast.Call):
        continue
      carried = [(i, None) for i, a in enumerate(node.args) if _tracked(a, names, all_attrs)]
      carried += [(None, k.arg) for k in node.keywords
                  if k.arg and _tracked(k.value, names, all_attrs)]
      if not carried:
        continue
      target = _callee(modules, mod, cls, node.func)
      if target is None:
        continue
      tmod, tkey = target
      tfn = modules[tmod].functions[tkey]
      bound = "." in tkey
      for position, keyword in carried:
        p = _param_for(tfn, position, keyword, bound)
        if p is None:
          continue
        edges.add((modname, key, tmod, tkey))
        todo.append((tmod, tkey, frozenset([p]), frozenset()))
  return edges


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  here = os.path.abspath(__file__)
  parser.add_argument("--repo", default=os.path.dirname(os.path.dirname(os.path.dirname(here))))
  parser.add_argument("--start", default="claus_jax/experiment.py:run:config",
                      help="FILE:FUNCTION:PARAM (FUNCTION may be Class.method)")
  parser.add_argument("--list", action="store_true", help="print every entry")
  args = parser.parse_args(argv)
  path, function, param = args.start.split(":")
  modules = load_package(args.repo)
  start = _module_name(os.path.join(args.repo, path), args.repo)
  if start not in modules or function not in modules[start].functions:
    sys.exit(f"--start={args.start}: no function {function} in {path} under {args.repo}")
  floor = floors(modules)
  edges = walk(modules, start, function, param)
  entries = sorted((a, f, b, g) for a, f, b, g in edges if a != b)
  climbs = [e for e in entries if reaches(modules, e[2], e[0])]
  entered = sorted({e[2] for e in entries})
  short = lambda m: m[len(PACKAGE) + 1:] if m != PACKAGE else m  # noqa: E731
  if args.list:
    for a, f, b, g in entries:
      mark = "  UP" if reaches(modules, b, a) else ""
      print(f"{short(a)}:{f} (floor {floor[a]}) -> {short(b)}:{g} (floor {floor[b]}){mark}")
  print(f"config from {args.start}: {len(entries)} entries into {len(entered)} modules, "
        f"{len(climbs)} climbing back up (into a module that imports the caller)")
  for m in entered:
    n = sum(e[2] == m for e in entries)
    print(f"  floor {floor[m]:2d}  {short(m):32s} {n} entr{'y' if n == 1 else 'ies'}")


if __name__ == "__main__":
  main()
