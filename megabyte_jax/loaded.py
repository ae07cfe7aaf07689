"""`LoadedModel`: what `load_trained` (a work directory) and `load_exported` (a parameters
file) both return.

    loaded = megabyte_jax.load_trained("runs/default")
    logits = loaded.model.apply(loaded.variables, tokens)
    loaded.config.model.seq_len, loaded.step
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Iterator

import flax.linen as nn
import ml_collections

# The tuples the two functions returned before they returned a `LoadedModel`.
TRAINED_ORDER = ("config", "model", "params", "step")
EXPORTED_ORDER = ("model", "params", "config")


@dataclasses.dataclass(frozen=True)
class LoadedModel:
  """A trained model with its parameters and the config it was built from.

  Attributes:
    model: the flax module (`Megabyte` or `ByteTransformer`).
    params: its parameters (the `"params"` collection).
    config: the run's experiment config (`config.model`, `config.data`, ...).
    step: the training step of the parameters.
    variables: `{"params": params}`, what `model.apply` and `generate` take.

  Unpacking it as a tuple, in the order its function returned before
  (`config, model, params, step = load_trained(...)`,
  `model, params, config = load_exported(...)`), still works but is deprecated: it warns
  with a `DeprecationWarning`; use the attributes.
  """

  model: nn.Module
  params: Any = dataclasses.field(repr=False)
  config: ml_collections.ConfigDict = dataclasses.field(repr=False)
  step: int = 0
  legacy_order: tuple[str, ...] = dataclasses.field(default=TRAINED_ORDER, repr=False,
                                                     compare=False)

  @property
  def variables(self) -> dict[str, Any]:
    """`{"params": params}`."""
    return {"params": self.params}

  def _legacy(self) -> tuple[Any, ...]:
    warnings.warn(
        f"unpacking a LoadedModel as the tuple ({', '.join(self.legacy_order)}) is "
        f"deprecated; use its attributes (.model, .params, .config, .step)",
        DeprecationWarning, stacklevel=3)
    return tuple(getattr(self, name) for name in self.legacy_order)

  def __iter__(self) -> Iterator[Any]:
    """The old tuple's items (deprecated)."""
    return iter(self._legacy())

  def __getitem__(self, index: int) -> Any:
    """An item of the old tuple (deprecated)."""
    return self._legacy()[index]

  def __len__(self) -> int:
    return len(self.legacy_order)
