"""Runs several of the package's commands in one Python process, as their console scripts
would (`megabyte-train --help` runs `megabyte_jax.train.run()` with `__main__` elsewhere),
and prints one JSON object per command: its exit code, stdout and stderr.

    python tests/helpers/commands.py '[["megabyte_jax.train", ["--help"]], ...]'

Between commands the flags they defined are removed, so each starts as in a fresh process;
one process saves the JAX import (seconds) of each further command. An optional
`--block=mod1,mod2` first makes those modules unimportable (a core install without extras).
"""

import contextlib
import importlib
import io
import json
import sys


class _Block:
  """A meta path finder that makes the named top-level modules unimportable."""

  def __init__(self, names):
    self.names = set(names)

  def find_spec(self, name, path=None, target=None):
    del path, target
    if name.split(".")[0] in self.names:
      raise ModuleNotFoundError(f"No module named {name!r}", name=name)


def _reset_flags() -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  for name in list(flags.FLAGS):
    module = flags.FLAGS.find_module_defining_flag(name) or ""
    if module.startswith("megabyte_jax") or name.startswith("config"):
      with contextlib.suppress(AttributeError):
        delattr(flags.FLAGS, name)
  flags.FLAGS.unparse_flags()


def run_command(module: str, args: list) -> dict:
  """Runs `module.run([prog, *args])`; returns its exit code, stdout and stderr."""
  out, err, code = io.StringIO(), io.StringIO(), 0
  prog = "megabyte-" + module.rsplit(".", 1)[-1]
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
      importlib.import_module(module).run([prog, *args])
    except SystemExit as e:
      code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
      if isinstance(e.code, str):
        err.write(e.code + "\n")
  _reset_flags()
  return {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}


def main(argv: list) -> None:
  args = argv[1:]
  if args and args[0].startswith("--block="):
    sys.meta_path.insert(0, _Block(args.pop(0).split("=", 1)[1].split(",")))
  for module, command_args in json.loads(args[0]):
    print(json.dumps(run_command(module, command_args)), flush=True)


if __name__ == "__main__":
  main(sys.argv)
