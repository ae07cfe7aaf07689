"""megabyte-jax: MEGABYTE (Yu et al., 2023) in JAX/Flax.

    from megabyte_jax import Megabyte, MegabyteConfig
    model = Megabyte(MegabyteConfig(seq_len=64, patch_size=8, global_dim=64, global_layers=2,
                                    global_heads=4, local_dim=32, local_layers=2, local_heads=2))
    variables = model.init(jax.random.key(0), tokens)   # tokens: int32 [batch, T]
    logits = model.apply(variables, tokens)             # float32 [batch, T, 256]
    out = generate(model, variables, prompt, 100, jax.random.key(1))  # KV-cached sampling
"""

from megabyte_jax.config import MegabyteConfig, TransformerConfig
from megabyte_jax.errors import (CheckpointError, ConfigError, DataError, InputError,
                                 MegabyteError, Preempted, TrainingError)
from megabyte_jax.generation import generate
from megabyte_jax.megabyte import Megabyte
from megabyte_jax.transformer import ByteTransformer

__all__ = ["ByteTransformer", "CheckpointError", "ConfigError", "DataError", "InputError",
           "Megabyte", "MegabyteConfig", "MegabyteError", "Preempted", "TrainingError",
           "TransformerConfig", "generate"]
__version__ = "0.1.0"
