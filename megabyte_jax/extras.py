"""Optional dependencies: which extra of `pip install 'megabyte-jax[EXTRA]'` provides what.

    tfds = require("tensorflow_datasets", "tfds", "data.name=byte_files")

The core install (`pip install megabyte-jax`) trains, evaluates and samples on local files.
Features beyond it import their dependency through `require`, so a missing one ends in one
line naming the extra (`MissingExtra`), not a traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from megabyte_jax.errors import MissingExtra


def missing_extra_message(module: str, extra: str, purpose: str) -> str:
  """The one line a missing optional dependency gives."""
  return (f"{purpose} needs the [{extra}] extra ({module} is not installed): "
          f"pip install 'megabyte-jax[{extra}]'")


def require(module: str, extra: str, purpose: str) -> ModuleType:
  """Imports `module`: an optional dependency that the extra `extra` provides, or one of our
  modules that imports such dependencies (e.g. `megabyte_jax.data.builders`).

  Raises:
    MissingExtra: a third-party module it needs is not installed; one line naming
      `purpose` and `pip install 'megabyte-jax[EXTRA]'`.
  """
  try:
    return importlib.import_module(module)
  except ModuleNotFoundError as e:
    missing = e.name or module
    if missing.split(".")[0] == "megabyte_jax":   # our own module: a bug, not an extra
      raise
    raise MissingExtra(missing_extra_message(missing, extra, purpose)) from e
