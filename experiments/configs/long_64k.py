"""MEGABYTE on 65,536-byte sequences: the peer benchmark's long shape, on one GPU.

The shape of the long-context run in BENCHMARKS.md (MEGABYTE-pytorch, eager:
seq_len 65,536, patch 16, global 1024 x 12 layers, local 512 x 4 layers, 8 heads of 64,
batch 4, bf16; RMSNorm and no biases, as the peer's attention blocks), so our throughput and
memory sit beside the peer's in BENCHMARKS.md (figures before session 5 used LayerNorm with
biases: `--config.model.norm=layernorm --config.model.use_bias=True`).

Why P = 16: the global model then runs over K = 4,096 patches, the local model over
patches of 16 bytes; attention costs O(K^2 + K P^2) = O(T^2 / 256 + 16 T), and P ~ T^(1/3)
= 40 would balance it further, but 16 keeps the peer's shape. cuDNN flash attention makes
the 4,096-patch global attention cheap in memory; activations fit an 80 GB GPU without
rematerialization.
"""

from megabyte_jax.experiment import base_config


def get_config():
  """Returns the experiment ConfigDict."""
  config = base_config(
      "megabyte", seq_len=65536, patch_size=16,
      global_dim=1024, global_layers=12, global_heads=8, global_head_dim=64,
      local_dim=512, local_layers=4, local_heads=8, local_head_dim=64,
      dtype="bfloat16", param_dtype="float32", norm="rmsnorm", use_bias=False)
  config.train.batch_size = 4
  config.train.steps = 20000
  config.train.learning_rate = 3e-4
  config.train.warmup_steps = 500
  config.train.eval_every = 1000
  config.train.checkpoint_every = 1000
  config.eval.batch_size = 4
  return config
