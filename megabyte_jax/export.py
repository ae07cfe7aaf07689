"""Parameters-only export of a trained model: one file, no optimizer state.

    from megabyte_jax import export_params, load_exported
    export_params("runs/default", "default.msgpack")        # the latest checkpoint's params
    loaded = load_exported("default.msgpack")               # a LoadedModel
    logits = loaded.model.apply(loaded.variables, tokens)

The file is Flax msgpack (`flax.serialization`) holding the parameters (float32 as trained,
or cast with `dtype`) and the run's config as JSON, so it rebuilds the model by itself.
Local or remote paths (`etils.epath`).
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

from flax import serialization
import jax
import numpy as np

from megabyte_jax.errors import CheckpointError
from megabyte_jax.loaded import EXPORTED_ORDER, LoadedModel
from megabyte_jax.models import build_model
from megabyte_jax.training.workdir import (PathLike, as_path, config_from_json_values,
                                           load_trained)

FORMAT = "megabyte-jax-params/1"


def export_params(workdir: PathLike, output: PathLike, step: Optional[int] = None,
                  dtype: Optional[str] = None) -> str:
  """Writes the parameters of `workdir`'s checkpoint at `step` (default: the latest) and its
  config to `output`; returns the path. `dtype` (e.g. "bfloat16") casts floating-point
  parameters.

  Raises:
    ConfigError, CheckpointError: no trained run in `workdir`.
  """
  loaded = load_trained(workdir, step)
  config, step = loaded.config, loaded.step
  params = jax.device_get(loaded.params)
  if dtype is not None:
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    params = jax.tree_util.tree_map(
        lambda x: np.asarray(x).astype(jnp.dtype(dtype))
        if np.issubdtype(np.asarray(x).dtype, np.floating) else x, params)
  blob = serialization.msgpack_serialize({
      "format": FORMAT, "step": int(step),
      "config": json.dumps(config.to_dict(), sort_keys=True),
      "params": serialization.to_state_dict(params)})
  path = as_path(output)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(blob)
  return os.fspath(path)


def load_exported(path: PathLike) -> LoadedModel:
  """Reads a file written by `export_params`.

  Returns:
    A `LoadedModel` (`.model`, `.params`, `.config`, `.step`), as `load_trained` returns.
    Unpacking it as the tuple `(model, params, config)` still works, with a
    `DeprecationWarning`.

  Raises:
    CheckpointError: the file is missing or is not such an export.
  """
  try:
    values = serialization.msgpack_restore(as_path(path).read_bytes())
  except (OSError, ValueError) as e:
    raise CheckpointError(f"cannot read the exported parameters {os.fspath(path)}: {e}") from e
  if not isinstance(values, dict) or values.get("format") != FORMAT:
    raise CheckpointError(f"{os.fspath(path)} is not a megabyte-jax parameters export")
  config = config_from_json_values(json.loads(values["config"]))
  model, _ = build_model(config.model)
  return LoadedModel(model=model, params=values["params"], config=config,
                     step=int(values.get("step", 0)), legacy_order=EXPORTED_ORDER)
