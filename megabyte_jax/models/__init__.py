"""Builds a model from the `config.model` section of an experiment config."""

from __future__ import annotations

from typing import Any, Mapping, Union

import flax.linen as nn

from megabyte_jax.config import ConfigError, MegabyteConfig, TransformerConfig
from megabyte_jax.models.megabyte import Megabyte
from megabyte_jax.models.transformer import ByteTransformer

ModelConfig = Union[MegabyteConfig, TransformerConfig]
MODEL_KINDS = {"megabyte": (MegabyteConfig, Megabyte),
               "transformer": (TransformerConfig, ByteTransformer)}


def build_model(section: Mapping[str, Any]) -> tuple[nn.Module, ModelConfig]:
  """Returns `(module, validated model config)` for a `config.model` mapping.

  The mapping holds `kind` ("megabyte" or "transformer") and the fields of the matching
  config class; unknown kinds or fields raise `ConfigError` naming them.
  """
  values = section.to_dict() if hasattr(section, "to_dict") else dict(section)
  kind = values.pop("kind", "megabyte")
  if kind not in MODEL_KINDS:
    raise ConfigError(f"model.kind must be one of {sorted(MODEL_KINDS)}, got {kind!r}")
  config_cls, module_cls = MODEL_KINDS[kind]
  cfg = config_cls.from_dict(values)
  return module_cls(cfg), cfg
