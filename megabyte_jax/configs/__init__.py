"""Experiment configs shipped inside the package, so they work after `pip install`.

    megabyte-train --config=tiny --workdir=runs/t            # a packaged config by name
    megabyte-train --config=megabyte_jax:default --workdir=runs/d
    megabyte-train --config=path/to/my_config.py --workdir=runs/m   # any config file
    megabyte-train --config=./tiny --workdir=runs/m   # a file named like a packaged config
    megabyte-train --config=runs/d/config.json --workdir=runs/e     # a run's saved config

`tiny.py`, `default.py` and `transformer.py` here are the one source of those configs;
`experiments/configs/NAME.py` re-exports them for checkouts.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

PACKAGED = ("default", "tiny", "transformer")
PREFIX = "megabyte_jax:"


def config_file(name: str) -> str:
  """The path of the packaged config `name` (one of `PACKAGED`).

  Raises:
    ConfigError: naming the configs that exist.
  """
  from megabyte_jax.errors import ConfigError  # pylint: disable=g-import-not-at-top
  if name not in PACKAGED:
    raise ConfigError(f"no packaged config {name!r}; choose one of {', '.join(PACKAGED)}, or "
                      f"give a config file's path")
  return os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")


def is_path(name: str) -> bool:
  """Whether a `--config` argument names a file rather than a packaged config: it holds a
  `/` (or the platform's separator) or ends in `.py`."""
  return "/" in name or os.sep in name or name.endswith(".py")


def resolve(value: str) -> str:
  """What `--config=value` loads: a packaged config's file for `NAME` or `megabyte_jax:NAME`
  (optionally followed by `:ARG`, which ml_collections passes to `get_config`), else `value`
  unchanged (a file path).

  A packaged name wins over a file or folder of that name in the working directory (a
  `--workdir=tiny` does not hide `--config=tiny`, and a stray file named `default` is never
  run): to load such a file, give it as a path (`./default`, `default.py`; `is_path`).

  Raises:
    ConfigError: for `megabyte_jax:NAME` with an unknown NAME.
  """
  if value.startswith(PREFIX):
    name, _, arg = value[len(PREFIX):].partition(":")
    return config_file(name) + (f":{arg}" if arg else "")
  name, _, arg = value.partition(":")
  if name in PACKAGED and not is_path(name):
    return config_file(name) + (f":{arg}" if arg else "")
  return value


def flag_value(argv: Sequence[str], name: str) -> tuple[Optional[int], Optional[str]]:
  """`(index, value)` of the flag `--name=VALUE` or `--name VALUE` in `argv` (the last one
  given wins, as in absl), or `(None, None)`."""
  found: tuple[Optional[int], Optional[str]] = (None, None)
  for i, arg in enumerate(argv):
    if arg == "--":
      break
    for dashes in ("--", "-"):
      if arg.startswith(f"{dashes}{name}="):
        found = (i, arg.split("=", 1)[1])
      elif arg == f"{dashes}{name}" and i + 1 < len(argv):
        found = (i, argv[i + 1])
  return found


def resolve_argv(argv: Sequence[str]) -> list[str]:
  """`argv` with its `--config=` value resolved (`resolve`), as `--config=VALUE`."""
  argv = list(argv)
  index, value = flag_value(argv, "config")
  if index is None or value is None:
    return argv
  resolved = resolve(value)
  if argv[index].startswith("-") and "=" in argv[index]:
    argv[index] = argv[index].split("=", 1)[0] + "=" + resolved
  else:
    argv[index + 1] = resolved
  return argv
