"""No import cycles among the first-party modules (`megabyte_jax/`, `experiments/`).

Every module is parsed with `ast` (nothing is imported) and every import it holds counts,
module-level or inside a function: a function-level import hides a cycle from the import
system until the function runs, not from the design. An edge goes from a module to each
first-party module its imports run:

  * `import a.b.c` and `from a.b.c import name` -> `a.b.c`; `from a.b import c` -> `a.b.c`
    when `a/b/c.py` (or `a/b/c/`) exists, else `a.b`; relative imports are resolved;
  * importing `a.b.c` also runs the packages `a` and `a.b` (their `__init__`): edges to them
    too, except to the importing module's own enclosing packages, which are already being
    imported when it runs. So a package's `__init__` importing its own submodules is not a
    cycle, but `x -> a.b.c` with `a.b/__init__ -> ... -> x` is.

Imports under `if TYPE_CHECKING:` do not run and are left out.
"""

from __future__ import annotations

import ast
import os
from typing import Iterable, Optional

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIRST_PARTY = ("megabyte_jax", "experiments")


def module_files(root: str, packages: Iterable[str]) -> dict[str, str]:
  """`{module name: file}` of every `.py` file under `root/<package>` for each package (a
  package's `__init__.py` under the package's own name)."""
  out = {}
  for package in packages:
    for directory, subdirs, files in os.walk(os.path.join(root, package)):
      subdirs[:] = sorted(d for d in subdirs if d != "__pycache__" and not d.startswith("."))
      for name in sorted(files):
        if not name.endswith(".py"):
          continue
        path = os.path.join(directory, name)
        parts = os.path.splitext(os.path.relpath(path, root))[0].split(os.sep)
        if parts[-1] == "__init__":
          parts = parts[:-1]
        out[".".join(parts)] = path
  return out


class _Imports(ast.NodeVisitor):
  """Collects `(module, names, level)` of every import statement that can run."""

  def __init__(self):
    self.found: list[tuple[Optional[str], list[str], int]] = []

  def visit_If(self, node: ast.If):  # pylint: disable=invalid-name
    test = node.test
    name = test.id if isinstance(test, ast.Name) else (
        test.attr if isinstance(test, ast.Attribute) else None)
    if name == "TYPE_CHECKING":
      for child in node.orelse:
        self.visit(child)
      return
    self.generic_visit(node)

  def visit_Import(self, node: ast.Import):  # pylint: disable=invalid-name
    for alias in node.names:
      self.found.append((alias.name, [], 0))

  def visit_ImportFrom(self, node: ast.ImportFrom):  # pylint: disable=invalid-name
    self.found.append((node.module, [alias.name for alias in node.names], node.level))


def _known_prefix(name: str, modules: dict[str, str]) -> Optional[str]:
  """The longest prefix of the dotted `name` that is one of `modules` (None: third party)."""
  parts = name.split(".")
  for end in range(len(parts), 0, -1):
    candidate = ".".join(parts[:end])
    if candidate in modules:
      return candidate
  return None


def module_imports(name: str, modules: dict[str, str]) -> set[str]:
  """The first-party modules that importing module `name` runs (see the module docstring),
  without `name` itself."""
  path = modules[name]
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read(), filename=path)
  visitor = _Imports()
  visitor.visit(tree)
  is_package = os.path.basename(path) == "__init__.py"
  targets = set()
  for module, names, level in visitor.found:
    if level:
      base = name if is_package else name.rpartition(".")[0]
      for _ in range(level - 1):
        base = base.rpartition(".")[0]
      base = f"{base}.{module}" if module else base
    else:
      base = module
    if not names:                                   # import a.b.c
      targets.add(base)
    for alias in names:                             # from base import alias
      targets.add(f"{base}.{alias}" if f"{base}.{alias}" in modules else base)
  own_packages = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
  edges = set()
  for target in targets:
    target = _known_prefix(target, modules)
    if target is None:
      continue
    parts = target.split(".")
    for end in range(1, len(parts) + 1):            # the packages that importing it runs
      implied = ".".join(parts[:end])
      if implied in modules and (implied == target or implied not in own_packages):
        edges.add(implied)
  edges.discard(name)
  return edges


def import_graph(root: str, packages: Iterable[str]) -> dict[str, set[str]]:
  """`{module: the first-party modules it imports}` for every module of `packages` under
  `root`."""
  modules = module_files(root, packages)
  return {name: module_imports(name, modules) for name in modules}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
  """The groups of two or more modules of `graph` that all reach each other (each sorted;
  Tarjan's algorithm)."""
  index: dict[str, int] = {}
  low: dict[str, int] = {}
  stack: list[str] = []
  on_stack: set[str] = set()
  groups: list[list[str]] = []

  def connect(node: str) -> None:
    index[node] = low[node] = len(index)
    stack.append(node)
    on_stack.add(node)
    for succ in sorted(graph.get(node, ())):
      if succ not in index:
        connect(succ)
        low[node] = min(low[node], low[succ])
      elif succ in on_stack:
        low[node] = min(low[node], index[succ])
    if low[node] == index[node]:
      group = []
      while True:
        member = stack.pop()
        on_stack.discard(member)
        group.append(member)
        if member == node:
          break
      if len(group) > 1:
        groups.append(sorted(group))

  for node in sorted(graph):
    if node not in index:
      connect(node)
  return sorted(groups)


def shortest_cycle(graph: dict[str, set[str]], group: list[str]) -> list[str]:
  """A shortest cycle `[a, b, ..., a]` through the first module of `group` (one of
  `strongly_connected(graph)`), within the group."""
  members, start = set(group), group[0]
  paths = {start: [start]}
  frontier = [start]
  while frontier:                                  # breadth first, back to `start`
    following = []
    for node in frontier:
      for succ in sorted(graph[node] & members):
        if succ == start:
          return paths[node] + [start]
        if succ not in paths:
          paths[succ] = paths[node] + [succ]
          following.append(succ)
    frontier = following
  raise ValueError(f"{group} is not strongly connected")


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """One shortest cycle (`[a, b, ..., a]`, from its group's smallest module) per group of
  `strongly_connected(graph)`."""
  return [shortest_cycle(graph, group) for group in strongly_connected(graph)]


def test_first_party_modules_import_no_cycle():
  graph = import_graph(REPO, FIRST_PARTY)
  assert "megabyte_jax.train" in graph and "experiments.plot_results" in graph
  groups = strongly_connected(graph)
  assert not groups, "import cycles:\n" + "\n".join(
      f"{' -> '.join(shortest_cycle(graph, group))} (modules in the loop: {', '.join(group)})"
      for group in groups)


def test_study_records_is_a_leaf_that_plots_and_images_use():
  graph = import_graph(REPO, FIRST_PARTY)
  assert not {m for m in graph["experiments.study.records"] if m.startswith("experiments")}
  for name in ("experiments.plot_results", "experiments.images"):
    study = {m for m in graph[name] if m.startswith("experiments.study")}
    assert study == {"experiments.study", "experiments.study.records"}, name
  assert "experiments.study.runner" not in graph["experiments.study"]


def _write(root, files: dict[str, str]) -> None:
  for relative, text in files.items():
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize("files, cycle", [
    # A function-level import closes the cycle; `from pkg import b` is an edge to pkg.b.
    ({"pkg/__init__.py": "from pkg import a\n",
      "pkg/a.py": "from pkg import b\n",
      "pkg/b.py": "def f():\n  from .a import g\n  return g\n"},
     ["pkg.a", "pkg.b", "pkg.a"]),
    # Importing pkg.records runs pkg/__init__, which imports the runner, which imports plot.
    ({"pkg/__init__.py": "from pkg.records import x\nfrom pkg import runner\n",
      "pkg/records.py": "x = 1\n",
      "pkg/runner.py": "import other.plot\n",
      "other/__init__.py": "",
      "other/plot.py": "from pkg.records import x\n"},
     ["other.plot", "pkg", "pkg.runner", "other.plot"]),
])
def test_find_cycles_names_a_planted_cycle(tmp_path, files, cycle):
  _write(tmp_path, files)
  graph = import_graph(str(tmp_path), ("pkg", "other"))
  assert find_cycles(graph) == [cycle]
  assert strongly_connected(graph) == [sorted(set(cycle))]


def test_a_package_importing_its_submodules_is_no_cycle(tmp_path):
  _write(tmp_path, {
      "pkg/__init__.py": "from pkg.a import f\nfrom . import b\nimport json\n",
      "pkg/a.py": "from pkg import b\nfrom pkg.b import g\nfrom typing import TYPE_CHECKING\n"
                  "if TYPE_CHECKING:\n  from pkg.sub import d\n"
                  "def f():\n  from pkg.sub import c\n",
      "pkg/b.py": "import numpy\ndef g():\n  pass\n",
      "pkg/sub/__init__.py": "",
      "pkg/sub/c.py": "from .. import b\nfrom ..b import g\n",
      "pkg/sub/d.py": "from pkg.a import f\n"})
  graph = import_graph(str(tmp_path), ("pkg",))
  assert graph == {"pkg": {"pkg.a", "pkg.b"}, "pkg.a": {"pkg.b", "pkg.sub", "pkg.sub.c"},
                   "pkg.b": set(), "pkg.sub": set(), "pkg.sub.c": {"pkg.b"},
                   "pkg.sub.d": {"pkg.a"}}
  assert find_cycles(graph) == []
