"""megabyte-jax: MEGABYTE (Yu et al., 2023) in JAX/Flax.

    from megabyte_jax import Megabyte, MegabyteConfig
    model = Megabyte(MegabyteConfig(seq_len=64, patch_size=8, global_dim=64, global_layers=2,
                                    global_heads=4, local_dim=32, local_layers=2, local_heads=2))
    variables = model.init(jax.random.key(0), tokens)   # tokens: int32 [batch, T]
    logits = model.apply(variables, tokens)             # float32 [batch, T, 256]
    prompt = jnp.asarray([list(b"def ")], jnp.int32)   # int32 [batch, L]: bytes, not str
    out = generate(model, variables, prompt, 32, jax.random.key(1))  # KV-cached sampling

    loaded = load_trained("runs/default")   # a trained work directory: a LoadedModel
    loaded.model, loaded.params, loaded.config, loaded.step
    export_params("runs/default", "default.msgpack")   # parameters only, one file
    loaded = load_exported("default.msgpack")          # the same LoadedModel
"""

from megabyte_jax.config import MegabyteConfig, TransformerConfig
from megabyte_jax.errors import (CheckpointError, ConfigError, DataError, InputError,
                                 MegabyteError, MissingExtra, Preempted, TrainingError)
from megabyte_jax.inference.decoding import DecodeOptions
from megabyte_jax.inference.generation import generate
from megabyte_jax.loaded import LoadedModel
from megabyte_jax.models.megabyte import Megabyte
from megabyte_jax.models.transformer import ByteTransformer

__all__ = ["ByteTransformer", "CheckpointError", "ConfigError", "DataError", "DecodeOptions",
           "InputError", "LoadedModel", "Megabyte", "MegabyteConfig", "MegabyteError",
           "MissingExtra", "Preempted", "TrainingError", "TransformerConfig", "export_params",
           "generate", "load_exported", "load_trained"]
__version__ = "0.1.0"

# Imported on first use: they pull in Orbax and Grain, which `import megabyte_jax` need not.
_LAZY = {"load_trained": "megabyte_jax.training.workdir", "export_params": "megabyte_jax.export",
         "load_exported": "megabyte_jax.export"}


def __getattr__(name):
  """`load_trained`, `export_params` and `load_exported`, imported when first used."""
  if name in _LAZY:
    import importlib  # pylint: disable=g-import-not-at-top
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module 'megabyte_jax' has no attribute {name!r}")
