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

import difflib
import os
from typing import Optional, Sequence

PACKAGED = ("default", "tiny", "transformer")
PREFIX = "megabyte_jax:"
# Configs of the repository that are not installed with the package (GPU shapes, the paper's
# experiments, the peer comparison): `--config=experiments/configs/NAME.py` in a checkout.
CHECKOUT_DIR = os.path.join("experiments", "configs")
CHECKOUT_ONLY = ("reference", "long_64k", "long_1m", "peer_match", "paper_recipe")


def config_file(name: str) -> str:
  """The path of the packaged config `name` (one of `PACKAGED`).

  Raises:
    ConfigError: naming the configs that exist and the nearest match (`unknown_config`).
  """
  if name not in PACKAGED:
    raise unknown_config(PREFIX + name)
  return os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")


def is_path(name: str) -> bool:
  """Whether a `--config` argument names a file rather than a packaged config: it holds a
  `/` (or the platform's separator) or ends in `.py`."""
  return "/" in name or os.sep in name or name.endswith(".py")


def unknown_config(value: str):
  """The `ConfigError` for a `--config` that names neither a packaged config nor an
  existing file: it names the packaged configs and the nearest match among them and the
  config files beside the path given (or in `experiments/configs/` of a checkout in the
  current directory), and says which configs need a checkout."""
  from megabyte_jax.errors import ConfigError  # pylint: disable=g-import-not-at-top
  name = os.path.splitext(os.path.basename(value))[0]
  if value.startswith(PREFIX):
    name = value[len(PREFIX):]
    what = f"no packaged config {name!r}"
  else:
    what = f"no config file or packaged config {value!r}"
  candidates = {n: n for n in PACKAGED}
  folder = os.path.dirname(value) if os.path.dirname(value) else CHECKOUT_DIR
  if os.path.isdir(folder):
    for file in sorted(os.listdir(folder)):
      if file.endswith((".py", ".json")) and not file.startswith("_"):
        candidates.setdefault(os.path.splitext(file)[0], os.path.join(folder, file))
  near = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
  if near:
    what += f" (did you mean --config={candidates[near[0]]}?)"
  message = (f"{what}; packaged configs: {', '.join(PACKAGED)} (also spelled "
             f"{PREFIX}NAME), or give a config file's path")
  if name in CHECKOUT_ONLY and near != [name]:
    message += (f"; {name!r} is not installed with the package: it is "
                f"{os.path.join(CHECKOUT_DIR, name)}.py in a checkout of the repository")
  return ConfigError(message)


def resolve(value: str) -> str:
  """What `--config=value` loads: a packaged config's file for `NAME` or `megabyte_jax:NAME`
  (optionally followed by `:ARG`, which ml_collections passes to `get_config`), else `value`
  unchanged (a file path).

  A packaged name wins over a file or folder of that name in the working directory (a
  `--workdir=tiny` does not hide `--config=tiny`, and a stray file named `default` is never
  run): to load such a file, give it as a path (`./default`, `default.py`; `is_path`).

  Raises:
    ConfigError: for `megabyte_jax:NAME` with an unknown NAME, or a path that does not
      exist: naming the packaged configs and the nearest match (`unknown_config`).
  """
  if value.startswith(PREFIX):
    name, _, arg = value[len(PREFIX):].partition(":")
    return config_file(name) + (f":{arg}" if arg else "")
  name, _, arg = value.partition(":")
  if name in PACKAGED and not is_path(name):
    return config_file(name) + (f":{arg}" if arg else "")
  check_config_path(value if "://" in value else name)
  return value


def check_config_path(path: str) -> None:
  """Refuses a local `--config` path that does not exist (`unknown_config`: the packaged
  configs and the nearest match); a remote path (`gs://...`) is left to the loader.

  Raises:
    ConfigError: naming the path and what exists.
  """
  if "://" not in path and not os.path.exists(os.path.expanduser(path)):
    raise unknown_config(path)


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
