"""No module-level mutable state that changes what gets traced (issue 21): no `global`
statements in the package, and no code in the package, the experiments or the tests that
sets an attribute of another module (the old `fused_decode.MODE = ...` switches). How
decoding runs is a `DecodeOptions` argument instead."""

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python_files(*folders):
  for folder in folders:
    for root, _, files in os.walk(os.path.join(REPO, folder)):
      for name in files:
        if name.endswith(".py"):
          yield os.path.join(root, name)


def module_state_writes(source: str) -> list[str]:
  """`global` statements, and assignments to an attribute of an imported module, in
  `source`, as "line: text" strings."""
  tree = ast.parse(source)
  modules = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      modules.update((a.asname or a.name).split(".")[0] for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(
        ("megabyte_jax", "experiments")):
      modules.update(a.asname or a.name for a in node.names)
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Global):
      found.append(f"{node.lineno}: global {', '.join(node.names)}")
    targets = node.targets if isinstance(node, ast.Assign) else (
        [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else [])
    for target in targets:
      if (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name)
          and target.value.id in modules):
        found.append(f"{node.lineno}: {ast.unparse(target)} = ...")
  return found


def test_nothing_writes_module_level_state():
  offenders = []
  for path in _python_files("megabyte_jax", "experiments", "tests"):
    with open(path, encoding="utf-8") as f:
      writes = module_state_writes(f.read())
    offenders += [f"{os.path.relpath(path, REPO)}:{w}" for w in writes]
  assert not offenders, "module-level state written:\n" + "\n".join(offenders)


@pytest.mark.parametrize("source", [
    "from megabyte_jax.layers import fused_decode\nfused_decode.MODE = 'off'\n",
    "import megabyte_jax.inference.generation as g\ng.UNROLL = 2\n",
    "UNROLL = None\ndef f():\n  global UNROLL\n  UNROLL = 1\n",
])
def test_the_check_finds_module_switches(source):
  assert module_state_writes(source)
